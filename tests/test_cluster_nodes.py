"""Training on several nodes, and losing one: a four-node Ray cluster on this machine
(`ray.cluster_utils.Cluster`: a head without CPUs, as on a cluster whose head only serves, and
three nodes of 1 CPU each: the two training workers of 1 CPU land on two of them, the third is
spare capacity, and the data stages run wherever a CPU is free),
shared storage (a local folder every node reads, as a shared mount would be), MLflow through
`mlflow server` on 127.0.0.1.

Mid-training, after the first checkpoint, a training worker process is killed (in the second
test, a whole node that holds one is removed, its raylet and workers killed at once): Ray Train
restarts the worker group (`train.max_failures`), the workers resume from the latest checkpoint,
and the run ends with the uninterrupted step count, one MLflow child run, every step logged
once. The time from the fault to the resumed training's first line is printed (the recovery
time quoted in the README). And `storage.root` is checked to be seen by every node.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import mlflow
import psutil
import pytest
from bad_input import tiny_config
from browser import start_mlflow_server
from ray_head import free_port

from pipeline.config import build_config
from pipeline.run import run_pipeline

pytestmark = pytest.mark.slow

MAX_STEPS = 240


@pytest.fixture
def cluster(monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    # With a dashboard of its own (not 8265: another test's Ray may hold it): the state API
    # (which nodes the workers run on) and Ray Train's PlacementGroupCleaner ask it.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port()})
    # Three 1-CPU nodes for two workers: the third is the spare capacity a lost node's worker
    # moves to (an autoscaler's job on a real cluster; cluster_utils cannot add a node from the
    # pipeline's thread, Ray's node start-up installs signal handlers).
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)  # what `ray.address: auto` joins
    ray.init(address=cluster.address, log_to_driver=bool(os.environ.get("HEAT_TEST_WORKER_LOGS")))
    try:
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def tracking(tmp_path):
    with start_mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path) as url:
        yield url


def config(folder: Path, tracking: str):
    raw = tiny_config(folder, ray={"address": "auto", "num_cpus": None},
                      tracking={"uri": tracking})
    raw["tasks"]["translation"]["train"].update(
        num_workers=2, cpus_per_worker=1, max_steps=MAX_STEPS, val_every=40,
        checkpoint_every=40, log_every=20, max_failures=2)
    return build_config(raw)


def training_workers() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if "ray::RayTrainWorker" in " ".join(p.info["cmdline"] or [])]


def worker_nodes() -> set[str]:
    """The nodes the live training workers run on (Ray's state API)."""
    from ray.util.state import list_actors

    alive = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return {actor.node_id for actor in alive}


def run_and_break(folder: Path, tracking: str, caplog, fault) -> tuple[dict, float]:
    """Run the pipeline in a thread-free way: `fault()` is called from the progress printer's
    first line after the first checkpoint is on storage; the results and the recovery time."""
    import threading

    caplog.set_level(logging.INFO, logger="pipeline.progress")
    train = folder / "runs" / "train"
    broken: dict[str, float] = {}

    def watch() -> None:
        deadline = time.monotonic() + 900
        while not list(train.glob("*/*/checkpoint_*/manifests/rank_*.json")):
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)
        try:
            broken["nodes"] = len(worker_nodes())
            broken["at"] = time.time()
            fault()
        except Exception as error:  # noqa: BLE001 (reported by the assertion below)
            broken["error"] = repr(error)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    result = run_pipeline(config(folder, tracking), run_name="broken")
    watcher.join(timeout=60)
    assert "at" in broken and "error" not in broken, f"the fault was never injected: {broken}"
    assert broken["nodes"] == 2, "the two training workers did not run on two nodes"
    resumed = [r.created for r in caplog.records if "resumes at step" in r.getMessage()]
    assert resumed, [r.getMessage() for r in caplog.records if r.name == "pipeline.progress"]
    return result.results["translation"]["softmax"], resumed[0] - broken["at"]


def check_tracked_once(tracking: str) -> None:
    client = mlflow.MlflowClient(tracking)
    experiment = client.get_experiment_by_name("tiny")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {name: run.info.status for name, run in runs.items()} == {
        "broken": "FINISHED", "translation/softmax": "FINISHED"}
    steps = sorted(m.step for m in client.get_metric_history(
        runs["translation/softmax"].info.run_id, "train/loss"))
    assert steps == list(range(20, MAX_STEPS + 1, 20))


def test_a_killed_training_worker_is_replaced_and_training_resumes(cluster, tracking, tmp_path,
                                                                   caplog):
    assert len({p.pid for p in training_workers()}) == 0

    def kill_a_worker() -> None:
        (victim, *_) = training_workers()
        os.kill(victim.pid, signal.SIGKILL)

    result, recovery_s = run_and_break(tmp_path, tracking, caplog, kill_a_worker)
    print(f"worker killed: training resumed {recovery_s:.1f} s later")
    assert result["steps"] == MAX_STEPS
    check_tracked_once(tracking)


def test_a_lost_node_is_replaced_and_training_resumes(cluster, tracking, tmp_path, caplog):
    handle, nodes = cluster

    def lose_a_node() -> None:
        import ray

        # Not the driver's node (losing it ends any job): on one machine every node has the
        # same IP, and the driver may have joined through a worker node's raylet.
        hosting = worker_nodes() - {ray.get_runtime_context().get_node_id()}
        victim = next(node for node in nodes if node.node_id in hosting)
        handle.remove_node(victim, allow_graceful=False)  # its raylet and workers killed at once

    result, recovery_s = run_and_break(tmp_path, tracking, caplog, lose_a_node)
    print(f"node lost: training resumed {recovery_s:.1f} s later")
    assert result["steps"] == MAX_STEPS
    check_tracked_once(tracking)


def test_storage_every_node_sees_passes_and_a_file_no_node_sees_names_them_all(cluster, tmp_path):
    from pipeline.shared_storage import check_shared, nodes_without

    check_shared(str(tmp_path))  # this machine's nodes share its disk: no error, marker removed
    assert list(tmp_path.iterdir()) == []
    missing = nodes_without(str(tmp_path / "written-on-no-node"))
    assert len(missing) == 4 and all(m.startswith("192.") or "(" in m for m in missing)
