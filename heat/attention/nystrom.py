"""Nystrom attention (Xiong et al., 2021, "Nystromformer: A Nystrom-Based Algorithm for
Approximating Self-Attention").

With tau-scaled queries (tau = 1/sqrt(d)) and l landmarks Q~, K~ (segment means of Q and K):
    out = softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T + key mask) V
where pinv is the paper's iterative Moore-Penrose pseudo-inverse. Cost O(n l d + l^2 d + l^3).

Padding: landmarks are means over each batch element's VALID positions only (keys by
key_padding_mask, queries by query_padding_mask), split into l near-equal segments of the valid
positions, so appending padded keys or queries changes no output at a valid query. An element
with fewer than l valid positions has empty segments; their landmarks are masked out (zero rows
and columns in the l x l kernel, excluded from the first softmax). When no element has more
than l valid keys the Nystrom form has nothing to save, and attention is computed exactly.

Optional: a depthwise convolution over the sequence axis of V (one filter per head, as in the
official implementation) added to the output, for self-attention (n == m).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heat.attention.base import AttentionKernel, Capabilities
from heat.attention.registry import register
from heat.attention.softmax import SoftmaxSpec, softmax_attention
from heat.attention.specs import AttentionSpec, Sweep


@dataclass(frozen=True, kw_only=True)
class NystromSpec(AttentionSpec):
    """Nystromformer: segment-mean landmarks and an iterative pseudo-inverse."""

    name: ClassVar[str] = "nystrom"
    listing_order: ClassVar[int] = 30
    demo_order: ClassVar[int] = 30
    sweeps: ClassVar[tuple[Sweep, ...]] = (Sweep("landmarks", "landmarks", (64,)),)

    landmarks: int = 32
    """l, the number of landmarks; attention is exact when the key length m <= l."""
    pinv_iterations: int = 6
    """Newton-Schulz iterations of the Moore-Penrose pseudo-inverse."""
    conv_kernel: int = 0
    """Width of the depthwise convolution skip on V (odd); 0 disables it."""

    def __post_init__(self) -> None:
        self.check_int("landmarks", 1, 4096)
        self.check_int("pinv_iterations", 1, 100)
        self.check_int("conv_kernel", 0, 255)
        if self.conv_kernel and self.conv_kernel % 2 == 0:
            raise self.error("conv_kernel", f"must be 0 or odd, got {self.conv_kernel}")

    def exact_counterpart(self) -> SoftmaxSpec:
        return SoftmaxSpec()

    @classmethod
    def contract_examples(cls) -> dict[str, NystromSpec]:
        return {"nystrom": cls(landmarks=4, pinv_iterations=8),
                "nystrom-conv": cls(landmarks=4, conv_kernel=3)}

    @classmethod
    def demo_examples(cls, length: int) -> dict[str, NystromSpec]:
        """Fewer landmarks than positions (with as many or more it is exact)."""
        return {f"landmarks={count}": cls(landmarks=count)
                for count in (16, 64) if count < length}

    def label(self) -> str:
        return f"nystrom l{self.landmarks}"


def iterative_pinv(matrix: Tensor, iterations: int) -> Tensor:
    """Moore-Penrose pseudo-inverse of each (..., l, l) matrix by the Nystromformer iteration.

    Z0 = K^T / (||K||_1 ||K||_inf) is taken PER MATRIX: a start scaled by the whole batch's
    largest norms (as in the official code) leaves small-norm matrices far from convergence.
    Runs in at least fp32 (reduced precision diverges) and returns the input's dtype.
    """
    work = matrix.to(torch.promote_types(matrix.dtype, torch.float32))
    absolute = work.abs()
    max_col_sum = absolute.sum(dim=-2).amax(dim=-1)[..., None, None]  # (..., 1, 1)
    max_row_sum = absolute.sum(dim=-1).amax(dim=-1)[..., None, None]  # (..., 1, 1)
    # An all-zero matrix (no valid query) has pseudo-inverse 0; the clamp keeps it out of 0/0.
    scale = (max_col_sum * max_row_sum).clamp_min(torch.finfo(work.dtype).tiny)
    z = work.transpose(-1, -2) / scale
    eye = torch.eye(work.shape[-1], dtype=work.dtype, device=work.device)
    for _ in range(iterations):
        kz = work @ z
        z = 0.25 * z @ (13 * eye - kz @ (15 * eye - kz @ (7 * eye - kz)))
    return z.to(matrix.dtype)


def segment_means(x: Tensor, valid: Tensor, landmarks: int) -> tuple[Tensor, Tensor]:
    """Landmarks of x (B, H, L, d): means of l segments of each element's valid positions.

    A valid position of rank r among its element's L_b valid ones falls in segment
    floor(r l / L_b). Returns the landmarks (B, H, l, d) and `filled` (B, l), False where a
    segment is empty (L_b < l); an empty segment's landmark is zero.
    """
    count = valid.sum(dim=-1, keepdim=True)  # (B, 1)
    rank = valid.cumsum(dim=-1) - 1  # (B, L)
    segment = rank * landmarks // count.clamp_min(1)  # (B, L)
    slots = torch.arange(landmarks, device=x.device)
    member = (segment[:, None, :] == slots[None, :, None]) & valid[:, None, :]  # (B, l, L)
    sizes = member.sum(dim=-1)  # (B, l)
    # Averaging as a matmul keeps it one deterministic GEMM; the one-hot is shared by the heads.
    weights = member.to(x.dtype) / sizes.clamp_min(1)[..., None].to(x.dtype)  # (B, l, L)
    means = torch.matmul(weights[:, None], x)  # (B, 1, l, L) @ (B, H, L, d) -> (B, H, l, d)
    return means, sizes > 0


def _valid_or_all(
    padding_mask: Tensor | None, batch: int, length: int, device: torch.device
) -> Tensor:
    """(B, L) True at valid positions. An element with none is treated as all valid (its
    output is zeroed or ignored later), which keeps every softmax and mean well defined."""
    if padding_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    valid = ~padding_mask
    return valid | ~valid.any(dim=-1, keepdim=True)


def _softmax(scores: Tensor, keep: Tensor) -> Tensor:
    """Softmax over the last axis where `keep`, computed and returned in fp32 at least."""
    scores = scores.masked_fill(~keep, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))


def _nystrom(
    q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor, query_valid: Tensor, spec: NystromSpec
) -> Tensor:
    """The Nystrom approximation; every element has at least one valid key and query."""
    q = q * q.shape[-1] ** -0.5
    q_land, q_filled = segment_means(q, query_valid, spec.landmarks)  # (B, H, l, d), (B, l)
    k_land, k_filled = segment_means(k, key_valid, spec.landmarks)  # (B, H, l, d), (B, l)
    k_cols = k_filled[:, None, None, :]  # (B, 1, 1, l)
    q_rows = q_filled[:, None, :, None]  # (B, 1, l, 1)

    kernel1 = _softmax(q @ k_land.transpose(-1, -2), k_cols)  # (B, H, n, l)
    # Empty landmarks become zero rows and columns, whose pseudo-inverse is zero there too.
    kernel2 = _softmax(q_land @ k_land.transpose(-1, -2), k_cols)  # (B, H, l, l)
    kernel2 = kernel2.masked_fill(~q_rows, 0.0)
    kernel3 = _softmax(q_land @ k.transpose(-1, -2), key_valid[:, None, None, :])  # (B, H, l, m)
    kernel3 = kernel3.masked_fill(~q_rows, 0.0)

    dtype = v.dtype
    land_v = kernel3.to(dtype) @ v  # (B, H, l, d)
    # pinv(kernel2) @ land_v first: l^2 d flops instead of n l^2.
    mixed = iterative_pinv(kernel2, spec.pinv_iterations).to(dtype) @ land_v  # (B, H, l, d)
    return kernel1.to(dtype) @ mixed  # (B, H, n, d)


@register(NystromSpec)
class NystromAttention(AttentionKernel):
    capabilities = Capabilities(
        causal=False, cross=True, fixed_max_length=False, query_independent=False
    )

    def __init__(
        self,
        spec: NystromSpec,
        *,
        head_dim: int,
        num_heads: int,
        shared: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(head_dim=head_dim, num_heads=num_heads)
        self.spec = spec
        self.conv: nn.Conv2d | None = None
        if spec.conv_kernel:
            # (conv_kernel, 1) over (sequence, channel): one filter per head, shared by the
            # head's channels, as in the official implementation.
            self.conv = nn.Conv2d(
                num_heads, num_heads, kernel_size=(spec.conv_kernel, 1),
                padding=(spec.conv_kernel // 2, 0), groups=num_heads, bias=False,
            )

    def _attend(self, q, k, v, *, key_padding_mask, query_padding_mask, causal) -> Tensor:
        (batch, _, n, _), m = q.shape, k.shape[2]
        if self.conv is not None and n != m:
            raise ValueError(
                f"nystrom.conv_kernel={self.spec.conv_kernel}: the convolution skip adds V's "
                f"positions to the queries' and needs self-attention (n == m), got n={n}, m={m}; "
                f"set nystrom.conv_kernel: 0 for cross-attention"
            )
        if self._is_exact(key_padding_mask, m):
            out = softmax_attention(q, k, v, key_padding_mask=key_padding_mask, causal=False)
        else:
            key_valid = _valid_or_all(key_padding_mask, batch, m, q.device)
            query_valid = _valid_or_all(query_padding_mask, batch, n, q.device)
            out = _nystrom(q, k, v, key_valid, query_valid, self.spec)
            if key_padding_mask is not None:
                no_key = key_padding_mask.all(dim=-1)[:, None, None, None]  # (B, 1, 1, 1)
                out = out.masked_fill(no_key, 0.0)
        if self.conv is not None:
            out = out + self._conv_skip(v, key_padding_mask)
        return out

    def _is_exact(self, key_padding_mask: Tensor | None, m: int) -> bool:
        if m <= self.spec.landmarks:
            return True
        if key_padding_mask is None:
            return False
        # Deciding on the valid count, not m, keeps the output invariant to appended padding
        # (at the price of one host sync when m > l and a mask is given).
        most_valid = int((~key_padding_mask).sum(dim=-1).max())
        return most_valid <= self.spec.landmarks

    def _conv_skip(self, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        assert self.conv is not None
        if key_padding_mask is not None:
            # Padding rows must not leak into valid neighbours through the filter.
            v = v.masked_fill(key_padding_mask[:, None, :, None], 0.0)
        weight = self.conv.weight.to(v.dtype)  # (H, 1, conv_kernel, 1)
        # The heads are the conv's channels: (B, H, m, d) is already (N, C, height, width).
        return F.conv2d(v, weight, padding=self.conv.padding, groups=self.num_heads)

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"{super().extra_repr()}, landmarks={s.landmarks}, "
            f"pinv_iterations={s.pinv_iterations}, conv_kernel={s.conv_kernel}"
        )
