"""A benchmark run: every case at every n, skipping hopeless sizes, then the derived numbers."""

from __future__ import annotations

import argparse
import platform
import re
from pathlib import Path
from typing import Any

import torch

from heat.attention import build_attention
from heat.validation import ConfigError
from pipeline.bench.cases import REFERENCE, Case, build_cases, flag_for, spec_error
from pipeline.bench.checks import BenchArgumentError, check_device
from pipeline.bench.measurement import PeakMemory, measure, measure_memory


def run(args: argparse.Namespace, cases: list[Case] | None = None) -> list[dict[str, Any]]:
    """Bench `cases` (default: `build_cases(args)`) at every n of `args.lengths`. A kernel that
    cannot be built or run as asked is a `BenchArgumentError`, before any timing."""
    from tqdm import tqdm

    check_device(args.device)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cases = build_cases(args) if cases is None else cases
    for case in cases:
        _build_kernel(case, args, device, dtype)
    counterparts = dict.fromkeys(case.spec.exact_counterpart() for case in cases
                                 if not case.spec.is_exact)
    exact_kernels = {spec: build_attention(spec, head_dim=args.head_dim, num_heads=args.heads)
                     for spec in counterparts}
    env = _environment(args, device, dtype)
    records: list[dict[str, Any]] = []
    last_ms: dict[str, tuple[int, float]] = {}
    progress = tqdm(total=len(args.lengths) * len(cases), desc="bench attention", unit="case")
    measured: list[tuple[int, list[tuple[Case, dict[str, Any]]]]] = []
    for n in args.lengths:
        live: list[tuple[Case, dict[str, Any]]] = []
        for case in cases:
            record = {"variant": case.variant, "label": case.label, "params": case.params, "n": n,
                      "causal": args.causal, **env, "fwd_ms": None, "fwd_bwd_ms": None,
                      "peak_mem_mb": None, "rel_error": None,
                      **case.kernel.describe_run(device, causal=args.causal)}
            reason = _skip_reason(case, args, n, dtype, last_ms.get(case.label))
            if reason:
                record["skipped"] = reason
                records.append(record)
                progress.update()
                continue
            live.append((case, record))
        if live:  # no inputs allocated at an n where every case is skipped
            measured.append((n, measure(live, args, n, device, dtype, exact_kernels, progress)))
        for case, record in live:
            if record["fwd_bwd_ms"] is not None:
                last_ms[case.label] = (n, record["fwd_bwd_ms"])
            records.append(record)
    progress.close()
    _measure_all_memory(measured, args, device, dtype)
    _add_ratios(records)
    _add_bandwidth(records, device, {c.variant for c in cases if c.kernel.bandwidth_bound})
    return records


def _build_kernel(case: Case, args, device: torch.device, dtype: torch.dtype) -> None:
    """Build `case.kernel` on `device` and ask it how it would run (e.g. heat's fused path:
    an error where it is unavailable), reporting a failure as the argument that asked for it."""
    try:
        torch.manual_seed(args.seed)
        case.kernel = build_attention(case.spec, head_dim=args.head_dim, num_heads=args.heads)
        case.kernel.to(device=device, dtype=dtype)  # learned projections in the input dtype
        case.kernel.describe_run(device, causal=args.causal)
    except ConfigError as error:
        raise spec_error(case.variant, error) from None
    except (RuntimeError, ValueError) as error:  # e.g. 'heat.implementation=fused: ...'
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        named = re.match(rf"{re.escape(case.variant)}\.(\w+)", message)
        flag = flag_for(case.variant, named.group(1)) if named else "--variants"
        raise BenchArgumentError(flag, f"{case.label}: {message}") from None


def _measure_all_memory(measured, args, device: torch.device, dtype: torch.dtype) -> None:
    """Memory after every timing: on the CPU it switches the allocator to returning freed
    memory at once (see PeakMemory), which would slow every later allocation."""
    memory = PeakMemory(device)
    try:
        for n, ok in measured:
            if ok:
                measure_memory(ok, args, n, device, dtype, memory)
    finally:
        memory.close()


def _environment(args, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {"device": device.type, "dtype": str(dtype).removeprefix("torch."),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else _cpu_name()),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "batch": args.batch, "heads": args.heads, "head_dim": args.head_dim}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _skip_reason(case: Case, args, n: int, dtype: torch.dtype, last: tuple[int, float] | None):
    kernel_cls = type(case.kernel)
    if args.causal and not kernel_cls.capabilities.causal:
        return f"{case.variant} cannot be causal"
    if kernel_cls.capabilities.fixed_max_length and n > case.spec.max_length:
        return f"{case.variant} max_length {case.spec.max_length} < n"
    predicted = case.kernel.estimated_bytes(batch=args.batch, n=n,
                                            itemsize=torch.finfo(dtype).bits // 8)
    if predicted > args.memory_budget_gb * 2**30:
        return (f"predicted memory {predicted / 2**30:.1f} GiB exceeds --memory-budget-gb "
                f"{args.memory_budget_gb}")
    if last is not None:
        prev_n, prev_ms = last
        predicted_ms = prev_ms * (n / prev_n) ** kernel_cls.time_exponent
        if predicted_ms > args.max_call_seconds * 1e3:
            return (f"predicted {predicted_ms / 1e3:.0f} s per call from n={prev_n} exceeds "
                    f"--max-call-seconds {args.max_call_seconds}")
    return None


PEAK_GBPS_BY_NAME = {"H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H100 NVL": 3900.0,
                     "H200": 4800.0, "A100-SXM4-80GB": 2039.0, "A100-SXM4-40GB": 1555.0}


def _peak_gbps(device: torch.device) -> float | None:
    """The device's peak memory bandwidth: from its properties where torch reports the memory
    clock and bus width, else from a table of data-sheet values."""
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = (getattr(props, "memory_clock_rate", 0),
                           getattr(props, "memory_bus_width", 0))
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate
    return next((gbps for name, gbps in PEAK_GBPS_BY_NAME.items() if name in props.name), None)


def _add_bandwidth(records: list[dict[str, Any]], device: torch.device,
                   variants: set[str]) -> None:
    """For the bandwidth-bound variants (`AttentionKernel.bandwidth_bound`) on CUDA: the least
    traffic one forward+backward can do (read q, k, v; write the output; read them and the output
    gradient; write three gradients: 11 tensors of (B, H, n, d)) over the measured time, against
    the device's peak."""
    if device.type != "cuda":
        return
    peak = _peak_gbps(device)
    for r in records:
        if r["variant"] not in variants or not r["fwd_bwd_ms"]:
            continue
        itemsize = 2 if r["dtype"] == "bfloat16" else 4
        tensor = r["batch"] * r["heads"] * r["n"] * r["head_dim"] * itemsize
        r["min_bytes_fwd_bwd"] = 11 * tensor
        r["achieved_gbps"] = 11 * tensor / (r["fwd_bwd_ms"] * 1e-3) / 1e9
        r["peak_gbps"] = peak
        r["fraction_of_peak"] = r["achieved_gbps"] / peak if peak else None


def _add_ratios(records: list[dict[str, Any]]) -> None:
    """speedup_vs_sdpa: the SDPA fwd+bwd median at the same n divided by this one."""
    reference = {r["n"]: r["fwd_bwd_ms"] for r in records
                 if r["variant"] == REFERENCE and r["fwd_bwd_ms"]}
    for r in records:
        ref = reference.get(r["n"])
        r["speedup_vs_sdpa"] = ref / r["fwd_bwd_ms"] if ref and r["fwd_bwd_ms"] else None
