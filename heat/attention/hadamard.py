"""Exact Hadamard (per-channel) attention: the exact counterpart of HEAT (DESIGN.md section 3).

The score of query i and key j is the Hadamard product q_i o k_j: one logit per channel c, each
with its own softmax over keys,
    o_ic = sum_j softmax_j(a_ic b_jc + mask_ij) v_jc,   a = R tanh(q / R), b = R tanh(k / R).
The bound R keeps every logit in [-R^2, R^2] and is what lets HEAT factorise exp(ab) on a square.
Cost O(n m d) time. On the CPU (float32/64, R <= EXP_SAFE_BOUND) fused C++ kernels compute it
with O(n d) memory (`cpu_hadamard`); elsewhere the (chunk, m, d) logits are materialised one query
chunk at a time, memory O(chunk_size * m * d) per head. Causal-capable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from heat.attention.base import AttentionKernel, Capabilities, keep_mask
from heat.attention.cpu_hadamard import hadamard_cpu
from heat.attention.input_norm import normalised
from heat.attention.fused import fused_available
from heat.attention.linear import accumulation_dtype
from heat.attention.registry import register
from heat.attention.specs import AttentionSpec


@dataclass(frozen=True, kw_only=True)
class HadamardSpec(AttentionSpec):
    """Exact per-channel (Hadamard-product) attention with bounded inputs R tanh(x / R)."""

    name: ClassVar[str] = "hadamard"
    listing_order: ClassVar[int] = 40

    bound: float = 3.0
    """R: queries and keys are squashed into [-R, R] per channel."""
    chunk_size: int = 64
    """Queries processed at a time; memory is O(chunk_size * m * d) per head."""
    input_norm: str = "none"
    """'rms': each query and key is divided by its root mean square over the head's channels
    before the bound (per position, so causal and padding-safe), which keeps every channel's
    input near the unit-variance measure HEAT's basis is fitted for; 'none': the paper's."""

    INPUT_NORMS: ClassVar[tuple[str, ...]] = ("none", "rms")

    def __post_init__(self) -> None:
        self.check_float("bound", 0.0, 20.0)
        self.check_choice("input_norm", self.INPUT_NORMS)
        self.check_int("chunk_size", 1, 1 << 16)

    @classmethod
    def contract_examples(cls) -> dict[str, HadamardSpec]:
        return {"hadamard": cls(chunk_size=5), "hadamard-rms": cls(chunk_size=5, input_norm="rms")}


def bounded(x: Tensor, bound: float) -> Tensor:
    """R tanh(x / R): identity near 0, squashed into [-R, R]."""
    return bound * torch.tanh(x / bound)


EXP_SAFE_BOUND = 6.0
"""Up to this R, exact hadamard exponentiates its shifted logits directly (2 R^2 = 72 < 87, where
float32's exp underflows); a larger R takes the softmax with its per-row maximum."""


def softmax_chunk(a: Tensor, b: Tensor, values: Tensor, keep: Tensor | None) -> Tensor:
    """Per-channel softmax over the keys for a (B, H, C, d) chunk of bounded queries a, keys b
    and values (B, H, m, d), keep (B|1, 1, C, m, 1) bool or None: (B, H, C, d). Any bound: the
    softmax subtracts each row's maximum."""
    logits = a[:, :, :, None, :] * b[:, :, None, :, :]  # (B, H, C, m, d)
    if keep is not None:
        logits = logits.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(logits, dim=3)  # over keys, per channel
    return (weights * values[:, :, None, :, :]).sum(dim=3)


def exp_chunk(a: Tensor, b: Tensor, values: Tensor, keep: Tensor | None, *, bound: float) -> Tensor:
    """`softmax_chunk` with fewer passes over the (B, H, C, m, d) logits, for bound <=
    EXP_SAFE_BOUND: every logit lies in [-R^2, R^2], so exp(a b - R^2) lies in [exp(-2 R^2), 1]
    and neither overflows nor underflows in float32; no per-row maximum is needed and masked
    keys are multiplied out instead of filled with -inf."""
    shift = a.new_tensor(-bound ** 2)
    weights = torch.exp(torch.addcmul(shift, a[:, :, :, None, :], b[:, :, None, :, :]))
    if keep is not None:
        weights = weights * keep.to(weights.dtype)
    return (weights * values[:, :, None, :, :]).sum(dim=3) / weights.sum(dim=3)


def _fused_here(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fused C++ kernels (`cpu_hadamard`) run this call: on the CPU, in float32 or
    float64, where HEAT's kernel library builds (`fused.fused_available`, the same decision and
    warning as heat's; `HEAT_CPU_KERNELS=0` turns them off). No CUDA kernel exists for hadamard."""
    return (device.type == "cpu" and dtype in (torch.float32, torch.float64)
            and fused_available(device))


@register(HadamardSpec)
class HadamardAttention(AttentionKernel):
    capabilities = Capabilities(causal=True, cross=True, fixed_max_length=False)
    time_exponent = 2

    def __init__(
        self, spec: HadamardSpec, *, head_dim: int, num_heads: int, shared: dict[str, Any] | None = None
    ) -> None:
        super().__init__(head_dim=head_dim, num_heads=num_heads)
        self.spec = spec

    def _attend(self, q, k, v, *, key_padding_mask, query_padding_mask, causal) -> Tensor:
        dtype = accumulation_dtype(q.dtype)
        norm = self.spec.input_norm
        a = bounded(normalised(q.to(dtype), norm), self.spec.bound)  # (B, H, n, d)
        b = bounded(normalised(k.to(dtype), norm), self.spec.bound)  # (B, H, m, d)
        values = v.to(dtype)
        n, m = q.shape[2], k.shape[2]
        bound = self.spec.bound
        if bound <= EXP_SAFE_BOUND and _fused_here(q.device, dtype):
            key_valid = None if key_padding_mask is None else ~key_padding_mask
            out = hadamard_cpu(a, b, values, key_valid=key_valid, causal=causal, bound=bound)
            return out.to(q.dtype)
        keep = keep_mask(key_padding_mask, n, m, causal, q.device)  # (B|1, 1, n|1, m) or None
        empty = None
        if keep is not None:
            keep = keep.expand(-1, -1, n, -1)  # (B|1, 1, n, m), a view: sliced per chunk below
            # a query that sees no key (empty source) outputs 0 rather than NaN
            empty = ~keep.any(dim=-1, keepdim=True)  # (B|1, 1, n, 1)
            keep = keep | empty
        chunks = []
        for start in range(0, n, self.spec.chunk_size):
            stop = min(start + self.spec.chunk_size, n)
            chunk_keep = None if keep is None else keep[:, :, start:stop, :, None]
            if bound <= EXP_SAFE_BOUND:
                chunk = exp_chunk(a[:, :, start:stop], b, values, chunk_keep, bound=bound)
            else:
                chunk = softmax_chunk(a[:, :, start:stop], b, values, chunk_keep)
            chunks.append(chunk)  # (B, H, C, d)
        out = torch.cat(chunks, dim=2)
        if empty is not None:
            out = out.masked_fill(empty, 0.0)
        return out.to(q.dtype)

    def estimated_bytes(self, *, batch: int, n: int, itemsize: int) -> float:
        """The (chunk, m, d) logits, their softmax and gradients, one query chunk at a time."""
        rows = batch * self.num_heads
        return 4.0 * rows * min(self.spec.chunk_size, n) * n * self.head_dim * itemsize
