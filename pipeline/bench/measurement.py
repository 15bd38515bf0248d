"""Measuring one n: errors against the exact counterparts, interleaved timings, peak memory.

Repeats are interleaved across cases (repeat 1 of every case, then repeat 2, ...) so drifting load
on a shared machine hits all of them alike, and the order rotates from repeat to repeat (A B C,
B C A, C A B, ...) so no case always runs first or right after the same neighbour. Peak memory
is measured after every timing: on the CPU it switches the allocator to returning freed memory
at once (see `PeakMemory`), which would slow every later allocation.
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.bench.cases import Case

logger = logging.getLogger(__name__)


class PeakMemory:
    """Peak memory of a block above what was held when it started, in MiB (None if unknown)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reason: str | None = None
        self._malloc_fixed = False
        if device.type == "cpu":
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self._status("VmHWM")
            except OSError as error:
                self.reason = f"no resettable peak RSS on this OS ({error})"

    def _return_freed_memory(self) -> None:
        """glibc keeps freed blocks below a dynamic mmap threshold (up to 32 MiB) in its heap,
        so a second run of the same code would not raise the RSS at all. A fixed 64 KiB
        threshold makes every tensor its own mapping, returned on free. It also slows
        allocation, which is why every timing is taken before the first memory measurement."""
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            if not self._malloc_fixed:
                libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
                libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD: trim the heap top at once
                self._malloc_fixed = True
            # Free blocks left in the heaps (of every arena: the kernels' threads have their
            # own) are still resident and would serve the next allocations without raising
            # the RSS: give their pages back before each measurement.
            libc.malloc_trim(0)
        except (OSError, AttributeError) as error:
            logger.warning("cannot tune malloc (%s): CPU peak memory may read low", error)

    def close(self) -> None:
        """Back to glibc's default thresholds (a caller that goes on, such as a test session,
        then allocates at full speed again; the thresholds stay fixed, not dynamic)."""
        if self._malloc_fixed:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD default
            libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD default
            self._malloc_fixed = False

    @staticmethod
    def _status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise OSError(f"{key} not in /proc/self/status")

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        elif self.reason is None:
            self._return_freed_memory()
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self._start = self._status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = (torch.cuda.max_memory_allocated() - self._start) / 2**20
        elif self.reason is None:
            self.peak = max(0, self._status("VmHWM") - self._start) / 2**20
        else:
            self.peak = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def _inputs(args, n: int, device: torch.device, dtype: torch.dtype, grad: bool):
    generator = torch.Generator(device="cpu").manual_seed(args.seed + n)
    shape = (args.batch, args.heads, n, args.head_dim)
    return [torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
            .requires_grad_(grad) for _ in range(3)]


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm())


def _runners(args, n: int, device: torch.device, dtype: torch.dtype):
    """(q, k, v, forward, forward_backward) on this n's inputs."""
    q, k, v = _inputs(args, n, device, dtype, grad=True)
    grad_out = torch.randn_like(q)

    def forward(case: Case) -> None:
        with torch.no_grad():
            case.kernel(q, k, v, causal=args.causal)

    def forward_backward(case: Case) -> None:
        out = case.kernel(q, k, v, causal=args.causal)
        out.backward(grad_out)
        q.grad = k.grad = v.grad = None
        for p in case.kernel.parameters():
            p.grad = None

    return q, k, v, forward, forward_backward


def measure(live, args, n, device, dtype, exact_kernels, progress):
    """Fill in the errors and timings (repeats interleaved across cases) of the cases that run
    at this n; returns those that ran, for `measure_memory`. `exact_kernels` maps each exact
    counterpart spec of the approximations to its kernel."""
    q, k, v, forward, forward_backward = _runners(args, n, device, dtype)
    references: dict[Any, torch.Tensor] = {}

    def reference(spec) -> torch.Tensor:
        if spec not in references:
            with torch.no_grad():
                references[spec] = exact_kernels[spec].to(device)(
                    q.double(), k.double(), v.double(), causal=args.causal)
        return references[spec]

    for case, record in live:
        try:
            for _ in range(args.warmup):
                forward_backward(case)
            counterpart = case.spec.exact_counterpart()
            if counterpart != case.spec:
                if n > args.error_max_n:
                    record["error_skipped"] = f"n > --error-max-n {args.error_max_n}"
                else:
                    with torch.no_grad():
                        out = case.kernel(q, k, v, causal=args.causal)
                    record["rel_error"] = _relative_error(out, reference(counterpart))
            record["_ok"] = True
        except (RuntimeError, MemoryError) as error:  # e.g. out of memory at this n
            record["skipped"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
    ok = [(case, record) for case, record in live if record.pop("_ok", False)]
    _time_interleaved(ok, live, args, n, device, forward, forward_backward, progress)
    return ok


def _time_interleaved(ok, live, args, n, device, forward, forward_backward, progress) -> None:
    times: dict[str, dict[str, list[float]]] = {c.label: {"fwd": [], "fwd_bwd": []} for c, _ in ok}
    for repeat in range(args.repeats):
        for case, _record in rotated(ok, repeat):
            times[case.label]["fwd"].append(_timed(lambda: forward(case), device))
            times[case.label]["fwd_bwd"].append(_timed(lambda: forward_backward(case), device))
    for case, record in live:
        if case.label in times:
            record["fwd_ms"] = statistics.median(times[case.label]["fwd"])
            record["fwd_bwd_ms"] = statistics.median(times[case.label]["fwd_bwd"])
        progress.update()
        progress.set_postfix(n=n, last=case.label)


def rotated(items: list, by: int) -> list:
    """`items` started at position `by` (mod its length): repeat r's order of the cases."""
    if not items:
        return items
    by %= len(items)
    return items[by:] + items[:by]


def measure_memory(ok, args, n, device, dtype, memory: PeakMemory) -> None:
    """Peak memory of one forward+backward per case at this n."""
    *_, forward_backward = _runners(args, n, device, dtype)
    for case, record in ok:
        with memory:
            forward_backward(case)
        record["peak_mem_mb"] = memory.peak
        if memory.peak is None:
            record["peak_mem_skipped"] = memory.reason
