"""The same config and seed give the same numbers (real Ray Train, DeepSpeed ZeRO-2 on two
workers, MLflow), and `heat-pipeline diagnose` reads a finished run's trained weights."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from bad_input import heat_pipeline, tiny_config, write_yaml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reproducible")
    config = tiny_config(folder, variants={"heat": {"name": "heat", "rank": 8,
                                                   "input_norm": "rms"}})
    config["tasks"]["translation"]["train"].update(num_workers=2, cpus_per_worker=0.5,
                                                   zero_stage=2, max_steps=6)
    path = write_yaml(folder / "tiny.yaml", config)
    for name in ("first", "second"):
        done = heat_pipeline("run", str(path), "--run-name", name, cwd=folder)
        assert done.returncode == 0, done.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{folder}/runs/mlflow.db")
    (experiment,) = client.search_experiments(filter_string="name = 'tiny'")
    runs = {(r.data.tags["heat.run_name"], r.info.run_name): r
            for r in client.search_runs([experiment.experiment_id])}
    return folder, client, runs


def test_two_runs_with_the_same_seed_give_identical_losses_and_scores(two_runs):
    _, client, runs = two_runs
    first, second = runs[("first", "translation/heat")], runs[("second", "translation/heat")]
    for key in ("test/bleu", "test/chrf"):
        assert first.data.metrics[key] == second.data.metrics[key], key
    for key in ("train/loss", "val/loss"):
        history = [[(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                   for run in (first, second)]
        assert history[0] and history[0] == history[1], key


def test_diagnose_reads_the_trained_weights_and_tracks_the_figures(two_runs):
    folder, client, runs = two_runs
    out = folder / "diag.json"
    done = heat_pipeline("diagnose", "first", "--storage-root", str(folder / "runs"),
                         "--out", str(out), "--plot", str(folder / "diag.png"), cwd=folder)
    assert done.returncode == 0, done.stderr[-4000:]
    every = json.loads(out.read_text())["rows"]
    assert {r["variant"] for r in every} == {"softmax", "heat"}  # tiny_config's and this one
    assert all(r["rel_error"] == 0 for r in every if r["variant"] == "softmax")
    rows = [r for r in every if r["variant"] == "heat"]
    assert {(r["site"], r["layer"]) for r in rows} == {
        ("encoder_self", 0), ("decoder_self", 0), ("decoder_cross", 0)}
    for row in rows:
        assert 0 < row["rel_error"] < 1 and 0 < row["rel_error_gaussian"] < 1, row
        assert 0 <= row["q_clipped_max"] <= row["q_beyond_2sigma_max"] <= 1, row
    assert "decoder_cross" in done.stdout
    metrics = client.get_run(runs[("first", "translation/heat")].info.run_id).data.metrics
    # the evaluate stage tracked them too (2 validation batches), diagnose added its own
    assert "diag/decoder_cross.0/rel_error" in metrics
    assert metrics["diag/encoder_self.0/q_std_max"] > 0
