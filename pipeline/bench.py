"""`heat-pipeline bench attention`: time, memory and accuracy of every attention variant.

For each sequence length n and each variant configuration (ranks, orders, landmarks from the
command line) it measures, side by side in one process, the median forward time (no autograd),
the median forward+backward time, the peak memory of one forward+backward above what was held
before it (measured after the timings), and the relative output error against the exact counterpart (`heat` against
`hadamard`, the others against softmax) on the same inputs. Repeats are interleaved across
variants (repeat 1 of every variant, then repeat 2, ...) so drifting load on a shared machine hits
all of them alike; ratios are therefore more trustworthy than absolute times.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` minus what was allocated before. On the
CPU, the resident-set high-water mark (Linux `VmHWM`, reset through `/proc/self/clear_refs`) minus
the resident set before; null with a reason elsewhere.

Output: a JSON list of records `{"variant", "params", "n", "causal", "device", "dtype", "fwd_ms",
"fwd_bwd_ms", "peak_mem_mb", "rel_error", ...}`; a value that could not be measured is null and
`skipped` (or `error_skipped`) says why. Optional plot: time against n, log-log, one line per
variant configuration, SDPA as the reference, the crossover marked.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from heat.attention import build_attention, spec_from_dict, spec_to_dict

logger = logging.getLogger(__name__)

REFERENCE = "softmax"
EXACT_COUNTERPART = {"heat": "hadamard", "taylor": REFERENCE, "linformer": REFERENCE,
                     "nystrom": REFERENCE}


@dataclass
class Case:
    """One variant configuration: its spec and a label for tables and plots."""

    spec: Any
    label: str
    kernel: Any = field(default=None, repr=False)

    @property
    def variant(self) -> str:
        return self.spec.name

    @property
    def params(self) -> dict[str, Any]:
        raw = spec_to_dict(self.spec)
        raw.pop("name")
        return raw


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _words(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of `heat-pipeline bench attention`."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--lengths", type=_ints, default=[256, 512, 1024, 2048, 4096, 8192],
                        help="sequence lengths n = m, comma-separated")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--causal", action="store_true", help="causal attention (causal variants)")
    parser.add_argument("--variants", type=_words,
                        default=["softmax", "linformer", "nystrom", "hadamard", "heat", "taylor"],
                        help="which variants, comma-separated")
    parser.add_argument("--heat-ranks", type=_ints, default=[8])
    parser.add_argument("--heat-bases", type=_words, default=["svd"])
    parser.add_argument("--heat-implementations", type=_words, default=["auto"],
                        help="auto, fused, folded, features (compare them side by side)")
    parser.add_argument("--taylor-orders", type=_ints, default=[2])
    parser.add_argument("--taylor-feature-dims", type=lambda t: [int(x) for x in t.split(",")],
                        default=[0], help="0 = the head dimension")
    parser.add_argument("--linformer-ranks", type=_ints, default=[256])
    parser.add_argument("--nystrom-landmarks", type=_ints, default=[64])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--error-max-n", type=int, default=2048,
                        help="relative errors only up to this n (the exact counterparts are O(n^2))")
    parser.add_argument("--max-call-seconds", type=float, default=20.0,
                        help="skip a variant at larger n once one call is predicted to take longer")
    parser.add_argument("--memory-budget-gb", type=float, default=8.0,
                        help="skip a variant at n where its predicted memory exceeds this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--plot", type=Path, default=None, help="PNG file to write")


def build_cases(args: argparse.Namespace) -> list[Case]:
    """The variant configurations the arguments ask for, softmax (SDPA) first."""
    cases: list[Case] = []
    max_n = max(args.lengths)
    for name in args.variants:
        if name == "softmax":
            cases.append(Case(spec_from_dict({"name": "softmax"}), "softmax (SDPA)"))
        elif name == "hadamard":
            cases.append(Case(spec_from_dict({"name": "hadamard"}), "hadamard"))
        elif name == "heat":
            for basis in args.heat_bases:
                for rank in args.heat_ranks:
                    for impl in args.heat_implementations:
                        spec = spec_from_dict({"name": "heat", "rank": rank, "basis": basis,
                                               "implementation": impl})
                        suffix = "" if len(args.heat_implementations) == 1 else f" {impl}"
                        cases.append(Case(spec, f"heat {basis} r{rank}{suffix}"))
        elif name == "taylor":
            for order in args.taylor_orders:
                for f in args.taylor_feature_dims:
                    spec = spec_from_dict({"name": "taylor", "order": order, "feature_dim": f})
                    cases.append(Case(spec, f"taylor p{order}" + (f" f{f}" if f else "")))
        elif name == "linformer":
            for rank in args.linformer_ranks:
                spec = spec_from_dict({"name": "linformer", "rank": min(rank, max_n),
                                       "max_length": max_n})
                cases.append(Case(spec, f"linformer k{rank}"))
        elif name == "nystrom":
            for landmarks in args.nystrom_landmarks:
                spec = spec_from_dict({"name": "nystrom", "landmarks": landmarks})
                cases.append(Case(spec, f"nystrom l{landmarks}"))
        else:
            raise SystemExit(f"--variants: unknown variant {name!r}")
    cases.sort(key=lambda case: case.variant != REFERENCE)
    return cases


# ---------------------------------------------------------------------------- measurement


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


def _predicted_bytes(case: Case, args, n: int, itemsize: int) -> float:
    """A coarse upper estimate of what one forward+backward holds, to skip hopeless sizes."""
    rows = args.batch * args.heads
    if case.variant == "hadamard":  # (chunk, m, d) logits, softmax and grads per chunk
        return 4.0 * rows * min(case.spec.chunk_size, n) * n * args.head_dim * itemsize
    if case.variant == "taylor":
        from heat.attention.taylor import feature_count

        features = feature_count(case.spec.feature_dim or args.head_dim, case.spec.order)
        return 4.0 * rows * n * features * itemsize
    return 16.0 * rows * n * args.head_dim * itemsize * 8


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tqdm import tqdm

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cases = build_cases(args)
    exact = {"hadamard": spec_from_dict({"name": "hadamard"}),
             "softmax": spec_from_dict({"name": "softmax"})}
    for case in cases:
        torch.manual_seed(args.seed)
        case.kernel = build_attention(case.spec, head_dim=args.head_dim, num_heads=args.heads)
        case.kernel.to(device=device, dtype=dtype)  # learned projections in the input dtype
    exact_kernels = {name: build_attention(spec, head_dim=args.head_dim, num_heads=args.heads)
                     for name, spec in exact.items()}
    memory = PeakMemory(device)
    env = {"device": device.type, "dtype": str(dtype).removeprefix("torch."),
           "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                           else _cpu_name()),
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "batch": args.batch, "heads": args.heads, "head_dim": args.head_dim}
    records: list[dict[str, Any]] = []
    last_ms: dict[str, tuple[int, float]] = {}
    progress = tqdm(total=len(args.lengths) * len(cases), desc="bench attention", unit="case")
    measured: list[tuple[int, list[tuple[Case, dict[str, Any]]]]] = []
    for n in args.lengths:
        live: list[tuple[Case, dict[str, Any]]] = []
        for case in cases:
            record = {"variant": case.variant, "label": case.label, "params": case.params, "n": n,
                      "causal": args.causal, **env, "fwd_ms": None, "fwd_bwd_ms": None,
                      "peak_mem_mb": None, "rel_error": None}
            if case.variant == "heat":
                from heat.attention.exp_basis import fit_report

                s = case.spec
                record["fit"] = fit_report(s.basis, s.bound, s.sigma, s.rank, s.quadrature_nodes)
                record["implementation"] = case.kernel.implementation_for(device, args.causal)
            reason = _skip_reason(case, args, n, dtype, last_ms.get(case.label))
            if reason:
                record["skipped"] = reason
                records.append(record)
                progress.update()
                continue
            live.append((case, record))
        measured.append((n, _measure(live, args, n, device, dtype, exact_kernels, progress)))
        for case, record in live:
            if record["fwd_bwd_ms"] is not None:
                last_ms[case.label] = (n, record["fwd_bwd_ms"])
            records.append(record)
    progress.close()
    # Memory after every timing: on the CPU it switches the allocator to returning freed
    # memory at once (see PeakMemory), which would slow every later allocation.
    try:
        for n, ok in measured:
            _measure_memory(ok, args, n, device, dtype, memory)
    finally:
        memory.close()
    _add_ratios(records)
    _add_bandwidth(records, device)
    return records


def _skip_reason(case: Case, args, n: int, dtype: torch.dtype, last: tuple[int, float] | None):
    if args.causal and not type(case.kernel).capabilities.causal:
        return f"{case.variant} cannot be causal"
    if case.variant == "linformer" and n > case.spec.max_length:
        return f"linformer max_length {case.spec.max_length} < n"
    predicted = _predicted_bytes(case, args, n, torch.finfo(dtype).bits // 8)
    if predicted > args.memory_budget_gb * 2**30:
        return (f"predicted memory {predicted / 2**30:.1f} GiB exceeds --memory-budget-gb "
                f"{args.memory_budget_gb}")
    if last is not None:
        prev_n, prev_ms = last
        exponent = 2 if case.variant in ("softmax", "hadamard") else 1
        predicted_ms = prev_ms * (n / prev_n) ** exponent
        if predicted_ms > args.max_call_seconds * 1e3:
            return (f"predicted {predicted_ms / 1e3:.0f} s per call from n={prev_n} exceeds "
                    f"--max-call-seconds {args.max_call_seconds}")
    return None


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


def _measure(live, args, n, device, dtype, exact_kernels, progress):
    """Fill in the errors and timings (repeats interleaved across cases) of the cases that run
    at this n; returns those that ran, for `_measure_memory`."""
    q, k, v, forward, forward_backward = _runners(args, n, device, dtype)
    references: dict[str, torch.Tensor] = {}

    for case, record in live:
        try:
            for _ in range(args.warmup):
                forward_backward(case)
            if case.variant in EXACT_COUNTERPART:
                if n > args.error_max_n:
                    record["error_skipped"] = f"n > --error-max-n {args.error_max_n}"
                else:
                    counterpart = EXACT_COUNTERPART[case.variant]
                    if counterpart not in references:
                        with torch.no_grad():
                            references[counterpart] = exact_kernels[counterpart].to(device)(
                                q.double(), k.double(), v.double(), causal=args.causal)
                    with torch.no_grad():
                        out = case.kernel(q, k, v, causal=args.causal)
                    record["rel_error"] = _relative_error(out, references[counterpart])
            record["_ok"] = True
        except (RuntimeError, MemoryError) as error:  # e.g. out of memory at this n
            record["skipped"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
    ok = [(case, record) for case, record in live if record.pop("_ok", False)]
    times: dict[str, dict[str, list[float]]] = {c.label: {"fwd": [], "fwd_bwd": []} for c, _ in ok}
    for _ in range(args.repeats):
        for case, _record in ok:
            times[case.label]["fwd"].append(_timed(lambda: forward(case), device))
            times[case.label]["fwd_bwd"].append(_timed(lambda: forward_backward(case), device))
    for case, record in live:
        if case.label in times:
            record["fwd_ms"] = statistics.median(times[case.label]["fwd"])
            record["fwd_bwd_ms"] = statistics.median(times[case.label]["fwd_bwd"])
        progress.update()
        progress.set_postfix(n=n, last=case.label)
    return ok


def _measure_memory(ok, args, n, device, dtype, memory: PeakMemory) -> None:
    """Peak memory of one forward+backward per case at this n."""
    *_, forward_backward = _runners(args, n, device, dtype)
    for case, record in ok:
        with memory:
            forward_backward(case)
        record["peak_mem_mb"] = memory.peak
        if memory.peak is None:
            record["peak_mem_skipped"] = memory.reason


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


def _add_bandwidth(records: list[dict[str, Any]], device: torch.device) -> None:
    """For the linear-time variants on CUDA: the least traffic one forward+backward can do (read
    q, k, v; write the output; read them and the output gradient; write three gradients: 11
    tensors of (B, H, n, d)) over the measured time, against the device's peak."""
    if device.type != "cuda":
        return
    peak = _peak_gbps(device)
    for r in records:
        if r["variant"] != "heat" or not r["fwd_bwd_ms"]:
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


# ---------------------------------------------------------------------------- reporting


def format_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per n, one column per variant configuration; fwd+bwd ms (speed-up
    against SDPA) and peak MiB."""
    labels = list(dict.fromkeys(r["label"] for r in records))
    lengths = sorted({r["n"] for r in records})
    cell = {(r["label"], r["n"]): r for r in records}
    head = "| n | " + " | ".join(labels) + " |"
    lines = [head, "|---" * (len(labels) + 1) + "|"]
    for n in lengths:
        row = [str(n)]
        for label in labels:
            r = cell.get((label, n))
            if r is None or r["fwd_bwd_ms"] is None:
                row.append("-")
                continue
            text = f"{r['fwd_bwd_ms']:.1f} ms"
            if r["variant"] != REFERENCE and r.get("speedup_vs_sdpa"):
                text += f" ({r['speedup_vs_sdpa']:.1f}x)"
            if r["peak_mem_mb"] is not None:
                text += f", {r['peak_mem_mb']:.0f} MiB"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    errors = [r for r in records if r["rel_error"] is not None]
    if errors:
        lines.append("")
        lines.append("Relative output error against the exact counterpart (largest n measured): "
                     + ", ".join(f"{label} {_last_error(errors, label):.1e}"
                                 for label in labels if _last_error(errors, label) is not None))
    return "\n".join(lines)


def _last_error(errors: list[dict[str, Any]], label: str) -> float | None:
    mine = [r for r in errors if r["label"] == label]
    return max(mine, key=lambda r: r["n"])["rel_error"] if mine else None


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Time (fwd+bwd) and peak memory against n, log-log; SDPA dashed; crossovers marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["label"] for r in records))
    reference = {r["n"]: r["fwd_bwd_ms"] for r in records
                 if r["variant"] == REFERENCE and r["fwd_bwd_ms"]}
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(13, 5))
    for label in labels:
        mine = sorted((r for r in records if r["label"] == label and r["fwd_bwd_ms"]),
                      key=lambda r: r["n"])
        if not mine:
            continue
        is_ref = mine[0]["variant"] == REFERENCE
        style = dict(color="black", linestyle="--", linewidth=2) if is_ref else {}
        xs = [r["n"] for r in mine]
        line, = ax_time.plot(xs, [r["fwd_bwd_ms"] for r in mine], marker="o", label=label, **style)
        mem = [(r["n"], r["peak_mem_mb"]) for r in mine if r["peak_mem_mb"]]
        if mem:
            ax_mem.plot(*zip(*mem), marker="o", label=label, color=line.get_color(),
                        linestyle=style.get("linestyle", "-"))
        if not is_ref:
            crossing = next((r for r in mine if reference.get(r["n"])
                             and r["fwd_bwd_ms"] < reference[r["n"]]), None)
            if crossing is not None:
                ax_time.scatter([crossing["n"]], [crossing["fwd_bwd_ms"]], s=160,
                                facecolors="none", edgecolors=line.get_color(), linewidths=2)
    first = records[0]
    title = (f"{first['device_name']} ({first['device']}, {first['dtype']}), b={first['batch']} "
             f"h={first['heads']} d={first['head_dim']}, "
             f"{'causal' if first['causal'] else 'non-causal'}")
    ax_time.set(xscale="log", yscale="log", xlabel="sequence length n",
                ylabel="forward + backward, median ms",
                title="time (circle: first n faster than SDPA)")
    ax_mem.set(xscale="log", yscale="log", xlabel="sequence length n",
               ylabel="peak memory above baseline, MiB", title="memory")
    for ax in (ax_time, ax_mem):
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xscale("log", base=2)
    ax_time.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    records = run(args)
    print(format_table(records))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=1, default=_json_default) + "\n")
        print(f"\nwrote {args.out}")
    if args.plot:
        plot(records, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {value!r}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench")
    configure(parser)
    raise SystemExit(main(parser.parse_args()))
