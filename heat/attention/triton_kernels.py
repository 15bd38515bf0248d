"""Fused CUDA kernels for folded HEAT in Triton (non-causal), with a hand-written backward.

The same algebra as `folded.folded_heat` and `csrc/folded_heat.cpp`, laid out for a GPU: each
program owns a tile of BLOCK positions x all channels of one (batch, head) row.

forward   1. keys:    M_p += sum_j valid_j t_j^p v_j and Z_p += sum_j valid_j t_j^p, per tile, by
                      atomic adds into fp32 (N, P, D) accumulators;
          (torch)     A = K M, B = K Z: a (P, P) x (P, D) product per row, negligible;
          2. queries: out_i = Horner(A, t_i) / max(Horner(B, t_i), floor_i).
backward  3. queries: dq, and dA_p = sum_i t_i^p g_num_i, dB_p likewise, by atomic adds;
          (torch)     dM = K dA, dZ = K dB (K is symmetric);
          4. keys:    dv_j = valid_j Horner(dM, t_j), dk_j from the derivatives of both.

t = tanh(x / R) is computed inside (as 2 sigmoid(2x / R) - 1) and its gradient (1 - t^2) / R
applied inside, so q and k are read in their own dtype (bf16 on GPU) and nothing of size (n, d)
is written besides the outputs and gradients. All arithmetic is fp32. Causal attention on CUDA
uses the eager folded path (`heat.attention.fused` routes it).

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
    def _tile(n, L, D, DP: tl.constexpr, BLOCK_L: tl.constexpr):
        rows = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
        cols = tl.arange(0, DP)
        row_ok = rows < L
        mask = row_ok[:, None] & (cols < D)[None, :]
        offsets = (n * L + rows)[:, None] * D + cols[None, :]
        return rows, cols, row_ok, mask, offsets

    @triton.jit
    def _key_weight(valid_ptr, n, H, L, rows, row_ok, HAS_VALID: tl.constexpr):
        keep = row_ok.to(tl.float32)
        if HAS_VALID:
            keep = keep * tl.load(valid_ptr + (n // H) * L + rows, mask=row_ok, other=0.0)
        return keep

    @triton.jit
    def _key_moments_kernel(k_ptr, v_ptr, valid_ptr, m_ptr, z_ptr, L, H, D, inv_bound,
                            P: tl.constexpr, DP: tl.constexpr, BLOCK_L: tl.constexpr,
                            HAS_VALID: tl.constexpr):
        n = tl.program_id(0)
        rows, cols, row_ok, mask, offsets = _tile(n, L, D, DP, BLOCK_L)
        t = _tanh_bound(tl.load(k_ptr + offsets, mask=mask, other=0.0).to(tl.float32), inv_bound)
        v = tl.load(v_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        keep = _key_weight(valid_ptr, n, H, L, rows, row_ok, HAS_VALID)[:, None]
        weighted = keep * v
        plain = keep + 0.0 * t
        col_ok = cols < D
        for p in tl.static_range(P):
            tl.atomic_add(m_ptr + (n * P + p) * D + cols, tl.sum(weighted, axis=0), mask=col_ok)
            tl.atomic_add(z_ptr + (n * P + p) * D + cols, tl.sum(plain, axis=0), mask=col_ok)
            weighted = weighted * t
            plain = plain * t

    @triton.jit
    def _horner(c_ptr, n, t, cols, D, P: tl.constexpr, WITH_DERIVATIVE: tl.constexpr):
        """sum_p c[n, p, :] t^p (and its t-derivative) for a (BLOCK_L, DP) tile t."""
        col_ok = cols < D
        value = tl.load(c_ptr + (n * P + P - 1) * D + cols, mask=col_ok, other=0.0)[None, :] + 0.0 * t
        derivative = 0.0 * t
        for i in tl.static_range(P - 1):
            coefficient = tl.load(c_ptr + (n * P + P - 2 - i) * D + cols, mask=col_ok, other=0.0)
            if WITH_DERIVATIVE:
                derivative = derivative * t + value
            value = value * t + coefficient[None, :]
        return value, derivative

    @triton.jit
    def _query_forward_kernel(q_ptr, a_ptr, b_ptr, floor_ptr, out_ptr, L, H, D, inv_bound,
                              P: tl.constexpr, DP: tl.constexpr, BLOCK_L: tl.constexpr):
        n = tl.program_id(0)
        rows, cols, row_ok, mask, offsets = _tile(n, L, D, DP, BLOCK_L)
        t = _tanh_bound(tl.load(q_ptr + offsets, mask=mask, other=0.0).to(tl.float32), inv_bound)
        numerator, _ = _horner(a_ptr, n, t, cols, D, P, False)
        normaliser, _ = _horner(b_ptr, n, t, cols, D, P, False)
        floor = tl.load(floor_ptr + (n // H) * L + rows, mask=row_ok, other=1.0)[:, None]
        out = numerator / tl.maximum(normaliser, floor)
        tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _query_backward_kernel(q_ptr, a_ptr, b_ptr, floor_ptr, grad_ptr, dq_ptr, da_ptr, db_ptr,
                               L, H, D, inv_bound, P: tl.constexpr, DP: tl.constexpr,
                               BLOCK_L: tl.constexpr):
        n = tl.program_id(0)
        rows, cols, row_ok, mask, offsets = _tile(n, L, D, DP, BLOCK_L)
        t = _tanh_bound(tl.load(q_ptr + offsets, mask=mask, other=0.0).to(tl.float32), inv_bound)
        grad = tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        numerator, d_numerator = _horner(a_ptr, n, t, cols, D, P, True)
        normaliser, d_normaliser = _horner(b_ptr, n, t, cols, D, P, True)
        floor = tl.load(floor_ptr + (n // H) * L + rows, mask=row_ok, other=1.0)[:, None]
        floored = normaliser <= floor
        denominator = tl.where(floored, floor, normaliser)
        g_num = grad / denominator
        g_den = tl.where(floored, 0.0, -g_num * numerator / denominator)
        dq = (g_num * d_numerator + g_den * d_normaliser) * (1.0 - t * t) * inv_bound
        tl.store(dq_ptr + offsets, dq.to(dq_ptr.dtype.element_ty), mask=mask)
        col_ok = cols < D
        for p in tl.static_range(P):
            tl.atomic_add(da_ptr + (n * P + p) * D + cols, tl.sum(g_num, axis=0), mask=col_ok)
            tl.atomic_add(db_ptr + (n * P + p) * D + cols, tl.sum(g_den, axis=0), mask=col_ok)
            g_num = g_num * t
            g_den = g_den * t

    @triton.jit
    def _key_backward_kernel(k_ptr, v_ptr, valid_ptr, dm_ptr, dz_ptr, dk_ptr, dv_ptr, L, H, D,
                             inv_bound, P: tl.constexpr, DP: tl.constexpr, BLOCK_L: tl.constexpr,
                             HAS_VALID: tl.constexpr):
        n = tl.program_id(0)
        rows, cols, row_ok, mask, offsets = _tile(n, L, D, DP, BLOCK_L)
        t = _tanh_bound(tl.load(k_ptr + offsets, mask=mask, other=0.0).to(tl.float32), inv_bound)
        v = tl.load(v_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        keep = _key_weight(valid_ptr, n, H, L, rows, row_ok, HAS_VALID)[:, None]
        value, derivative = _horner(dm_ptr, n, t, cols, D, P, True)
        _, z_derivative = _horner(dz_ptr, n, t, cols, D, P, True)
        dv = keep * value
        dk = keep * (v * derivative + z_derivative) * (1.0 - t * t) * inv_bound
        tl.store(dv_ptr + offsets, dv.to(dv_ptr.dtype.element_ty), mask=mask)
        tl.store(dk_ptr + offsets, dk.to(dk_ptr.dtype.element_ty), mask=mask)


def _mix(kernel: Tensor, moments: Tensor) -> Tensor:
    """K @ moments[i, n] for both moments and every row: (P, P) x (2, N, P, D), one launch."""
    return torch.matmul(kernel, moments)


class _FoldedHeatTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, valid, floor, kernel, heads: int, bound: float):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        rows, n, d = q.shape
        m, degree = k.shape[1], kernel.shape[0]
        dp = triton.next_power_of_2(d)
        moments = torch.zeros(2, rows, degree, d, device=q.device, dtype=torch.float32)
        has_valid = valid is not None
        valid_arg = valid if has_valid else moments  # never read when HAS_VALID is False
        _key_moments_kernel[(rows, triton.cdiv(m, BLOCK))](
            k, v, valid_arg, moments[0], moments[1], m, heads, d, 1.0 / bound,
            P=degree, DP=dp, BLOCK_L=BLOCK, HAS_VALID=has_valid)
        mixed_v, mixed_1 = _mix(kernel, moments).unbind(0)
        out = torch.empty_like(q)
        _query_forward_kernel[(rows, triton.cdiv(n, BLOCK))](
            q, mixed_v, mixed_1, floor, out, n, heads, d, 1.0 / bound,
            P=degree, DP=dp, BLOCK_L=BLOCK)
        ctx.save_for_backward(q, k, v, valid, floor, kernel, mixed_v, mixed_1)
        ctx.heads, ctx.bound = heads, bound
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, valid, floor, kernel, mixed_v, mixed_1 = ctx.saved_tensors
        grad = grad.contiguous()
        rows, n, d = q.shape
        m, degree = k.shape[1], kernel.shape[0]
        dp = triton.next_power_of_2(d)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        d_mixed = torch.zeros(2, rows, degree, d, device=q.device, dtype=torch.float32)
        _query_backward_kernel[(rows, triton.cdiv(n, BLOCK))](
            q, mixed_v, mixed_1, floor, grad, dq, d_mixed[0], d_mixed[1], n, ctx.heads, d,
            1.0 / ctx.bound, P=degree, DP=dp, BLOCK_L=BLOCK)
        d_moments_v, d_moments_1 = _mix(kernel, d_mixed).unbind(0)
        has_valid = valid is not None
        _key_backward_kernel[(rows, triton.cdiv(m, BLOCK))](
            k, v, valid if has_valid else d_mixed, d_moments_v, d_moments_1, dk, dv, m,
            ctx.heads, d, 1.0 / ctx.bound, P=degree, DP=dp, BLOCK_L=BLOCK, HAS_VALID=has_valid)
        return dq, dk, dv, None, None, None, None, None


def folded_heat_triton(
    q: Tensor, k: Tensor, v: Tensor, kernel: Tensor, *, bound: float,
    key_valid: Tensor | None, causal: bool, floor: Tensor,
) -> Tensor:
    """Non-causal folded HEAT on t = tanh(q / R), tanh(k / R): q (B, H, n, d), k and v
    (B, H, m, d) in any float dtype (math in fp32), kernel (P, P), key_valid (B, m) or None,
    floor (B, n). Returns (B, H, n, d) in q's dtype."""
    if causal:
        raise ValueError("the Triton HEAT kernels are non-causal; heat.attention.fused routes "
                         "causal attention on CUDA to the eager folded path")
    batch, heads, n, d = q.shape
    m = k.shape[2]
    valid = None if key_valid is None else key_valid.to(torch.float32).contiguous()
    out = _FoldedHeatTriton.apply(
        q.reshape(batch * heads, n, d), k.reshape(batch * heads, m, d),
        v.reshape(batch * heads, m, d), valid, floor.to(torch.float32).contiguous(),
        kernel.to(device=q.device, dtype=torch.float32).contiguous(), heads, bound,
    )
    return out.view(batch, heads, n, d)
