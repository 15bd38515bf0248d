"""The folded HEAT paths (moments x C C^T, Horner; eager and fused kernels) against the
materialised-features reference: values and gradients in fp32, causal and not, padding,
batch > 1, ragged chunks, channel counts that are not a multiple of the kernels' block width."""

from __future__ import annotations

import pytest
import torch

from conftest import qkv
from heat.attention import HeatSpec, build_attention


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def run(implementation, basis, rank, n, m, causal, head_dim, dtype=torch.float32,
        input_norm="none"):
    lengths = [m, m - 11, m - 3]
    mask = torch.arange(m)[None, :] >= torch.tensor(lengths)[:, None]  # (3, m), right padding
    spec = HeatSpec(rank=rank, basis=basis, chunk_size=16, implementation=implementation,
                    input_norm=input_norm)
    kernel = build_attention(spec, head_dim=head_dim, num_heads=2)
    q, k, v = (t.to(dtype).requires_grad_() for t in qkv(3, 2, n, m, head_dim, seed=3))
    out = kernel(q, k, v, key_padding_mask=mask, causal=causal)
    (out * torch.linspace(-1, 1, head_dim, dtype=dtype)).sum().backward()
    return out.detach(), [t.grad for t in (q, k, v)]


@pytest.mark.parametrize("implementation", ["folded", "fused"])
@pytest.mark.parametrize("basis,rank", [("svd", 8), ("svd", 16), ("taylor", 6), ("taylor", 20)])
@pytest.mark.parametrize(
    "n,m,causal",
    [(37, 37, False), (29, 41, False), (37, 37, True), (5, 37, True)],  # (5, 37): cached decoding
)
@pytest.mark.parametrize("head_dim", [8, 40])  # 40: two full blocks of 16 channels and a partial
def test_fast_paths_match_features_values_and_gradients(
    implementation, basis, rank, n, m, causal, head_dim
):
    out, grads = run(implementation, basis, rank, n, m, causal, head_dim)
    ref, ref_grads = run("features", basis, rank, n, m, causal, head_dim)
    assert relative(out, ref) < 1e-4
    for fast, features in zip(grads, ref_grads):
        assert relative(fast, features) < 1e-4


@pytest.mark.parametrize("implementation", ["folded", "fused"])
@pytest.mark.parametrize("causal", [False, True])
def test_fast_paths_match_features_with_rms_normalised_inputs(implementation, causal):
    out, grads = run(implementation, "svd", 8, 37, 37, causal, 24, input_norm="rms")
    ref, ref_grads = run("features", "svd", 8, 37, 37, causal, 24, input_norm="rms")
    assert relative(out, ref) < 1e-4
    for fast, features in zip(grads, ref_grads):
        assert relative(fast, features) < 1e-4


@pytest.mark.parametrize("input_norm", ["none", "rms"])  # rms: inside the fused passes
@pytest.mark.parametrize("causal", [False, True])
def test_fused_matches_folded_in_float64(causal, input_norm):
    out, grads = run("fused", "svd", 8, 37, 37, causal, 24, torch.float64, input_norm)
    ref, ref_grads = run("folded", "svd", 8, 37, 37, causal, 24, torch.float64, input_norm)
    assert relative(out, ref) < 1e-12
    for fast, folded in zip(grads, ref_grads):
        assert relative(fast, folded) < 1e-12


def test_auto_is_the_default_and_uses_the_fused_kernels_here():
    from heat.attention.fused import fused_available

    assert HeatSpec().implementation == "auto"
    kernel = build_attention(HeatSpec(), head_dim=8, num_heads=2)
    assert fused_available(torch.device("cpu")), "the C++ compiler is part of the test setup"
    assert kernel.implementation_for(torch.device("cpu")) == "fused"


def test_auto_falls_back_to_folded_when_the_kernels_are_disabled(monkeypatch):
    from heat.attention import cpu_kernels, fused

    monkeypatch.setenv("HEAT_CPU_KERNELS", "0")
    cpu_kernels.library.cache_clear()
    cpu_kernels.available.cache_clear()
    try:
        assert not fused.fused_available(torch.device("cpu"))
        auto = build_attention(HeatSpec(), head_dim=8, num_heads=2)
        assert auto.implementation_for(torch.device("cpu")) == "folded"
        strict = build_attention(HeatSpec(implementation="fused"), head_dim=8, num_heads=2)
        q, k, v = qkv(1, 2, 4, 4, 8)
        with pytest.raises(RuntimeError, match="implementation=fused: no fused kernels on cpu"):
            strict(q, k, v)
    finally:
        cpu_kernels.library.cache_clear()
        cpu_kernels.available.cache_clear()


def test_fused_rms_takes_strided_inputs_and_zero_vectors():
    """Queries and keys as a model makes them (a (B, n, H, d) projection transposed), one
    all-zero query row: the same values and gradients as the folded path, all finite."""
    spec = dict(rank=8, chunk_size=16, input_norm="rms")
    fused, folded = (build_attention(HeatSpec(implementation=i, **spec), head_dim=20,
                                     num_heads=3) for i in ("fused", "folded"))
    base = [t.transpose(1, 2).contiguous().transpose(1, 2).detach()
            for t in qkv(2, 3, 19, 19, 20, seed=5)]
    base[0][1, 2, 4] = 0.0
    results = []
    for kernel in (fused, folded):
        q, k, v = (t.clone().requires_grad_() for t in base)
        assert not q.is_contiguous()
        out = kernel(q, k, v, causal=False)
        (out * torch.linspace(-1, 1, 20)).sum().backward()
        results.append((out.detach(), q.grad, k.grad, v.grad))
    for fast, slow in zip(*results):
        assert torch.isfinite(fast).all() and relative(fast, slow) < 1e-5


@pytest.mark.parametrize("threads", [1, 3])  # 3: task ranges that straddle q's and k's rows
@pytest.mark.parametrize("n,m,causal", [(5, 37, True), (29, 41, False), (41, 29, False)])
def test_fused_rms_matches_folded_when_queries_and_keys_differ_in_length(n, m, causal, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, grads = run("fused", "svd", 8, n, m, causal, 24, torch.float64, "rms")
        ref, ref_grads = run("folded", "svd", 8, n, m, causal, 24, torch.float64, "rms")
    finally:
        torch.set_num_threads(before)
    assert relative(out, ref) < 1e-12
    for fast, folded in zip(grads, ref_grads):
        assert relative(fast, folded) < 1e-12
