"""Exact hadamard attention fused on the CPU: `csrc/hadamard.cpp`, in the library `cpu_kernels` builds.

The eager version (`hadamard.exp_chunk`) materialises (chunk, m, d) logits per query chunk and
autograd keeps the exponentials: about eight passes over an (n, m, d) tensor per head forward and
backward. The kernels loop over keys inside each (row, channel block) with the running sums in
registers, recompute the exponentials in the backward from the saved 1 / S, and store nothing of
size n x m. Same exponent path as `exp_chunk` (bound <= EXP_SAFE_BOUND: exp(a b - R^2) needs no
per-row maximum), same masking rules (`base.keep_mask`), a query with no key outputs 0.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from heat.attention.cpu_kernels import I64, dtype_suffix, library, pointer, run_tasks


def _tasks(batch_heads: int, d: int) -> int:
    return batch_heads * -(-d // library().hadamard_kernels_block_width())


class _HadamardCPU(torch.autograd.Function):
    """o = per-channel softmax attention of bounded a, b over v, with a hand-written backward."""

    @staticmethod
    def forward(ctx, a, b, v, valid, heads: int, causal: bool, shift: float):
        lib = library()
        batch_heads, n, d = a.shape
        m = b.shape[1]
        shape = [I64(batch_heads), I64(heads), I64(n), I64(m), I64(d), ctypes.c_double(shift),
                 I64(int(causal))]
        out, inv_sum = torch.empty_like(a), torch.empty_like(a)
        run_tasks(getattr(lib, f"hadamard_fwd_{dtype_suffix(a.dtype)}"),
                  [[pointer(a), pointer(b), pointer(v), pointer(valid), *shape],
                   [pointer(out), pointer(inv_sum)]], _tasks(batch_heads, d))
        ctx.save_for_backward(a, b, v, valid, out, inv_sum)
        ctx.heads, ctx.causal, ctx.shift = heads, causal, shift
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        lib = library()
        a, b, v, valid, out, inv_sum = ctx.saved_tensors
        grad = grad.contiguous()
        batch_heads, n, d = a.shape
        m = b.shape[1]
        shape = [I64(batch_heads), I64(ctx.heads), I64(n), I64(m), I64(d),
                 ctypes.c_double(ctx.shift), I64(int(ctx.causal))]
        da, db, dv = torch.empty_like(a), torch.empty_like(b), torch.empty_like(v)
        run_tasks(getattr(lib, f"hadamard_bwd_{dtype_suffix(a.dtype)}"),
                  [[pointer(a), pointer(b), pointer(v), pointer(valid), pointer(out),
                    pointer(inv_sum), pointer(grad), *shape],
                   [pointer(da), pointer(db), pointer(dv)]], _tasks(batch_heads, d))
        return da, db, dv, None, None, None, None


def hadamard_cpu(a: Tensor, b: Tensor, v: Tensor, *, key_valid: Tensor | None, causal: bool,
                 bound: float) -> Tensor:
    """Exact hadamard attention on bounded queries a (B, H, n, d), keys b and values v
    (B, H, m, d), float32 or float64 on the CPU, bound <= `hadamard.EXP_SAFE_BOUND`; key_valid
    (B, m) bool or None; causal: key j is visible to query i iff j <= i + (m - n). -> (B, H, n, d)."""
    batch, heads, n, d = a.shape
    m = b.shape[2]
    valid = None if key_valid is None else key_valid.to(a.dtype).contiguous()
    out = _HadamardCPU.apply(
        a.reshape(batch * heads, n, d).contiguous(), b.reshape(batch * heads, m, d).contiguous(),
        v.reshape(batch * heads, m, d).contiguous(), valid, heads, causal, float(bound) ** 2,
    )
    return out.view(batch, heads, n, d)
