"""Bad arguments of `heat-pipeline bench attention`: each is one `heat-pipeline:` line naming the
argument, exit status 2, no traceback, within seconds (before any benchmarking work), and a valid
tiny bench still runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bad_input import assert_rejected, heat_pipeline, in_process

TINY = ("--lengths", "16", "--repeats", "1", "--heads", "1", "--head-dim", "8")
"""Small enough that a bench which wrongly runs is quick; the bad argument comes after it."""

BAD = {
    # the variant sweeps: argparse's value checks and the specs' own checks
    "heat-rank-zero": (["--heat-ranks", "0"], ["--heat-ranks", "positive"]),
    "heat-rank-word": (["--heat-ranks", "abc"], ["--heat-ranks", "integers"]),
    "heat-rank-above-svd-limit": (["--heat-ranks", "40"], ["--heat-ranks", "heat.rank"]),
    "heat-basis-unknown": (["--heat-bases", "fourier"], ["--heat-bases", "svd, taylor"]),
    "heat-bases-empty": (["--heat-bases", ","], ["--heat-bases", "names"]),
    "heat-implementation-unknown": (["--heat-implementations", "cuda"],
                                    ["--heat-implementations", "heat.implementation"]),
    "taylor-order-too-high": (["--taylor-orders", "9"], ["--taylor-orders", "[1, 4]"]),
    "taylor-order-zero": (["--taylor-orders", "0"], ["--taylor-orders"]),
    "taylor-order-odd": (["--taylor-orders", "3"], ["--taylor-orders", "even"]),
    "taylor-feature-dim-too-high": (["--taylor-feature-dims", "2000"],
                                    ["--taylor-feature-dims", "[0, 1024]"]),
    "taylor-features-too-many": (["--taylor-orders", "4", "--taylor-feature-dims", "1024"],
                                 ["--taylor-feature-dims", "features"]),
    "taylor-head-dim-too-many-features": (["--variants", "taylor", "--head-dim", "100000"],
                                          ["--head-dim", "features"]),
    "linformer-rank-too-high": (["--lengths", "8192", "--linformer-ranks", "5000"],
                                ["--linformer-ranks", "4096"]),
    "linformer-length-too-long": (["--variants", "linformer", "--lengths", "2000000"],
                                  ["--lengths", "linformer.max_length"]),
    "linformer-projection-over-budget": (
        ["--variants", "linformer", "--lengths", "1048576", "--linformer-ranks", "4096"],
        ["--linformer-ranks", "--memory-budget-gb"]),
    "nystrom-landmarks-zero": (["--nystrom-landmarks", "0"], ["--nystrom-landmarks"]),
    "sweep-of-a-variant-not-benched": (["--variants", "softmax", "--heat-ranks", "4"],
                                       ["--heat-ranks", "--variants"]),
    "variant-unknown": (["--variants", "softmax,flash"], ["--variants", "flash", "softmax"]),
    "variants-empty": (["--variants", ""], ["--variants"]),
    # sizes and counts
    "repeats-zero": (["--repeats", "0"], ["--repeats", ">= 1"]),
    "repeats-word": (["--repeats", "many"], ["--repeats", "integer"]),
    "batch-zero": (["--batch", "0"], ["--batch", ">= 1"]),
    "heads-zero": (["--heads", "0"], ["--heads", ">= 1"]),
    "head-dim-zero": (["--head-dim", "0"], ["--head-dim", ">= 1"]),
    "lengths-zero": (["--lengths", "0"], ["--lengths", "positive"]),
    "lengths-negative": (["--lengths", "16,-32"], ["--lengths", "positive"]),
    "warmup-negative": (["--warmup", "-1"], ["--warmup", ">= 0"]),
    "error-max-n-negative": (["--error-max-n", "-5"], ["--error-max-n", ">= 0"]),
    "seed-negative": (["--seed", "-1"], ["--seed"]),
    "seed-too-large": (["--seed", "99999999999999999999999"], ["--seed"]),
    # budgets
    "max-call-seconds-nan": (["--max-call-seconds", "nan"], ["--max-call-seconds", "finite"]),
    "max-call-seconds-inf": (["--max-call-seconds", "inf"], ["--max-call-seconds", "finite"]),
    "memory-budget-zero": (["--memory-budget-gb", "0"], ["--memory-budget-gb", "> 0"]),
    "memory-budget-nan": (["--memory-budget-gb", "nan"], ["--memory-budget-gb", "finite"]),
    # the device
    "device-unknown": (["--device", "tpu"], ["--device", "cpu"]),
    "value-missing": (["--repeats"], ["--repeats"]),
}


@pytest.mark.parametrize("args, named", BAD.values(), ids=BAD.keys())
def test_a_bad_argument_is_one_line_naming_it(args, named):
    assert_rejected(in_process("bench", "attention", *TINY, *args), *named, within_s=15)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_rejected():
    outcome = heat_pipeline("bench", "attention", *TINY, "--device", "cuda")
    assert_rejected(outcome, "--device", "cuda", within_s=15)


def _unwritable(tmp_path, kind: str):
    """A path that cannot be written, of each kind `check_writable` tells apart."""
    regular = tmp_path / "a-file.txt"
    regular.write_text("not a folder\n")
    return {"directory": tmp_path,
            "under-a-file": regular / "x.json",
            "deep-under-a-file": regular / "sub" / "deeper" / "x.json",
            "read-only-mount": "/sys/heat-bench/x.json",
            "empty": ""}[kind]


@pytest.mark.parametrize("flag, suffix", [("--out", ".json"), ("--plot", ".png")])
@pytest.mark.parametrize("kind", ["directory", "under-a-file", "deep-under-a-file",
                                  "read-only-mount", "empty"])
def test_an_unwritable_output_fails_before_the_bench(tmp_path, flag, suffix, kind):
    """The default lengths (up to 8192, every variant) take minutes: a rejection in seconds
    means nothing was benched."""
    if kind == "read-only-mount" and not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs (where no file can be created) on this machine")
    path = str(_unwritable(tmp_path, kind))
    if kind in ("under-a-file", "deep-under-a-file", "read-only-mount"):
        path = path.removesuffix(".json") + suffix
    outcome = heat_pipeline("bench", "attention", flag, path)
    assert_rejected(outcome, flag, *([path] if path else []), within_s=15)
    assert "%|" not in outcome.stderr and "|" not in outcome.stdout  # no progress, no table


def test_a_plot_format_matplotlib_cannot_write_is_rejected(tmp_path):
    outcome = heat_pipeline("bench", "attention", *TINY, "--plot", str(tmp_path / "x.foo"))
    assert_rejected(outcome, "--plot", "x.foo", ".png", within_s=15)
    assert not (tmp_path / "x.foo").exists()


def test_out_and_plot_must_differ(tmp_path):
    same = str(tmp_path / "bench.png")
    outcome = heat_pipeline("bench", "attention", *TINY, "--out", same, "--plot", same)
    assert_rejected(outcome, "--plot", "--out", within_s=15)


def test_the_bad_argument_is_the_only_stderr_line():
    outcome = heat_pipeline("bench", "attention", *TINY, "--taylor-orders", "9")
    assert_rejected(outcome, "--taylor-orders", within_s=15)
    assert outcome.stderr.strip().splitlines() == [outcome.error_line]
    assert outcome.error_line.startswith("heat-pipeline: bench attention: --taylor-orders: ")


def test_a_valid_tiny_bench_still_runs(tmp_path):
    out, plot = tmp_path / "new" / "folder" / "x.json", tmp_path / "x.png"
    outcome = heat_pipeline("bench", "attention", "--lengths", "16", "--repeats", "1",
                            "--variants", "softmax", "--out", str(out), "--plot", str(plot))
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stdout + outcome.stderr
    records = json.loads(out.read_text())
    assert [(r["variant"], r["n"]) for r in records] == [("softmax", 16)]
    assert records[0]["fwd_bwd_ms"] > 0
    assert plot.stat().st_size > 0
    assert not [p for p in tmp_path.rglob(".heat-pipeline-probe-*")]  # probes cleaned up


def test_an_existing_out_file_is_checked_without_being_changed(tmp_path):
    """The up-front check opens an existing `--out` for appending: its contents stay until the
    bench overwrites them, and a rejected run leaves them as they were."""
    out = tmp_path / "old.json"
    out.write_text("[]\n")
    outcome = heat_pipeline("bench", "attention", *TINY, "--out", str(out), "--repeats", "0")
    assert_rejected(outcome, "--repeats", within_s=15)
    assert out.read_text() == "[]\n"
