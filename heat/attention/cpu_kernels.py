"""Fused CPU kernels for folded HEAT (`csrc/folded_heat.cpp`) and exact hadamard (`csrc/hadamard.cpp`,
wrapped by `cpu_hadamard`): one library, built on first use, called by ctypes.

Why not eager PyTorch: the folded form does O(P) work per element, but eager PyTorch spends it
in ~P separate passes over (B, H, n, d) tensors and autograd keeps every intermediate; the fused
kernels read q, k, v and write the output once per pass, with a hand-written backward.

Why ctypes and not a torch C++ extension: the kernel file needs no PyTorch headers, so it compiles
with the system C++ compiler in a few seconds (a torch extension takes minutes on 2 cores), and the
same build works against any torch version. The shared library is cached under
`$HEAT_KERNEL_CACHE` (default `~/.cache/heat-attention`), keyed by a hash of the source, the
compiler flags and the CPU's instruction-set flags, so a shared home on a mixed cluster gets one
build per CPU type. ctypes releases the GIL during each call, so a thread pool runs the
independent (row, channel-block) tasks on `torch.get_num_threads()` threads.

`HEAT_CPU_KERNELS=0` disables the kernels (the eager folded path is used); a failed build logs one
warning and falls back the same way.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from heat.attention.input_norm import RMS_EPS

logger = logging.getLogger(__name__)

SOURCES = (Path(__file__).parent / "csrc" / "folded_heat.cpp",
           Path(__file__).parent / "csrc" / "hadamard.cpp",
           Path(__file__).parent / "csrc" / "input_norm.cpp")
"""Compiled into one library: folded HEAT's kernels, exact hadamard's (`cpu_hadamard`) and the
rms input norm in front of HEAT's (`input_norm: rms`)."""
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp-simd", "-ffp-contract=fast", "-std=c++17",
         "-shared", "-fPIC"]
ABI_VERSION = 6

I64 = ctypes.c_int64
_build_lock = threading.Lock()


class KernelUnavailable(RuntimeError):
    """The fused CPU kernels cannot be built or loaded here (the reason is the message)."""


def _cpu_signature() -> str:
    """The CPU's instruction-set flags: a library built with -march=native is only valid there."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _disabled() -> bool:
    """HEAT_CPU_KERNELS=0: read at every call (tests and users flip it at run time)."""
    return os.environ.get("HEAT_CPU_KERNELS", "1") == "0"


def _library_path() -> Path:
    compiler = os.environ.get("CXX", "c++")
    key = hashlib.sha256(
        b"".join(source.read_bytes() for source in SOURCES)
        + " ".join([compiler, *FLAGS, _cpu_signature()]).encode()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("HEAT_KERNEL_CACHE", Path.home() / ".cache" / "heat-attention"))
    return cache / f"folded_heat-{key}.so"


def _build(target: Path) -> None:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelUnavailable(f"no C++ compiler ({compiler!r} not on PATH; set CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # build to a temporary name and rename: concurrent processes never load a half-written file
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        logger.info("building the fused HEAT CPU kernels (%s, a few seconds, once)", target.name)
        result = subprocess.run(
            [compiler, *FLAGS, *map(str, SOURCES), "-o", str(partial)], capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise KernelUnavailable(f"{compiler} failed:\n{result.stderr[-2000:]}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


@functools.cache
def library() -> ctypes.CDLL:
    """The loaded kernel library; raises KernelUnavailable (cached) if it cannot be had."""
    if _disabled():
        raise KernelUnavailable("disabled by HEAT_CPU_KERNELS=0")
    path = _library_path()
    with _build_lock:
        if not path.exists():
            _build(path)
    lib = ctypes.CDLL(str(path))
    if lib.heat_kernels_abi_version() != ABI_VERSION:
        raise KernelUnavailable(f"{path} has ABI {lib.heat_kernels_abi_version()}, need {ABI_VERSION}")
    return lib


USERS = frozenset({"heat", "hadamard"})
"""The attention variants whose CPU paths call this library."""


def build_in_background() -> threading.Thread | None:
    """Start building the library in a daemon thread, unless it is built already or disabled.

    A run's driver calls it before its data stages when a variant in `USERS` will train on the
    CPU: the training workers then find the library in the cache, instead of each compiling it
    at its first step (16 s on 2 cores, both ranks at once). A failure is left to the first real
    use, which logs it (`available`)."""
    if _disabled() or _library_path().exists():
        return None

    def build() -> None:
        try:
            library()
        except (KernelUnavailable, OSError):
            pass

    thread = threading.Thread(target=build, name="heat-kernel-build", daemon=True)
    thread.start()
    return thread


def unavailable_reason() -> str | None:
    """Why the kernels cannot run in this process now (None: they can). Unlike `library()`,
    whose outcome is cached, it reads HEAT_CPU_KERNELS at every call."""
    if _disabled():
        return "disabled by HEAT_CPU_KERNELS=0"
    try:
        library()
    except (KernelUnavailable, OSError) as error:
        return str(error).splitlines()[0]
    return None


@functools.cache
def available() -> bool:
    """Whether the fused kernels can run here; logs why not, once."""
    try:
        library()
    except (KernelUnavailable, OSError) as error:
        logger.warning("fused HEAT CPU kernels unavailable, using the eager folded path: %s", error)
        return False
    return True


def max_degree() -> int:
    return library().heat_kernels_max_degree()


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="heat-kernel")


def pointer(x: Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if x is None else x.data_ptr())


def run_tasks(fn, args: list, tasks: int) -> None:
    """Call fn(*args, begin, end, ...) over [0, tasks) split across torch's thread count."""
    threads = max(1, min(torch.get_num_threads(), tasks))
    bounds = [tasks * i // threads for i in range(threads + 1)]
    calls = [(bounds[i], bounds[i + 1]) for i in range(threads) if bounds[i] < bounds[i + 1]]
    if len(calls) == 1:
        fn(*args[0], I64(0), I64(tasks), *args[1])
        return
    futures = [_pool(threads).submit(fn, *args[0], I64(b), I64(e), *args[1]) for b, e in calls]
    for future in futures:
        future.result()


def dtype_suffix(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "f32"
    if dtype == torch.float64:
        return "f64"
    raise TypeError(f"fused HEAT CPU kernels take float32 or float64, got {dtype}")


def _rms_bounded(q: Tensor, k: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(tanh(y_q / R), tanh(y_k / R), s_q, s_k) for y = x s, s = 1 / sqrt(mean(x^2) + eps) per
    row of q (rows, d) and k, contiguous: `csrc/input_norm.cpp` writes y / R in the pass that
    `x / R` would take, both in one dispatch."""
    rows_q, rows_k, d = q.shape[0] * q.shape[1], k.shape[0] * k.shape[1], q.shape[2]
    uq, uk, sq, sk = torch.empty_like(q), torch.empty_like(k), q.new_empty(rows_q), k.new_empty(rows_k)
    run_tasks(getattr(library(), f"heat_rms_scale_{dtype_suffix(q.dtype)}"),
              [[pointer(q), pointer(k), I64(rows_q), I64(d), ctypes.c_double(1.0 / bound),
                ctypes.c_double(RMS_EPS)], [pointer(uq), pointer(uk), pointer(sq), pointer(sk)]],
              rows_q + rows_k)
    return uq.tanh_(), uk.tanh_(), sq, sk


def _rms_grad(gq: Tensor, gk: Tensor, rms: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    """dL/dq, dL/dk from g = dL/dy for y = x s (`_rms_bounded`), written over the g's."""
    q, k, sq, sk = rms
    rows_q, rows_k, d = q.shape[0] * q.shape[1], k.shape[0] * k.shape[1], q.shape[2]
    run_tasks(getattr(library(), f"heat_rms_grad_{dtype_suffix(q.dtype)}"),
              [[pointer(gq), pointer(gk), pointer(q), pointer(k), pointer(sq), pointer(sk),
                I64(rows_q), I64(d)], [pointer(gq), pointer(gk)]], rows_q + rows_k)
    return gq, gk


class _FoldedHeatCPU(torch.autograd.Function):
    """out = folded HEAT(tanh(q / R), tanh(k / R), v) with a hand-written backward for q, k, v.

    The tanh bound is applied here rather than by the caller: its gradient (1 - t^2) / R is
    folded into the kernels' last write, which saves four full passes over q and k. With `rms`
    the queries and keys are first divided by their root mean square per row (`input_norm:
    rms`), in the same pass, and its backward is one more pass over each."""

    @staticmethod
    def forward(ctx, q, k, v, valid, floor, kernel, heads: int, causal: bool, bound: float,
                rms: bool = False, shift_keys: bool = False):
        lib = library()
        if rms:
            q, k = q.contiguous(), k.contiguous()
            tq, tk, scale_q, scale_k = _rms_bounded(q, k, bound)
            ctx.rms = (q, k, scale_q, scale_k)  # not save_for_backward: q, k are inputs
        else:
            tq, tk = torch.tanh(q / bound).contiguous(), torch.tanh(k / bound).contiguous()
            ctx.rms = None
        v = v.contiguous()
        batch_heads, n, d = tq.shape
        m, degree = tk.shape[1], kernel.shape[0]
        shape = [I64(batch_heads), I64(heads), I64(n), I64(m), I64(d), I64(degree),
                 ctypes.c_double(0.0)]
        tasks = batch_heads * -(-d // lib.heat_kernels_block_width())
        common = [pointer(tq), pointer(tk), pointer(v), pointer(valid), pointer(floor), pointer(kernel)]
        out = torch.empty_like(tq)
        suffix = dtype_suffix(tq.dtype)
        if causal:
            run_tasks(getattr(lib, f"heat_causal_fwd_{suffix}"), [common + shape, [pointer(out)]], tasks)
            mixed = ()
        else:
            shift = tq.new_empty(batch_heads, d) if shift_keys else None  # the kernels' u
            mixed = (tq.new_empty(batch_heads, degree, d), tq.new_empty(batch_heads, degree, d))
            run_tasks(  # with a shift the kernel's tasks are rows (see csrc/folded_heat.cpp)
                getattr(lib, f"heat_noncausal_fwd_{suffix}"),
                [common + shape, [pointer(out), *map(pointer, mixed), pointer(shift)]],
                batch_heads if shift_keys else tasks,
            )
            mixed = (*mixed, shift)
        ctx.save_for_backward(tq, tk, v, valid, floor, kernel, *mixed)
        ctx.heads, ctx.causal, ctx.tasks, ctx.bound = heads, causal, tasks, bound
        return out

    @staticmethod
    def backward(ctx, grad):
        lib = library()
        tq, tk, v, valid, floor, kernel, *mixed = ctx.saved_tensors
        grad = grad.contiguous()
        batch_heads, n, d = tq.shape
        m, degree = tk.shape[1], kernel.shape[0]
        shape = [I64(batch_heads), I64(ctx.heads), I64(n), I64(m), I64(d), I64(degree),
                 ctypes.c_double(1.0 / ctx.bound)]  # gradients for q and k, not for t
        common = [pointer(tq), pointer(tk), pointer(v), pointer(valid), pointer(floor), pointer(kernel)]
        dtq, dtk, dv = torch.empty_like(tq), torch.empty_like(tk), torch.empty_like(v)
        suffix = dtype_suffix(tq.dtype)
        if ctx.causal:
            scratch = (torch.empty_like(tq), torch.empty_like(tq))
            run_tasks(
                getattr(lib, f"heat_causal_bwd_{suffix}"),
                [common + [pointer(grad)] + shape,
                 [pointer(dtq), pointer(dtk), pointer(dv), pointer(scratch[0]), pointer(scratch[1])]],
                ctx.tasks,
            )
        else:
            run_tasks(
                getattr(lib, f"heat_noncausal_bwd_{suffix}"),
                [common + [*map(pointer, mixed), pointer(grad)] + shape,
                 [pointer(dtq), pointer(dtk), pointer(dv)]],
                ctx.tasks,
            )
        if ctx.rms is not None:
            dtq, dtk = _rms_grad(dtq, dtk, ctx.rms)
        return dtq, dtk, dv, None, None, None, None, None, None, None, None


def folded_heat_cpu(
    q: Tensor, k: Tensor, v: Tensor, kernel: Tensor, *, bound: float,
    key_valid: Tensor | None, causal: bool, floor: Tensor, input_norm: str = "none",
    key_shift: str = "none",
) -> Tensor:
    """The fused equivalent of `folded.folded_heat` on t = tanh(q / R), tanh(k / R), with
    `input_norm: rms` on t = tanh(rms(q) / R), tanh(rms(k) / R) (`input_norm.normalised`);
    `key_shift: midrange` (non-causal only) shifts each channel's keys by their midrange
    (`heat.key_midrange`), computed inside the kernels.

    q (B, H, n, d), k and v (B, H, m, d), kernel (P, P) symmetric, key_valid (B, m) or None,
    floor (B, n), on the CPU; computed in float64 for float64 inputs, else float32 (the caller
    casts the result back). Returns (B, H, n, d).
    """
    batch, heads, n, d = q.shape
    m = k.shape[2]
    if kernel.shape[0] > max_degree():
        raise ValueError(f"polynomial length {kernel.shape[0]} exceeds the kernels' {max_degree()}")
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    valid = None if key_valid is None else key_valid.to(dtype).contiguous()
    out = _FoldedHeatCPU.apply(
        q.reshape(batch * heads, n, d), k.reshape(batch * heads, m, d),
        v.reshape(batch * heads, m, d), valid, floor.to(dtype).contiguous(),
        kernel.to(dtype).contiguous(), heads, causal, bound, input_norm == "rms",
        key_shift == "midrange" and not causal,
    )
    return out.view(batch, heads, n, d)
