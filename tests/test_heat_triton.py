"""The Triton HEAT kernels against the fused CPU kernels (values and gradients).

Without a GPU they run in Triton's interpreter (TRITON_INTERPRET=1, set before triton is
imported, hence a subprocess); with one (`-m gpu`) they run for real, in fp32 and bf16."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

CHECK = textwrap.dedent("""
    import json, torch
    from heat.attention.triton_kernels import folded_heat_triton, padded_kernel
    from heat.attention.cpu_kernels import folded_heat_cpu
    from heat.attention.exp_basis import polynomial_coefficients

    def triton_path(q, k, v, kernel, **kw):
        return folded_heat_triton(q, k, v, padded_kernel(kernel.float()),
                                  degree=kernel.shape[0], **kw)

    def run(device, dtype, fn, basis, rank, pad, d):
        torch.manual_seed(0)
        C = polynomial_coefficients(basis, 3.0, 1.0, rank, 24)
        B, H, n, m = 2, 3, 150, 130  # several tiles per row: split reductions
        q, k, v = (1.5 * torch.randn(B, H, L, d, dtype=torch.float64) for L in (n, m, m))
        valid = torch.ones(B, m, dtype=torch.bool)
        if pad:
            valid[1, -9:] = False
        floor = torch.rand(B, n, dtype=torch.float64) * 0.01 + 1e-3 if pad else 0.05
        leaves = [x.to(device=device, dtype=dtype).requires_grad_() for x in (q, k, v)]
        out = fn(*leaves, (C @ C.T).to(device), bound=3.0,
                 key_valid=valid.to(device) if pad else None, causal=False,
                 floor=floor.to(device) if pad else floor)
        out.backward(torch.linspace(-1, 1, out.numel(), device=device).view_as(out).to(dtype))
        return [x.detach().double().cpu() for x in (out, *(leaf.grad for leaf in leaves))]

    def errors(device, dtype, basis, rank, pad, d):
        def cpu_path(q, k, v, kernel, floor, **kw):
            if not torch.is_tensor(floor):
                floor = torch.full((q.shape[0], q.shape[2]), floor, dtype=torch.float64)
            return folded_heat_cpu(q, k, v, kernel, floor=floor, **kw)

        fast = run(device, dtype, triton_path, basis, rank, pad, d)
        ref = run("cpu", torch.float64, cpu_path, basis, rank, pad, d)
        return [float((a - b).norm() / b.norm()) for a, b in zip(fast, ref)]
""")


def _interpreted(case: str) -> list[float]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    script = CHECK + f"\nprint(json.dumps(errors('cpu', torch.float32, {case})))\n"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["'svd', 8, True, 20", "'svd', 16, False, 64",
                                  "'taylor', 6, True, 24"])
def test_triton_kernels_match_cpu_kernels_in_the_interpreter(case):
    for error in _interpreted(case):  # output, dq, dk, dv
        assert error < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("basis,rank,pad,d", [("svd", 8, True, 64), ("taylor", 6, False, 40)])
def test_triton_kernels_match_cpu_kernels_on_cuda(dtype, tolerance, basis, rank, pad, d):
    namespace: dict = {}
    exec(CHECK, namespace)
    for error in namespace["errors"]("cuda", dtype, basis, rank, pad, d):
        assert error < tolerance


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_uses_triton_on_cuda_for_non_causal_only():
    from heat.attention import HeatSpec, build_attention

    kernel = build_attention(HeatSpec(), head_dim=64, num_heads=2)
    assert kernel.implementation_for(torch.device("cuda"), causal=False) == "fused"
    assert kernel.implementation_for(torch.device("cuda"), causal=True) == "folded"
