"""Device dispatch for the fused HEAT kernels: C++ on the CPU (`cpu_kernels`), Triton on CUDA
(`triton_kernels`). Both compute exactly `folded.folded_heat` with a hand-written backward."""

from __future__ import annotations

import torch
from torch import Tensor


def fused_available(device: torch.device, causal: bool = False, key_shift: str = "none") -> bool:
    """Whether fused kernels run on `device` here (the first call may build them). The Triton
    kernels are non-causal only and have no key shift: causal HEAT on CUDA, and non-causal HEAT
    with `key_shift: midrange`, run the eager folded path there."""
    if device.type == "cpu":
        from heat.attention import cpu_kernels

        return cpu_kernels.available()
    if device.type == "cuda" and not causal and key_shift == "none":
        from heat.attention import triton_kernels

        return triton_kernels.available()
    return False


def kernel_layout(kernel: Tensor) -> Tensor:
    """C C^T (P, P) as the device's kernels take it (callers cache the result per device)."""
    if kernel.device.type == "cuda":
        from heat.attention.triton_kernels import padded_kernel

        return padded_kernel(kernel)
    return kernel


def fused_heat(
    q: Tensor, k: Tensor, v: Tensor, kernel: Tensor, *, degree: int, bound: float,
    key_valid: Tensor | None, causal: bool, floor: Tensor | float, input_norm: str = "none",
    key_shift: str = "none",
) -> Tensor:
    """Folded HEAT on t = tanh(q / R), tanh(k / R) (the bound is applied inside, its gradient
    too): queries (B, H, n, d), keys and values (B, H, m, d); kernel = `kernel_layout(C C^T)`
    with P = degree; key_valid (B, m) bool or None; floor the normaliser floor, (B, n) or one
    number for every query; `input_norm` as `input_norm.normalised` says, before the bound (on
    the CPU inside the kernels' passes); `key_shift` as `HeatSpec.key_shift` (CPU only).
    -> (B, H, n, d)."""
    if q.device.type == "cuda":
        if key_shift != "none" and not causal:
            raise ValueError("the Triton HEAT kernels have no key shift (use the folded path)")
        from heat.attention.input_norm import normalised
        from heat.attention.triton_kernels import folded_heat_triton

        if input_norm != "none":  # in fp32, as every eager path normalises
            q, k = (normalised(x.float(), input_norm).to(x.dtype) for x in (q, k))

        return folded_heat_triton(q, k, v, kernel, degree=degree, bound=bound,
                                  key_valid=key_valid, causal=causal, floor=floor)
    from heat.attention.cpu_kernels import folded_heat_cpu

    if not isinstance(floor, Tensor):
        floor = torch.full((q.shape[0], q.shape[2]), floor, dtype=torch.float32)
    return folded_heat_cpu(q, k, v, kernel, bound=bound, key_valid=key_valid, causal=causal,
                           floor=floor, input_norm=input_norm, key_shift=key_shift)
