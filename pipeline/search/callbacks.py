"""The driver's view of a search's trials: progress lines, and the MLflow bookkeeping a trial
cannot do itself.

A trial that ASHA stops, or that errors, is ended by Tune from outside: its process never
reaches the end of `run_trial`, so its child run would stay RUNNING. This callback ends it:
KILLED with `heat.stopped_early` (the step and the loss it was stopped at) for a stopped trial,
FAILED with `heat.failure` for an errored one. Everything the trial logged stays.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback

from pipeline.search import slots
from pipeline.tracking import TAG_FAILURE, TAG_PARENT, TAG_STOPPED, TAG_TRIAL

logger = logging.getLogger(__name__)


class TrialRuns(Callback):
    """Progress lines per trial and the end of its MLflow child run."""

    def __init__(self, *, search_name: str, tracking_uri: str, experiment_id: str,
                 parent_run_id: str, total: int, slots: str) -> None:
        self.search_name = search_name
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.total = total
        self.slots = slots
        # Plain values only: Tune pickles the callback into the experiment's state; an MLflow
        # client is made per use.

    def _name(self, trial: Any) -> str:
        params = " ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        return f"{self.search_name} trial {trial.trial_id} ({params})"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = int(trial.trial_id.rsplit("_", 1)[-1]) + 1  # Tune's ids end in _00000, ...
        logger.info("%s: started (%d of %d)", self._name(trial), number, self.total)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        if "step" in result and "val_loss" in result:
            logger.info("%s: step %d, validation loss %.4f", self._name(trial),
                        int(result["step"]), float(result["val_loss"]))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        slots.release(self.slots, trial.trial_id)
        result = trial.last_result or {}
        scores = {k: result[k] for k in ("bleu", "chrf", "accuracy", "f1") if k in result}
        if scores:
            logger.info("%s: finished, best validation loss %.4f, %s", self._name(trial),
                        float(result.get("best_val_loss", float("nan"))),
                        ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
            return
        step = int(result.get("step", 0))
        reason = f"stopped by ASHA at step {step}"
        if "val_loss" in result:
            reason += f" (validation loss {float(result['val_loss']):.4f})"
        logger.info("%s: %s", self._name(trial), reason)
        self._end(trial.trial_id, "KILLED", {TAG_STOPPED: reason})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        slots.release(self.slots, trial.trial_id)
        error = getattr(trial, "error_file", None) or "its error.txt"
        reason = f"trial {trial.trial_id} failed; Ray Tune's traceback: {error}"
        logger.error("%s: failed (%s)", self._name(trial), error)
        self._end(trial.trial_id, "FAILED", {TAG_FAILURE: reason})

    def _end(self, trial_id: str, status: str, tags: dict[str, str]) -> None:
        """End the trial's child run if it is still RUNNING (a trial that finished ended it)."""
        import mlflow

        client = mlflow.MlflowClient(self.tracking_uri)
        query = (f"tags.`{TAG_PARENT}` = '{self.parent_run_id}' and "
                 f"tags.`{TAG_TRIAL}` = '{trial_id}'")
        for run in client.search_runs([self.experiment_id], query):
            if run.info.status == "RUNNING":
                for key, value in tags.items():
                    client.set_tag(run.info.run_id, key, value)
                client.set_terminated(run.info.run_id, status)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
