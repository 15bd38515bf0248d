"""`heat-pipeline tune configs/tune_smoke.yaml` end to end, as a user runs it: real Ray Tune over
Ray Train + DeepSpeed trials, MLflow in SQLite, sacrebleu; killed half-way (SIGTERM, as
`ray job stop` sends it), resumed with `--resume`, then `heat-pipeline report` on the store.

One search run serves every assertion (it takes several minutes on 2 cores).
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from pipeline.config import CONFIG_DIR

# The search and its resume take about 15 minutes here: more than the suite's per-test limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

TRIALS = 7  # heat rank 16/8/2, taylor order 2/1, hadamard, softmax
CONFIG = str(CONFIG_DIR / "tune_smoke.yaml")


def command(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "heat-pipeline"
    return [str(script) if script.exists() else sys.executable, *([] if script.exists() else
            ["-m", "pipeline"]), *args]


def environment() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}


def trial_runs(client: mlflow.MlflowClient) -> list[mlflow.entities.Run]:
    experiment = client.get_experiment_by_name("tune_smoke")
    if experiment is None:
        return []
    return [r for r in client.search_runs([experiment.experiment_id])
            if "heat.trial" in r.data.tags]


def parent_run(client: mlflow.MlflowClient) -> mlflow.entities.Run:
    experiment = client.get_experiment_by_name("tune_smoke")
    (parent,) = [r for r in client.search_runs([experiment.experiment_id])
                 if "mlflow.parentRunId" not in r.data.tags]
    return parent


def store_ready(db: Path) -> bool:
    """Whether the search has migrated its store and created its experiment.

    Opening an MlflowClient on a store still being migrated runs a second, racing migration
    (alembic: "expected to match one row ... 0 found"), so the test reads the file with sqlite3
    until the search's own experiment is in it.
    """
    import sqlite3

    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            rows = connection.execute(
                "SELECT 1 FROM experiments WHERE name = 'tune_smoke'").fetchall()
    except sqlite3.Error:
        return False
    return bool(rows)


def interrupt_after_two_trials(cwd: Path, client_uri: str) -> tuple[subprocess.Popen, str]:
    """Start the search; SIGTERM it once two trials have ended (finished or stopped)."""
    process = subprocess.Popen(command("tune", CONFIG, "--run-name", "search"), cwd=cwd,
                               env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 1500
    client = None
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(3)
        if client is None and store_ready(cwd / "runs" / "mlflow.db"):
            client = mlflow.MlflowClient(client_uri)
        if client is not None:
            ended = [r for r in trial_runs(client) if r.info.status in ("FINISHED", "KILLED")]
            if len(ended) >= 2:
                break
    assert process.poll() is None, "the search ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    return process, stderr


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("tune")
    uri = f"sqlite:///{cwd}/runs/mlflow.db"
    interrupted, interrupted_err = interrupt_after_two_trials(cwd, uri)
    client = mlflow.MlflowClient(uri)
    before = {r.info.run_id: r for r in trial_runs(client)}
    parent_before = parent_run(client)
    resumed = subprocess.run(command("tune", CONFIG, "--resume"), cwd=cwd, env=environment(),
                             capture_output=True, text=True, timeout=2400)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    report = subprocess.run(command("report", "--tracking-uri", uri, "--experiment",
                                    "tune_smoke", "--out", str(cwd / "report")),
                            cwd=cwd, env=environment(), capture_output=True, text=True,
                            timeout=600)
    return {"cwd": cwd, "client": client, "interrupted": interrupted,
            "interrupted_err": interrupted_err, "before": before,
            "parent_before": parent_before, "resumed": resumed, "report": report}


def test_an_interrupted_search_exits_130_and_marks_its_runs_failed(search):
    assert search["interrupted"].returncode == 130, search["interrupted_err"][-3000:]
    assert "continue with --resume" in search["interrupted_err"]
    assert search["parent_before"].info.status == "FAILED"
    assert "interrupted" in search["parent_before"].data.tags["heat.failure"]
    ended = [r for r in search["before"].values() if r.info.status in ("FINISHED", "KILLED")]
    assert len(ended) >= 2


def test_resume_neither_reruns_nor_duplicates_finished_trials(search):
    client = search["client"]
    after = {r.info.run_id: r for r in trial_runs(client)}
    assert len(after) == TRIALS
    assert len({r.data.tags["heat.trial"] for r in after.values()}) == TRIALS
    for run_id, before in search["before"].items():
        if before.info.status in ("FINISHED", "KILLED"):
            assert after[run_id].info.status == before.info.status
            assert after[run_id].info.end_time == before.info.end_time  # not run again
    for run in after.values():
        if run.info.status == "FINISHED":
            history = client.get_metric_history(run.info.run_id, "test/bleu")
            assert len(history) == 1, run.info.run_name
    assert "translation: prepare: skipped, finished earlier" in search["resumed"].stderr
    assert parent_run(client).info.status == "FINISHED"
    assert parent_run(client).info.run_id == search["parent_before"].info.run_id


def test_every_trial_is_a_child_run_with_its_parameters_and_scores(search):
    runs = trial_runs(search["client"])
    heat = [r for r in runs if r.data.tags["heat.search"] == "heat_rank"]
    assert sorted(int(r.data.params["search.rank"]) for r in heat) == [2, 8, 16]
    for run in heat:
        params = run.data.params
        assert params["attention.encoder_self.rank"] == params["search.rank"]
        assert params["attention.decoder_self.name"] == "heat"
        assert run.data.tags["heat.dataset"] == "builtin:toy_translation"
    taylor = [r for r in runs if r.data.tags["heat.search"] == "taylor_order"]
    assert sorted(r.data.params["attention.cross.order"] for r in taylor) == ["1", "2"]
    for run in runs:
        if run.info.status == "FINISHED":
            assert 0 <= run.data.metrics["test/bleu"] <= 100
            assert run.data.metrics["best_val_loss"] < 3.0  # untrained: about ln(320) = 5.8
            artifacts = {a.path for a in search["client"].list_artifacts(run.info.run_id)}
            assert {"hypotheses.txt", "references.txt"} <= artifacts


def test_asha_stops_at_least_one_trial_early(search):
    stopped = [r for r in trial_runs(search["client"]) if r.info.status == "KILLED"]
    assert stopped, "ASHA stopped no trial"
    for run in stopped:
        assert run.data.tags["heat.stopped_early"].startswith("stopped by ASHA at step")
    assert "stopped early at step" in search["resumed"].stdout


def test_each_search_tags_its_best_trial_by_validation_loss(search):
    runs = trial_runs(search["client"])
    for name in ("heat_rank", "taylor_order", "hadamard", "softmax"):
        finished = [r for r in runs if r.data.tags["heat.search"] == name
                    and r.info.status == "FINISHED"]
        best = [r for r in finished if r.data.tags.get("heat.best_trial") == "true"]
        assert len(best) == 1, name
        assert best[0].data.metrics["best_val_loss"] == min(
            r.data.metrics["best_val_loss"] for r in finished)
    parent = parent_run(search["client"])
    assert "heat_rank/best/bleu" in parent.data.metrics


def test_the_summary_lists_every_trial(search):
    out = search["resumed"].stdout
    assert "heat_rank (3 trials" in out and "taylor_order (2 trials" in out
    for rank in (16, 8, 2):
        assert f"rank={rank} seed=0" in out


def test_the_report_lists_every_trial_and_draws_the_plots(search):
    report = search["report"]
    assert report.returncode == 0, report.stderr[-3000:]
    folder = search["cwd"] / "report"
    finished = {r.info.run_id for r in trial_runs(search["client"])
                if r.info.status == "FINISHED"}
    with open(folder / "runs.csv", encoding="utf-8") as handle:
        listed = {row["run_id"] for row in csv.DictReader(handle)}
    assert listed == finished
    assert list(folder.glob("search_heat_rank_*.png"))
    assert list(folder.glob("cost_*.png"))
    text = (folder / "report.md").read_text()
    assert "HEAT matches exact Hadamard" in text or "hadamard" in text
