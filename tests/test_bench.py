"""`heat-pipeline bench attention` at small sizes: valid JSON with every variant, a plot."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from pipeline import bench

VARIANTS = {"softmax", "linformer", "nystrom", "hadamard", "heat", "taylor"}
APPROXIMATIONS = {"heat", "taylor", "linformer", "nystrom"}  # measured against an exact counterpart


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.configure(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("causal", [False, True])
def test_bench_writes_a_record_per_variant_and_length(tmp_path, causal):
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    args = parse("--lengths", "32,64", "--heads", "2", "--head-dim", "16", "--repeats", "2",
                 "--heat-bases", "svd,taylor", "--taylor-feature-dims", "0,4",
                 "--linformer-ranks", "16", "--nystrom-landmarks", "8",
                 "--out", str(out), "--plot", str(plot), *(["--causal"] if causal else []))
    assert bench.main(args) == 0
    records = json.loads(out.read_text())
    assert plot.stat().st_size > 10_000
    assert {r["variant"] for r in records} == VARIANTS
    labels = {r["label"] for r in records}
    assert len(records) == 2 * len(labels) == 2 * 8  # 4 + heat 2 bases + taylor 2 dims, 2 n
    required = {"variant", "params", "n", "causal", "device", "dtype", "fwd_ms", "fwd_bwd_ms",
                "peak_mem_mb", "rel_error"}
    for r in records:
        assert required <= set(r)
        assert r["causal"] is causal and r["device"] == "cpu" and r["dtype"] == "float32"
        runs = not (causal and r["variant"] in ("linformer", "nystrom"))
        if not runs:
            assert r["fwd_ms"] is None and "cannot be causal" in r["skipped"]
            continue
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["peak_mem_mb"] >= 0
        if r["variant"] in APPROXIMATIONS:  # causal heat with the Taylor basis at
            assert 0 <= r["rel_error"] < math.inf   # rank 8 is far off at tiny n (README)
        if r["variant"] == "heat":
            assert r["fit"]["degree"] == r["params"]["rank"] + (4 if r["params"]["basis"] == "svd" else 0)
            assert r["implementation"] == "fused"
    heat_svd = [r for r in records if r["label"] == "heat svd r8"]
    assert all(r["rel_error"] < 1e-2 for r in heat_svd)
    table = bench.format_table(records)
    assert "softmax (SDPA)" in table and "| 64 |" in table


def test_hopeless_sizes_are_skipped_with_a_reason(tmp_path):
    args = parse("--lengths", "64", "--variants", "softmax,hadamard", "--repeats", "1",
                 "--memory-budget-gb", "0.0001")
    records = bench.run(args)
    hadamard = next(r for r in records if r["variant"] == "hadamard")
    assert hadamard["fwd_ms"] is None
    assert "exceeds --memory-budget-gb" in hadamard["skipped"]


def test_unknown_variant_is_rejected():
    with pytest.raises(SystemExit, match="unknown variant 'flash'"):
        bench.build_cases(parse("--variants", "softmax,flash"))


def test_the_cli_runs_the_bench(tmp_path, capsys):
    from pipeline.cli import main

    out = tmp_path / "cli.json"
    assert main(["bench", "attention", "--lengths", "16", "--repeats", "1", "--heads", "1",
                 "--head-dim", "8", "--variants", "softmax,heat,taylor", "--out", str(out)]) == 0
    assert {r["variant"] for r in json.loads(out.read_text())} == {"softmax", "heat", "taylor"}
    assert "| 16 |" in capsys.readouterr().out


def test_memory_is_measured_after_every_timing(monkeypatch):
    """The CPU peak-memory probe switches glibc to returning freed memory at once, which slows
    every later allocation: no timing may follow it."""
    events: list[str] = []
    timed, enter = bench.measurement._timed, bench.PeakMemory.__enter__
    monkeypatch.setattr(bench.measurement, "_timed",
                        lambda *a: events.append("time") or timed(*a))
    monkeypatch.setattr(bench.PeakMemory, "__enter__",
                        lambda self: events.append("memory") or enter(self))
    bench.run(parse("--lengths", "16,32", "--variants", "softmax,heat", "--heads", "1",
                    "--head-dim", "8", "--repeats", "1", "--warmup", "0"))
    assert events.count("memory") == 4 and events.count("time") == 8
    assert events.index("memory") > max(i for i, e in enumerate(events) if e == "time")


def test_timing_order_rotates_from_repeat_to_repeat(monkeypatch):
    """No case always runs first: repeat r starts at case r mod the number of cases."""
    calls = []
    original = bench.measurement.rotated
    monkeypatch.setattr(bench.measurement, "rotated",
                        lambda items, by: calls.append(
                            [c.label for c, _ in original(items, by)]) or original(items, by))
    bench.run(parse("--lengths", "16", "--variants", "softmax,hadamard,heat", "--heads", "1",
                    "--head-dim", "8", "--repeats", "3", "--warmup", "0"))
    assert calls == [["softmax (SDPA)", "hadamard", "heat svd r8"],
                     ["hadamard", "heat svd r8", "softmax (SDPA)"],
                     ["heat svd r8", "softmax (SDPA)", "hadamard"]]
    assert bench.measurement.rotated([], 3) == []


def test_cpu_peak_memory_counts_what_one_step_allocates():
    """After the timings have left freed blocks in the heap, one forward+backward at b=1, h=8,
    n=2048, d=64 must still show at least its three input gradients (4 MiB each)."""
    records = bench.run(parse("--lengths", "1024,2048", "--variants", "softmax,heat",
                              "--repeats", "2", "--error-max-n", "0"))
    peaks = [r["peak_mem_mb"] for r in records if r["n"] == 2048]
    assert len(peaks) == 2 and min(peaks) >= 12, peaks


def test_cases_come_from_the_registry_and_the_sweep_flags():
    """Default: every registered variant, softmax first, each at its sweeps' defaults; a sweep
    flag per swept spec field, the cases their product in the order of the spec's sweeps."""
    from heat.attention import LinformerSpec

    assert [c.label for c in bench.build_cases(parse())] == [
        "softmax (SDPA)", "linformer k256", "nystrom l64", "hadamard", "heat svd r8", "taylor p2"]
    cases = bench.build_cases(parse(
        "--lengths", "32,64", "--variants", "heat,taylor,linformer,softmax",
        "--heat-ranks", "4,8", "--heat-implementations", "auto,folded",
        "--taylor-orders", "2,4", "--taylor-feature-dims", "0,4", "--linformer-ranks", "16,128"))
    assert [c.label for c in cases] == [
        "softmax (SDPA)", "heat svd r4 auto", "heat svd r4 folded", "heat svd r8 auto",
        "heat svd r8 folded", "taylor p2", "taylor p2 f4", "taylor p4", "taylor p4 f4",
        "linformer k16", "linformer k64"]
    assert cases[-1].spec == LinformerSpec(rank=64, max_length=64)  # fits the longest n
    assert cases[1].params["implementation"] == "auto" and cases[2].params["rank"] == 4
    with pytest.raises(SystemExit):
        parse("--taylor-feature-dims", "-1")
