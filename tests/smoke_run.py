"""The one full smoke run the slow suites share (`heat-pipeline smoke` from an empty directory, as a
user runs it), and the console script those suites call."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


SMOKE_TIMEOUT_S = 2400
"""The time limit of a test that may be the first to ask for the smoke run (pytest's default of
900 s counts the fixture's setup, the whole run, against that test)."""


def heat_pipeline(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed console script (as the README runs it), else `python -m pipeline`."""
    script = Path(sys.executable).parent / "heat-pipeline"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pipeline"]
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    environment.update(env or {})
    return subprocess.run([*command, *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=SMOKE_TIMEOUT_S - 100)


@dataclass(frozen=True)
class SmokeRun:
    cwd: Path
    result: subprocess.CompletedProcess
    run_name: str

    def __iter__(self):  # cwd, result, run_name = smoke
        return iter((self.cwd, self.result, self.run_name))

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.cwd}/runs/mlflow.db"


def run_smoke(cwd: Path) -> SmokeRun:
    """One full smoke run in the empty directory `cwd` (its storage defaults to ./runs there)."""
    result = heat_pipeline("smoke", cwd=cwd)
    assert result.returncode == 0, result.stderr[-5000:]
    run_name = re.search(r"^run (\S+) of config smoke", result.stdout, re.MULTILINE).group(1)
    return SmokeRun(cwd, result, run_name)


def tracked_runs(store: str, run_name: str) -> dict[str, Any]:
    """The MLflow runs of pipeline run `run_name` in the smoke experiment, by run name (the
    parent under `run_name`, the children under `task/variant`)."""
    import mlflow

    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], f"tags.`heat.run_name` = '{run_name}'")
    return {run.info.run_name: run for run in runs}
