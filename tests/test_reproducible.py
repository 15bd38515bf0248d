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


@pytest.fixture(scope="module")
def seeded_run(two_runs):
    """The same config once more with `seeds: [0, 1]` (in the same folder: prepare and tokenize
    are reused)."""
    folder, client, _ = two_runs
    done = heat_pipeline("run", str(folder / "tiny.yaml"), "--run-name", "seeded",
                         "seeds=[0, 1]", cwd=folder)
    assert done.returncode == 0, done.stderr[-4000:]
    (experiment,) = client.search_experiments(filter_string="name = 'tiny'")
    runs = {r.info.run_name: r for r in client.search_runs(
        [experiment.experiment_id], "tags.`heat.run_name` = 'seeded'")}
    return folder, done, runs


def test_seeds_train_each_seed_in_its_own_child_run_and_seed_0_repeats_the_plain_run(
        two_runs, seeded_run):
    _, client, plain = two_runs
    _, _, runs = seeded_run
    zero, one = runs["translation/heat/seed0"], runs["translation/heat/seed1"]
    assert (zero.data.tags["heat.seed"], one.data.tags["heat.seed"]) == ("0", "1")
    assert (zero.data.params["train.seed"], one.data.params["train.seed"]) == ("0", "1")
    first = plain[("first", "translation/heat")]  # the tiny config trains at seed 0
    history = {name: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id,
                                                                          "train/loss")]
               for name, r in (("plain", first), ("zero", zero), ("one", one))}
    assert history["zero"] == history["plain"]
    assert history["one"] != history["plain"]
    assert zero.data.metrics["test/bleu"] == first.data.metrics["test/bleu"]


def test_seeds_summary_and_parent_run_give_mean_and_spread(seeded_run):
    folder, done, runs = seeded_run
    scores = [runs[f"translation/heat/seed{s}"].data.metrics["test/chrf"] for s in (0, 1)]
    parent = runs["seeded"].data.metrics
    assert parent["translation/heat/test/chrf"] == pytest.approx(sum(scores) / 2)
    assert parent["translation/heat/test/chrf_min"] == min(scores)
    assert parent["translation/heat/test/chrf_sd"] == pytest.approx(abs(scores[0] - scores[1])
                                                                    / 2 ** 0.5)
    assert parent["translation/heat/seeds"] == 2
    summary = (folder / "runs" / "pipeline-runs" / "seeded" / "summary.txt").read_text()
    assert "2 seeds (0, 1)" in summary and "BLEU per seed" in summary
    assert "translation/train@0" in summary and "translation/train@1" in summary
    assert "translation seed 1: train" in done.stdout + done.stderr
