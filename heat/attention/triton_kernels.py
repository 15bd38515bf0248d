"""Fused CUDA kernels for folded HEAT in Triton (non-causal), with a hand-written backward.

The same algebra as `folded.folded_heat` and `csrc/folded_heat.cpp`, laid out for a GPU. Rows are
(batch, head) pairs; every tile is BLOCK positions x all channels of one row. Four kernels:

forward   1. keys     (grid rows x SPLIT): each program walks every SPLIT-th tile and accumulates
                      M_p = sum_j valid_j t_j^p v_j and Z_p = sum_j valid_j t_j^p in registers,
                      then stores its (P, D) partial sums once (no atomics: a first version
                      with one atomic add per tile spent most of its time contending);
          (torch)     sum of the partials and K = C C^T times it: (rows, 2, P, D), tiny;
          2. queries  (grid rows x tiles): out_i = Horner(K M, t_i) / max(Horner(K Z, t_i), floor);
backward  3. queries  (grid rows x SPLIT): dq per tile, and partial sums of
                      dA_p = sum_i t_i^p g_num_i, dB_p likewise;
          (torch)     dM = K dA, dZ = K dB (K is symmetric);
          4. keys     (grid rows x tiles): dv_j = valid_j Horner(dM, t_j), dk_j from the
                      derivatives of both.

t = tanh(x / R) is computed inside (as 2 sigmoid(2x / R) - 1) and its gradient (1 - t^2) / R
applied inside, so q and k are read in their own dtype (bf16 on GPU) and nothing of size (n, d)
is written besides the outputs and gradients. All arithmetic is fp32. Eight launches per forward
and backward keep the per-call CPU cost low, which is what bounds short sequences. Causal
attention on CUDA uses the eager folded path (`heat.attention.fused` routes it).

`TRITON_INTERPRET=1` runs these kernels on the CPU (slowly): the tests use it where no GPU is.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: `available()` says False and nothing below is used
    triton = None

BLOCK = 64
"""Positions per tile of the two elementwise kernels."""
REDUCE_BLOCK, REDUCE_WARPS = 64, 4
"""Tile and warps of the two reducing kernels. Measured on an H100 (b=1, h=8, d=64, n=16384,
bf16): 64/4 took 144 + 200 us for the two kernels; 128/8 151 + 210; 128/4 and 256/8 were
slower still. These two kernels dominate the GPU time (see the README's benchmarks)."""
TARGET_PROGRAMS = 264
"""Programs the two reducing kernels aim for: two per SM of an H100 (132 SMs)."""


@functools.cache
def available() -> bool:
    if triton is None:
        logger.warning("triton is not installed: HEAT on CUDA uses the eager folded path")
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _tanh_bound(x, inv_bound):
        return 2.0 * tl.sigmoid(2.0 * x * inv_bound) - 1.0

    @triton.jit
    def _tile(n, tile, L, D, DP: tl.constexpr, BLOCK_L: tl.constexpr):
        rows = tile * BLOCK_L + tl.arange(0, BLOCK_L)
        cols = tl.arange(0, DP)
        row_ok = rows < L
        mask = row_ok[:, None] & (cols < D)[None, :]
        offsets = (n * L + rows)[:, None] * D + cols[None, :]
        return rows, row_ok, mask, offsets

    @triton.jit
    def _key_weight(valid_ptr, n, H, L, rows, row_ok, HAS_VALID: tl.constexpr):
        keep = row_ok.to(tl.float32)
        if HAS_VALID:
            keep = keep * tl.load(valid_ptr + (n // H) * L + rows, mask=row_ok, other=0.0)
        return keep

    @triton.jit
    def _floor(floor_ptr, floor_value, n, H, L, rows, row_ok, HAS_FLOOR: tl.constexpr):
        """(BLOCK_L, 1): per query from floor_ptr, or floor_value for every query."""
        if HAS_FLOOR:
            floor = tl.load(floor_ptr + (n // H) * L + rows, mask=row_ok, other=1.0)
        else:
            floor = tl.zeros(rows.shape, dtype=tl.float32) + floor_value
        return floor[:, None]

    @triton.jit
    def _accumulate(acc, weights, t, P: tl.constexpr, PP: tl.constexpr):
        """acc[p, :] += sum over the tile's rows of weights * t^p, for p < P."""
        powers = tl.arange(0, PP)[:, None]
        for p in tl.static_range(P):
            acc += tl.where(powers == p, tl.sum(weights, axis=0)[None, :], 0.0)
            weights = weights * t
        return acc

    @triton.jit
    def _store_partial(partial_ptr, acc, n, split, which, SPLITS, PP: tl.constexpr,
                       DP: tl.constexpr):
        """partials: (rows, SPLITS, 2, PP, DP) fp32."""
        offsets = tl.arange(0, PP)[:, None] * DP + tl.arange(0, DP)[None, :]
        tl.store(partial_ptr + ((n * SPLITS + split) * 2 + which) * PP * DP + offsets, acc)

    @triton.jit
    def _horner(mixed_ptr, n, which, t, P: tl.constexpr, PP: tl.constexpr, DP: tl.constexpr,
                WITH_DERIVATIVE: tl.constexpr):
        """sum_p c[p, :] t^p (and its t-derivative) for a (BLOCK_L, DP) tile t, with c the
        row's mixed moments mixed[n, which] (PP, DP); each coefficient row is one cached load."""
        base = mixed_ptr + (n * 2 + which) * PP * DP + tl.arange(0, DP)
        value = tl.load(base + (P - 1) * DP)[None, :] + 0.0 * t
        derivative = 0.0 * t
        for i in tl.static_range(P - 1):
            coefficient = tl.load(base + (P - 2 - i) * DP)
            if WITH_DERIVATIVE:
                derivative = derivative * t + value
            value = value * t + coefficient[None, :]
        return value, derivative

    @triton.jit
    def _key_moments_kernel(k_ptr, v_ptr, valid_ptr, partial_ptr, L, H, D, SPLITS, inv_bound,
                            P: tl.constexpr, PP: tl.constexpr, DP: tl.constexpr,
                            BLOCK_L: tl.constexpr, HAS_VALID: tl.constexpr):
        n, split = tl.program_id(0), tl.program_id(1)
        acc_v = tl.zeros((PP, DP), dtype=tl.float32)
        acc_1 = tl.zeros((PP, DP), dtype=tl.float32)
        for tile in range(split, tl.cdiv(L, BLOCK_L), SPLITS):
            rows, row_ok, mask, offsets = _tile(n, tile, L, D, DP, BLOCK_L)
            x = tl.load(k_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            t = _tanh_bound(x, inv_bound)
            v = tl.load(v_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            keep = _key_weight(valid_ptr, n, H, L, rows, row_ok, HAS_VALID)[:, None]
            acc_v = _accumulate(acc_v, keep * v, t, P, PP)
            acc_1 = _accumulate(acc_1, tl.where(mask, keep, 0.0), t, P, PP)
        _store_partial(partial_ptr, acc_v, n, split, 0, SPLITS, PP, DP)
        _store_partial(partial_ptr, acc_1, n, split, 1, SPLITS, PP, DP)

    @triton.jit
    def _query_forward_kernel(q_ptr, mixed_ptr, floor_ptr, floor_value, out_ptr, L, H, D,
                              inv_bound, P: tl.constexpr, PP: tl.constexpr, DP: tl.constexpr,
                              BLOCK_L: tl.constexpr, HAS_FLOOR: tl.constexpr):
        n = tl.program_id(0)
        rows, row_ok, mask, offsets = _tile(n, tl.program_id(1), L, D, DP, BLOCK_L)
        t = _tanh_bound(tl.load(q_ptr + offsets, mask=mask, other=0.0).to(tl.float32), inv_bound)
        numerator, _ = _horner(mixed_ptr, n, 0, t, P, PP, DP, False)
        normaliser, _ = _horner(mixed_ptr, n, 1, t, P, PP, DP, False)
        floor = _floor(floor_ptr, floor_value, n, H, L, rows, row_ok, HAS_FLOOR)
        out = numerator / tl.maximum(normaliser, floor)
        tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _query_backward_kernel(q_ptr, mixed_ptr, floor_ptr, floor_value, grad_ptr, dq_ptr,
                               grad_partial_ptr, L, H, D, SPLITS, inv_bound, P: tl.constexpr,
                               PP: tl.constexpr, DP: tl.constexpr, BLOCK_L: tl.constexpr,
                               HAS_FLOOR: tl.constexpr):
        n, split = tl.program_id(0), tl.program_id(1)
        acc_num = tl.zeros((PP, DP), dtype=tl.float32)
        acc_den = tl.zeros((PP, DP), dtype=tl.float32)
        for tile in range(split, tl.cdiv(L, BLOCK_L), SPLITS):
            rows, row_ok, mask, offsets = _tile(n, tile, L, D, DP, BLOCK_L)
            x = tl.load(q_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            t = _tanh_bound(x, inv_bound)
            grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            numerator, d_numerator = _horner(mixed_ptr, n, 0, t, P, PP, DP, True)
            normaliser, d_normaliser = _horner(mixed_ptr, n, 1, t, P, PP, DP, True)
            floor = _floor(floor_ptr, floor_value, n, H, L, rows, row_ok, HAS_FLOOR)
            floored = normaliser <= floor
            denominator = tl.where(floored, floor, normaliser)
            g_num = grad / denominator
            g_den = tl.where(floored, 0.0, -g_num * numerator / denominator)
            dq = (g_num * d_numerator + g_den * d_normaliser) * (1.0 - t * t) * inv_bound
            tl.store(dq_ptr + offsets, dq.to(dq_ptr.dtype.element_ty), mask=mask)
            acc_num = _accumulate(acc_num, g_num, t, P, PP)
            acc_den = _accumulate(acc_den, g_den, t, P, PP)
        _store_partial(grad_partial_ptr, acc_num, n, split, 0, SPLITS, PP, DP)
        _store_partial(grad_partial_ptr, acc_den, n, split, 1, SPLITS, PP, DP)

    @triton.jit
    def _key_backward_kernel(k_ptr, v_ptr, valid_ptr, grad_mixed_ptr, dk_ptr, dv_ptr, L, H, D,
                             inv_bound, P: tl.constexpr, PP: tl.constexpr, DP: tl.constexpr,
                             BLOCK_L: tl.constexpr, HAS_VALID: tl.constexpr):
        n = tl.program_id(0)
        rows, row_ok, mask, offsets = _tile(n, tl.program_id(1), L, D, DP, BLOCK_L)
        t = _tanh_bound(tl.load(k_ptr + offsets, mask=mask, other=0.0).to(tl.float32), inv_bound)
        v = tl.load(v_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        keep = _key_weight(valid_ptr, n, H, L, rows, row_ok, HAS_VALID)[:, None]
        value, derivative = _horner(grad_mixed_ptr, n, 0, t, P, PP, DP, True)
        _, z_derivative = _horner(grad_mixed_ptr, n, 1, t, P, PP, DP, True)
        dv = keep * value
        dk = keep * (v * derivative + z_derivative) * (1.0 - t * t) * inv_bound
        tl.store(dv_ptr + offsets, dv.to(dv_ptr.dtype.element_ty), mask=mask)
        tl.store(dk_ptr + offsets, dk.to(dk_ptr.dtype.element_ty), mask=mask)


def _mix(kernel: Tensor, partials: Tensor) -> Tensor:
    """K @ (sum of the partials) for both moments of every row: (rows, 2, PP, DP), contiguous.
    Done once here rather than in every query program, which would each re-read all partials."""
    return torch.matmul(kernel, partials.sum(dim=1)).contiguous()


def _splits(rows: int, length: int) -> int:
    """Programs per row for the reducing kernels: enough to fill the GPU, at most one per tile."""
    return max(1, min(triton.cdiv(TARGET_PROGRAMS, rows), triton.cdiv(length, REDUCE_BLOCK)))


class _FoldedHeatTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, valid, floor, kernel, degree: int, heads: int, bound: float):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        rows, n, d = q.shape
        m, padded = k.shape[1], kernel.shape[0]
        dp = triton.next_power_of_2(d)
        has_valid, has_floor = valid is not None, isinstance(floor, Tensor)
        splits = _splits(rows, m)
        partials = torch.empty(rows, splits, 2, padded, dp, device=q.device, dtype=torch.float32)
        _key_moments_kernel[(rows, splits)](
            k, v, valid if has_valid else partials, partials, m, heads, d, splits, 1.0 / bound,
            P=degree, PP=padded, DP=dp, BLOCK_L=REDUCE_BLOCK, HAS_VALID=has_valid,
            num_warps=REDUCE_WARPS)
        mixed = _mix(kernel, partials)
        out = torch.empty_like(q)
        _query_forward_kernel[(rows, triton.cdiv(n, BLOCK))](
            q, mixed, floor if has_floor else mixed, 0.0 if has_floor else float(floor), out, n,
            heads, d, 1.0 / bound, P=degree, PP=padded, DP=dp, BLOCK_L=BLOCK,
            HAS_FLOOR=has_floor)
        ctx.save_for_backward(q, k, v, valid, floor if has_floor else None, kernel, mixed)
        ctx.heads, ctx.bound, ctx.degree = heads, bound, degree
        ctx.floor_value = None if has_floor else float(floor)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, valid, floor, kernel, mixed = ctx.saved_tensors
        grad = grad.contiguous()
        rows, n, d = q.shape
        m, degree, padded = k.shape[1], ctx.degree, kernel.shape[0]
        dp = triton.next_power_of_2(d)
        has_valid, has_floor = valid is not None, floor is not None
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        splits = _splits(rows, n)
        grad_partials = torch.empty(rows, splits, 2, padded, dp, device=q.device,
                                    dtype=torch.float32)
        _query_backward_kernel[(rows, splits)](
            q, mixed, floor if has_floor else mixed, 0.0 if has_floor else ctx.floor_value, grad,
            dq, grad_partials, n, ctx.heads, d, splits, 1.0 / ctx.bound, P=degree, PP=padded,
            DP=dp, BLOCK_L=REDUCE_BLOCK, HAS_FLOOR=has_floor, num_warps=REDUCE_WARPS)
        grad_mixed = _mix(kernel, grad_partials)  # K is symmetric: dM = K dA
        _key_backward_kernel[(rows, triton.cdiv(m, BLOCK))](
            k, v, valid if has_valid else grad_mixed, grad_mixed, dk, dv, m, ctx.heads, d,
            1.0 / ctx.bound, P=degree, PP=padded, DP=dp, BLOCK_L=BLOCK, HAS_VALID=has_valid)
        return dq, dk, dv, None, None, None, None, None, None


def folded_heat_triton(
    q: Tensor, k: Tensor, v: Tensor, kernel: Tensor, *, degree: int, bound: float,
    key_valid: Tensor | None, causal: bool, floor: Tensor | float,
) -> Tensor:
    """Non-causal folded HEAT on t = tanh(q / R), tanh(k / R): q (B, H, n, d), k and v
    (B, H, m, d) in any float dtype (math in fp32), kernel = `padded_kernel(C C^T)` with the
    polynomial length `degree`, key_valid (B, m) or None, floor (B, n) or one number for every
    query. Returns (B, H, n, d) in q's dtype."""
    if causal:
        raise ValueError("the Triton HEAT kernels are non-causal; heat.attention.fused routes "
                         "causal attention on CUDA to the eager folded path")
    batch, heads, n, d = q.shape
    m = k.shape[2]
    valid = None if key_valid is None else key_valid.to(torch.float32).contiguous()
    if isinstance(floor, Tensor):
        floor = floor.to(torch.float32).expand(batch, n).contiguous()
    out = _FoldedHeatTriton.apply(
        q.reshape(batch * heads, n, d), k.reshape(batch * heads, m, d),
        v.reshape(batch * heads, m, d), valid, floor, kernel, degree, heads, bound,
    )
    return out.view(batch, heads, n, d)


def padded_kernel(kernel: Tensor) -> Tensor:
    """C C^T as fp32, zero-padded to a power-of-two square of at least 16 (tl.dot's minimum)."""
    degree = kernel.shape[0]
    size = max(16, triton.next_power_of_2(degree))
    if kernel.shape == (size, size) and kernel.dtype == torch.float32:
        return kernel
    padded = kernel.new_zeros(size, size, dtype=torch.float32)
    padded[:degree, :degree] = kernel
    return padded
