"""`heat-pipeline bench train`: the pipeline's Ray Train + DeepSpeed worker against a plain
PyTorch loop on the same batches (real Ray, DeepSpeed, SentencePiece; a tiny model)."""

from __future__ import annotations

import json

import pytest

from bad_input import heat_pipeline, tiny_config, write_yaml

pytestmark = pytest.mark.slow

STEPS = 8


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-train")
    config = tiny_config(folder)
    config["tasks"]["translation"]["train"].update(zero_stage=0, max_steps=50)
    config["tasks"]["translation"]["model"]["dropout"] = 0.1  # the dropout streams must match
    path = write_yaml(folder / "tiny.yaml", config)
    out, plot = folder / "bench" / "train.json", folder / "bench" / "train.png"
    done = heat_pipeline("bench", "train", str(path), "--steps", str(STEPS), "--warmup", "2",
                         "--seeds", "2", "--evaluate", "--plain-in-ray", "--interleaved", "--out", str(out), "--plot", str(plot),
                         cwd=folder)
    assert done.returncode == 0, done.stderr[-4000:]
    return done, json.loads(out.read_text()), plot


def test_the_pipeline_worker_trains_exactly_as_the_plain_loop(bench):
    _, result, _ = bench
    plain, pipeline, in_ray, plain_turns, pipeline_turns, reference = result["loops"]
    assert [loop["name"] for loop in result["loops"]] == [
        "plain", "pipeline", "plain_in_ray", "plain_interleaved", "pipeline_interleaved",
        "reference"]
    assert len(plain["losses"]) == STEPS
    # Same weights, batches, dropout, AdamW, schedule and clipping: the same numbers, step by
    # step, to the last bit (ZeRO 0, fp32, one worker; torch's clip_grad_norm_ in both,
    # `torch_clips`: DeepSpeed's own clip rounds differently, 5e-7 apart within 10 steps).
    assert pipeline["losses"] == plain["losses"]
    assert result["summary"]["pipeline"]["max_abs_loss_gap_vs_plain"] == 0
    assert pipeline["tokens"] == plain["tokens"]
    # The plain loop's own code inside a Ray Train worker: the same numbers again.
    assert in_ray["losses"] == plain["losses"] and in_ray["tokens"] == plain["tokens"]
    # Stepped in turn in one process, each with its own RNG state: still the same numbers.
    for loop in (plain_turns, pipeline_turns):
        assert loop["losses"] == plain["losses"] and loop["tokens"] == plain["tokens"]
    # The reference model trains on the same batches but is another model.
    assert reference["tokens"] == plain["tokens"]
    assert reference["losses"] != plain["losses"]


def test_the_bench_reports_speed_and_where_the_time_goes(bench):
    done, result, plot = bench
    for name, entry in result["summary"].items():
        assert entry["tokens_per_s"] > 0, name
        split = entry["ms_per_step"]
        assert set(split) == {"data", "forward", "backward", "optimizer", "framework"}
        assert all(value >= 0 for value in split.values())
    for loop in result["loops"]:  # each loop's split adds up to its steps' wall time
        assert sum(loop["split_s"].values()) == pytest.approx(sum(loop["seconds"]), rel=0.05)
    assert result["summary"]["plain"]["tokens_per_s_vs_plain"] == 1.0
    assert result["summary"]["plain"]["paired_speed_vs_plain"] == 1.0
    assert result["summary"]["plain_interleaved"]["paired_speed_vs_plain"] == 1.0  # its own base
    for name in ("pipeline", "plain_in_ray", "pipeline_interleaved", "reference"):
        low, high = result["summary"][name]["paired_speed_vs_plain_range"]
        assert 0 < low <= result["summary"][name]["paired_speed_vs_plain"] <= high, name
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert "pipeline" in done.stdout and "tok/s" in done.stdout


def test_bad_arguments_are_one_line_before_any_work(tmp_path):
    path = write_yaml(tmp_path / "tiny.yaml", tiny_config(tmp_path))
    for args, expected in ((["--steps", "0"], "bench train: --steps: must be an integer >= 1"),
                           (["--task", "nope"], "--task: must be one of ['translation']"),
                           (["--steps", "4", "--warmup", "4"], "--warmup: must be below")):
        done = heat_pipeline("bench", "train", str(path), *args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "runs").exists()


def test_the_bench_scores_both_models_over_seeds_as_the_evaluate_stage_does(bench):
    done, result, _ = bench
    quality = result["quality"]
    assert set(quality) == {"plain", "reference", "plain_minus_reference"}
    for name in ("plain", "reference"):
        assert quality[name]["seeds"] == [0, 1]
        for key in ("val_loss@2", "val_loss@8", "bleu", "chrf"):  # val_every 2
            entry = quality[name][key]
            assert entry["n"] == 2 and len(entry["values"]) == 2
            assert entry["low"] <= entry["mean"] <= entry["high"]
        assert all(0 < v < 20 for v in quality[name]["val_loss@8"]["values"])
        assert all(0 <= v <= 100 for v in quality[name]["bleu"]["values"])
        # two seeds: two initialisations and batch orders, two different models
        assert len(set(quality[name]["val_loss@8"]["values"])) == 2
    gap = quality["plain_minus_reference"]["bleu"]["values"]
    assert gap == pytest.approx([p - r for p, r in zip(quality["plain"]["bleu"]["values"],
                                                       quality["reference"]["bleu"]["values"])])
    # every seed's pipeline loop repeats its plain loop to the bit
    assert result["summary"]["pipeline"]["max_abs_loss_gap_vs_plain"] == 0
    assert len(result["tokens_per_s_runs"]["plain"]) == 2
    assert len(result["tokens_per_s_runs"]["pipeline_interleaved"]) == 2
    assert "plain_minus_reference" in done.stdout and "val_loss@8" in done.stdout
