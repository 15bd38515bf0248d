"""The MLflow UI, in a real headless Chromium against a real `mlflow server`: the link
`pipeline.mlflow_ui.runs_table_url` gives opens the runs table of a model-training experiment,
every parent and child run listed, with the score columns showing.

The quick test builds a store like the smoke run's by hand (what it checks is the UI's rendering
of the tags and views `pipeline.mlflow_ui` writes, not the pipeline); the slow one opens the
store of the real smoke run (`smoke` fixture, tests/smoke_run.py). Both skip without Chromium
(.ci/run installs Debian's `chromium` where it can) and leave a screenshot in pytest's tmp dir.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import mlflow
import pytest
from browser import find_chromium, render, start_mlflow_server
from smoke_run import SMOKE_TIMEOUT_S

from pipeline.mlflow_ui import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    SCORE_METRICS,
    VIEW_TAG_PREFIX,
    mark_experiment,
    runs_table_url,
    save_runs_view,
    view_key,
)

VARIANTS = ("softmax", "linformer", "nystrom", "hadamard", "heat", "taylor")
TASK_SCORES = {"translation": ("test/bleu", "test/chrf"),
               "classification": ("test/accuracy", "test/f1")}

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="no Chromium on PATH (`apt-get install -y chromium`; .ci/run installs it as root): "
           "the MLflow UI browser check needs a real browser")


def column_headers(dom: str) -> set[str]:
    """The names of the sortable column headers the runs table rendered (metrics among them)."""
    return {html.unescape(name) for name in re.findall(r'data-testid="sort-header-([^"]+)"', dom)}


def run_names(dom: str) -> set[str]:
    """The run names the table lists (each a link to its run page)."""
    pattern = r'href="#/experiments/[^"/]+/runs/[0-9a-f]+"><span[^>]*>([^<]+)</span></a>'
    return {html.unescape(name) for name in re.findall(pattern, dom)}


def shows(dom: str, columns: set[str], runs: set[str]) -> bool:
    return columns <= column_headers(dom) and runs <= run_names(dom)


def build_store(uri: str, artifacts: Path) -> tuple[str, str]:
    """An experiment "smoke" shaped like a smoke run's: a parent run and a child run per (task,
    variant) with its tags and final metrics, marked and given the scores view; returns the
    experiment id and the parent run's name."""
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("smoke", artifact_location=artifacts.as_uri())
    mark_experiment(client, experiment_id, "HEAT smoke run, built by hand for the UI test")
    parent = client.create_run(experiment_id, run_name="smoke-ui",
                               tags={"heat.run_name": "smoke-ui"})
    for task, scores in TASK_SCORES.items():
        for i, variant in enumerate(VARIANTS):
            child = client.create_run(experiment_id, run_name=f"{task}/{variant}", tags={
                "heat.task": task, "heat.variant": variant, "heat.run_name": "smoke-ui",
                "mlflow.parentRunId": parent.info.run_id})
            values = dict(zip(scores, (60.0 + i, 80.0 + i) if task == "translation"
                              else (0.85 + i / 100, 0.84 + i / 100)))
            values.update(tokens_per_s=1000.0 + i, peak_mem_mb=300.0 + i, train_wall_s=30.0 + i)
            for key, value in values.items():
                client.log_metric(child.info.run_id, key, value)
            client.set_terminated(child.info.run_id)
    client.set_terminated(parent.info.run_id)
    save_runs_view(client, experiment_id)
    return experiment_id, "smoke-ui"


def open_runs_table(url: str, columns: set[str], runs: set[str], shot: Path) -> set[str]:
    """Render `url` until the table shows `columns` and `runs` (assert that it does), screenshot
    it to `shot` (its DOM beside it) and print where; returns the names of all the runs listed."""
    start = time.monotonic()
    dom, budget = render(url, lambda dom: shows(dom, columns, runs), shot)
    shot.with_suffix(".html").write_text(dom)  # what the assertions saw, beside the screenshot
    headers, names = column_headers(dom), run_names(dom)
    seen = f"{url}: see {shot} and its .html; headers {sorted(headers)}, runs {sorted(names)}"
    assert columns <= headers, f"columns {sorted(columns - headers)} missing; {seen}"
    assert runs <= names, f"runs {sorted(runs - names)} missing; {seen}"
    print(f"\n{url}\nrendered in {time.monotonic() - start:.1f} s "
          f"(virtual-time budget {budget} ms); screenshot: {shot}")
    return names


def test_runs_table_url_links_the_saved_view_or_carries_the_filter_itself():
    task = "tags.`heat.task` = 'translation'"
    url = runs_table_url("http://127.0.0.1:5000/", "7", ["test/bleu"], task)
    assert url.startswith("http://127.0.0.1:5000/#/experiments/7/runs?")
    assert "workflowType=machine_learning" in url and "compareRunsMode=TABLE" in url
    assert f"viewStateShareKey={view_key(['test/bleu'], task)}" in url
    assert "searchFilter" not in url  # the view holds it: the UI skips a view otherwise
    plain = runs_table_url("http://127.0.0.1:5000", "7", filter=task)
    assert "searchFilter=tags.%60heat.task%60%20%3D%20%27translation%27" in plain
    assert "viewStateShareKey" not in plain


@needs_chromium
def test_runs_table_of_a_hand_built_store_shows_scores_and_child_runs(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id, parent = build_store(store, tmp_path / "artifacts")
    children = {f"{task}/{variant}" for task in TASK_SCORES for variant in VARIANTS}
    task = "tags.`heat.task` = 'translation'"
    save_runs_view(mlflow.MlflowClient(store), experiment_id, TASK_SCORES["translation"], task,
                   name="translation")
    with start_mlflow_server(store, tmp_path) as server:
        open_runs_table(runs_table_url(server, experiment_id, list(SCORE_METRICS)),
                        set(SCORE_METRICS), children | {parent}, tmp_path / "runs-table.png")
        translation = {name for name in children if name.startswith("translation/")}
        listed = open_runs_table(
            runs_table_url(server, experiment_id, list(TASK_SCORES["translation"]), task),
            set(TASK_SCORES["translation"]), translation, tmp_path / "translation-runs.png")
        assert listed == translation  # the filter in the view: no parent, no classification


@pytest.mark.slow
@pytest.mark.timeout(SMOKE_TIMEOUT_S)  # it may be the first to ask for the smoke run
@needs_chromium
def test_runs_table_of_the_smoke_run_shows_its_scores_and_child_runs(smoke, tmp_path):
    """The experiment the smoke run logged to: kind tag and scores view written by the pipeline,
    and the link opens a table with every score the child runs carry as a column."""
    client = mlflow.MlflowClient(smoke.tracking_uri)
    experiment = client.get_experiment_by_name("smoke")
    assert experiment.tags.get(EXPERIMENT_KIND_TAG) == EXPERIMENT_KIND, experiment.tags
    key = VIEW_TAG_PREFIX + view_key(SCORE_METRICS)
    assert key in experiment.tags, (
        "the pipeline saved no runs view: pipeline/tracking.py should call "
        "pipeline.mlflow_ui.save_runs_view(client, experiment_id); "
        f"tags: {sorted(experiment.tags)}")
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`heat.run_name` = '{smoke.run_name}'")
    children = {run.info.run_name for run in runs if "mlflow.parentRunId" in run.data.tags}
    assert {f"translation/{v}" for v in VARIANTS} <= children, children
    carried = {metric for run in runs for metric in run.data.metrics}
    columns = {metric for metric in SCORE_METRICS if metric in carried}
    assert {"test/bleu", "test/accuracy"} <= columns, sorted(carried)
    with start_mlflow_server(smoke.tracking_uri, tmp_path) as server:
        open_runs_table(runs_table_url(server, experiment.experiment_id, list(SCORE_METRICS)),
                        columns, children | {smoke.run_name}, tmp_path / "smoke-runs-table.png")
