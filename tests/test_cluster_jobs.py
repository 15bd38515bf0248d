"""The pipeline as a Ray job, the way the README's "Run on a cluster" tells users to run it: a real
head (`ray start --head`, token auth), `ray job submit --working-dir . --runtime-env
configs/cluster/runtime_env.yaml -- python -m pipeline run ...`, MLflow through `mlflow server`
on 127.0.0.1, `ray job logs`, `ray job stop`, and a stopped job resubmitted with `--resume`.

The configs are `tests/bad_input.tiny_config` runs (one translation variant, a few hundred
steps): the config's `ray.address: local` must be read as the job's cluster inside the job.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import mlflow
import pytest
from bad_input import tiny_config, write_yaml
from browser import start_mlflow_server
from ray_head import ray_head

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_ENV = ROOT / "configs" / "cluster" / "runtime_env.yaml"
NOISE = re.compile(r"TrainingReport\(|Checkpoint successfully created|PlacementGroupCleaner|"
                   r"RayTrainWorker|Traceback|Total Progress|View run \S+ at:")


@pytest.fixture(scope="module")
def head():
    with ray_head(num_cpus=2) as started:
        yield started


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    with start_mlflow_server(f"sqlite:///{folder}/mlflow.db", folder) as url:
        yield url


def job_config(folder: Path, **train) -> Path:
    config = tiny_config(folder)
    config["tasks"]["translation"]["train"].update(train)
    return write_yaml(folder / "tiny.yaml", config)


def submit(head, config: Path, *args: str) -> str:
    """`ray job submit --no-wait` of `python -m pipeline run CONFIG ARGS`; the job's id."""
    outcome = head.job("submit", "--no-wait", "--working-dir", str(ROOT), "--runtime-env",
                       str(RUNTIME_ENV), "--", sys.executable, "-m", "pipeline", "run",
                       str(config), *args)
    assert outcome.returncode == 0, outcome.stdout + outcome.stderr
    return re.search(r"Job '(\S+)' submitted successfully",
                     outcome.stdout + outcome.stderr).group(1)


def runs_of(tracking: str, run_name: str | None = None) -> dict[str, mlflow.entities.Run]:
    client = mlflow.MlflowClient(tracking)
    experiment = client.get_experiment_by_name("tiny")
    query = f"tags.`heat.run_name` = '{run_name}'" if run_name else ""
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id],
                                                                  query)}


def test_a_submitted_run_succeeds_on_the_jobs_cluster_and_tracks_over_http(head, tracking,
                                                                             tmp_path):
    config = job_config(tmp_path, max_steps=40, val_every=20, log_every=10)
    start = time.monotonic()
    job = submit(head, config, "--run-name", "submitted", f"tracking.uri={tracking}")
    assert head.wait(job, ("SUCCEEDED", "FAILED", "STOPPED")) == "SUCCEEDED", \
        head.job("logs", job).stdout[-5000:]
    print(f"submitted job: {time.monotonic() - start:.0f} s from submit to SUCCEEDED")
    logs = head.job("logs", job).stdout
    assert "translation: softmax (1/1) step 40/40" in logs  # rank 0's progress, in the job log
    assert re.search(r"^run submitted of config tiny: \d+ s$", logs, re.MULTILINE)
    assert not [line for line in logs.splitlines() if NOISE.search(line)]
    runs = runs_of(tracking, "submitted")
    assert {name: run.info.status for name, run in runs.items()} == {
        "submitted": "FINISHED", "translation/softmax": "FINISHED"}
    assert runs["translation/softmax"].data.metrics["test/bleu"] >= 0
    # the outputs are on the storage the config names, not in the job's temporary working dir
    assert (tmp_path / "runs" / "pipeline-runs" / "submitted" / "summary.txt").is_file()


def test_a_relative_storage_root_is_refused_inside_the_job(head, tmp_path):
    config = job_config(tmp_path, max_steps=4)
    job = submit(head, config, "storage.root=runs")
    assert head.wait(job, ("SUCCEEDED", "FAILED", "STOPPED")) == "FAILED"
    logs = head.job("logs", job).stdout
    assert "heat-pipeline: config error: storage.root: 'runs' is relative" in logs
    assert "Traceback" not in logs


def test_a_stopped_job_keeps_its_checkpoints_and_runs_and_resumes(head, tracking, tmp_path):
    config = job_config(tmp_path, max_steps=300, val_every=50, checkpoint_every=50,
                        log_every=25)
    args = ("--run-name", "stopped", f"tracking.uri={tracking}")
    job = submit(head, config, *args)
    train = tmp_path / "runs" / "train" / "stopped"
    deadline = time.monotonic() + 600
    while not list(train.glob("*/checkpoint_*/manifests/rank_0.json")):
        assert head.status(job) == "RUNNING", head.job("logs", job).stdout[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in 600 s"
        time.sleep(1)
    assert head.job("stop", job).returncode == 0
    assert head.wait(job, ("SUCCEEDED", "FAILED", "STOPPED"), timeout=120) == "STOPPED"
    stopped = runs_of(tracking, "stopped")
    assert {name: run.info.status for name, run in stopped.items()} == {
        "stopped": "FAILED", "translation/softmax": "FAILED"}
    assert stopped["stopped"].data.tags["heat.failure"].startswith("KeyboardInterrupt")
    assert list(train.glob("*/checkpoint_*/manifests/rank_0.json"))  # kept

    resumed = submit(head, config, *args, "--resume")
    assert head.wait(resumed, ("SUCCEEDED", "FAILED", "STOPPED")) == "SUCCEEDED", \
        head.job("logs", resumed).stdout[-5000:]
    assert "resumes at step" in head.job("logs", resumed).stdout
    runs = runs_of(tracking, "stopped")
    assert {name: run.info.status for name, run in runs.items()} == {
        "stopped": "FINISHED", "translation/softmax": "FINISHED"}  # the same two, no new ones
    assert runs["stopped"].info.run_id == stopped["stopped"].info.run_id
    child = runs["translation/softmax"]
    client = mlflow.MlflowClient(tracking)
    steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "train/loss"))
    assert steps == list(range(25, 301, 25))  # every step once: none lost, none logged twice
