"""Device dispatch for the fused HEAT kernels: C++ on the CPU (`cpu_kernels`), Triton on CUDA
(`triton_kernels`). Both compute exactly `folded.folded_heat` with a hand-written backward."""

from __future__ import annotations

import torch
from torch import Tensor


def fused_available(device: torch.device) -> bool:
    """Whether fused kernels run on `device` here (the first call may build them)."""
    if device.type == "cpu":
        from heat.attention import cpu_kernels

        return cpu_kernels.available()
    if device.type == "cuda":
        from heat.attention import triton_kernels

        return triton_kernels.available()
    return False


def fused_heat(
    t_q: Tensor, t_k: Tensor, v: Tensor, kernel: Tensor, *, key_valid: Tensor | None,
    causal: bool, floor: Tensor,
) -> Tensor:
    """t = a / R for queries (B, H, n, d) and keys (B, H, m, d); v (B, H, m, d); kernel = C C^T
    (P, P); key_valid (B, m) bool or None; floor (B, n) the normaliser floor. -> (B, H, n, d)."""
    if t_q.device.type == "cuda":
        from heat.attention.triton_kernels import folded_heat_triton

        return folded_heat_triton(t_q, t_k, v, kernel, key_valid=key_valid, causal=causal,
                                  floor=floor)
    from heat.attention.cpu_kernels import folded_heat_cpu

    return folded_heat_cpu(t_q, t_k, v, kernel, key_valid=key_valid, causal=causal, floor=floor)
