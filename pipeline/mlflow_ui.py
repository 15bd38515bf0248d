"""Where the MLflow 3.17 UI lands for the pipeline's experiments, and a link straight to the runs
table with the score columns showing.

What a user sees without this: `mlflow ui`, click the experiment, and MLflow 3 opens a GenAI page
(Overview or Traces: empty, the pipeline logs runs, not traces); the Runs tab shows the parent run
collapsed and no metric column, since a metric column is hidden until someone ticks it.

How 3.17's web app decides (its bundle, `mlflow/server/js/build/static/js/*.js`):

- The landing tab follows the *workflow type*, `genai` or `machine_learning`: the `workflowType`
  query parameter of the page's URL, else the choice last made in the sidebar's switch (browser
  local storage), else `genai`. A bare `#/experiments/<id>` redirects to the Runs tab for
  `machine_learning`, to Traces (or Overview) for `genai`.
- The experiment tag `mlflow.experimentKind` (`custom_model_development` for model training) is
  what older 3.x releases read for that choice; 3.17 has workflow-based navigation switched on and
  no longer reads it for the landing tab. `mark_experiment` sets it all the same: it is the
  documented kind of the experiment, stops the "choose an experiment type" prompt where the tag
  is still read, and costs nothing.
- No URL parameter selects columns. A *saved view* does: an experiment tag
  `mlflow.sharedViewState.<key>` holding the table's state, opened by `?viewStateShareKey=<key>`
  (the UI's own "Views > Save as new view" writes the same tag). `save_runs_view` writes one.
- Child runs are nested under (and hidden by) a collapsed parent row whenever the table is sorted
  by start time, the default. Sorted by anything else they are listed flat, so the views and
  links here sort by run name: classification/..., the parent, translation/....

This module imports nothing from MLflow: `client` is any `mlflow.MlflowClient`.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any
from urllib.parse import quote, urlencode

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the UI's "Machine learning" kind
DESCRIPTION_TAG = "mlflow.note.content"  # the experiment's description, shown in its header
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
WORKFLOW_TYPE = "machine_learning"  # the runs-first navigation; the other value is "genai"
RUN_NAME_SORT_KEY = "tags.`mlflow.runName`"  # the UI's sort key for its "Run Name" column
RUN_NAME_COLUMN = "attributes.`Run Name`"  # the table's id of that column
VIEW_NAME = "heat scores"
SCORE_METRICS = ("test/bleu", "test/chrf", "test/accuracy", "test/f1", "tokens_per_s",
                 "peak_mem_mb", "train_wall_s")


def mark_experiment(client: Any, experiment_id: str, description: str) -> None:
    """Tag the experiment as a model-training (not GenAI) experiment and set its description."""
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    client.set_experiment_tag(experiment_id, DESCRIPTION_TAG, description)


def metric_column(metric: str) -> str:
    """The runs table's id of a metric's column (`metrics.` plus the name in backquotes)."""
    return f"metrics.`{metric}`"


def view_state(metrics: list[str] | tuple[str, ...], filter: str | None = None) -> dict:
    """The table state a saved view restores: exactly these metric columns showing, runs listed
    flat by name (so child runs show), optionally only the runs matching `filter`."""
    columns = [metric_column(metric) for metric in metrics]
    return {"searchFilter": filter or "", "orderByKey": RUN_NAME_SORT_KEY, "orderByAsc": True,
            "selectedColumns": columns, "columnOrder": [RUN_NAME_COLUMN, *columns],
            "runsHiddenMode": "SHOW_ALL"}


def view_key(metrics: list[str] | tuple[str, ...], filter: str | None = None) -> str:
    """The saved view's key: a digest of its state, so that `runs_table_url` names the view
    `save_runs_view` wrote for the same columns and filter without being told."""
    state = json.dumps(view_state(metrics, filter), sort_keys=True)
    return "heat-" + hashlib.sha256(state.encode()).hexdigest()[:16]


def save_runs_view(client: Any, experiment_id: str,
                   metrics: list[str] | tuple[str, ...] = SCORE_METRICS,
                   filter: str | None = None, name: str = VIEW_NAME) -> str:
    """Save (or overwrite) the experiment's view showing `metrics` as columns; returns its key.

    The tag value is the 3.17 saved-view envelope: name, creation time in ms and the state as a
    JSON string (about 600 characters for the default columns; the UI refuses views over 20,000
    and an experiment holds at most 40). It is listed under `name` in the header's "Views" menu,
    and opening it shows a "You're viewing a shared view" banner above the table."""
    key = view_key(metrics, filter)
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now,
                "state": json.dumps(view_state(metrics, filter))}
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, json.dumps(envelope))
    return key


def runs_table_url(server_url: str, experiment_id: str, metrics: list[str] | None = None,
                   filter: str | None = None) -> str:
    """The address of the experiment's runs table, in the UI's model-training navigation.

    What the user sees: the Runs tab in table (not chart) view, the sidebar's switch on "Model
    training" (not "GenAI"), the parent and child runs listed flat by name.

    - `server_url`: where `mlflow ui` / `mlflow server` listens, e.g. `http://127.0.0.1:5000`.
    - `experiment_id`: the experiment to open.
    - `metrics`: metric names to show as columns. The UI takes columns from a saved view only, so
      this links the view `save_runs_view(client, experiment_id, metrics, filter)` writes; call
      that first: a link to a view never saved shows "share key ... does not exist" and drops
      to the bare experiment page, which opens the GenAI Overview for a first-time visitor.
      None: no view, the default columns (none of the metrics).
    - `filter`: an MLflow search filter, e.g. `tags.\\`heat.task\\` = 'translation'`; only the
      matching runs are listed. With `metrics` it is part of the view; without, it is the URL's
      own `searchFilter` parameter.
    """
    query: dict[str, str] = {"workflowType": WORKFLOW_TYPE, "compareRunsMode": "TABLE"}
    if metrics:
        # the app skips a view when the URL carries any search parameter of its own
        query["viewStateShareKey"] = view_key(metrics, filter)
    else:
        query.update({"orderByKey": RUN_NAME_SORT_KEY, "orderByAsc": "true"})
        if filter:
            query["searchFilter"] = filter
    return (f"{server_url.rstrip('/')}/#/experiments/{experiment_id}/runs?"
            f"{urlencode(query, quote_via=quote)}")

