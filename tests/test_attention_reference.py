"""Each exact/approximate kernel of softmax, hadamard, heat and taylor against a naive reference
written here with python loops or dense tensors (fp64), with padding, n != m and batch > 1."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import qkv
from heat.attention import HadamardSpec, HeatSpec, SoftmaxSpec, TaylorSpec, build_attention
from heat.attention.base import keep_mask
from heat.attention.hadamard import bounded, exp_chunk, softmax_chunk

B, H, D = 2, 3, 5


def visible(b: int, i: int, j: int, n: int, m: int, lengths, causal: bool) -> bool:
    """Naive visibility: key j is real, and (causal) not after query i (queries = last n)."""
    return j < lengths[b] and (not causal or j <= i + m - n)


def padding(lengths, m):
    return torch.arange(m)[None, :] >= torch.tensor(lengths)[:, None]


def loop_attention(q, k, v, lengths, causal, weight):
    """out[b,h,i] = sum_j w(i,j) v_j / sum_j w(i,j) over visible keys; weight(b,h,i,j) -> scalar
    or per-channel vector."""
    _, _, n, d = q.shape
    m = k.shape[2]
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for i in range(n):
                num = torch.zeros(d, dtype=q.dtype)
                den = torch.zeros(d, dtype=q.dtype)
                for j in range(m):
                    if visible(b, i, j, n, m, lengths, causal):
                        w = weight(b, h, i, j)
                        num += w * v[b, h, j]
                        den += w
                out[b, h, i] = num / den
    return out


CASES = [  # (n, m, lengths, causal)
    (6, 9, [9, 4], False),
    (7, 7, [7, 5], True),
    (3, 8, [8, 8], True),  # cached decoding: the 3 queries are positions 5..7
]


@pytest.mark.parametrize("n,m,lengths,causal", CASES)
def test_softmax_matches_loops(n, m, lengths, causal):
    q, k, v = qkv(B, H, n, m, D)
    kernel = build_attention(SoftmaxSpec(), head_dim=D, num_heads=H)
    out = kernel(q, k, v, key_padding_mask=padding(lengths, m), causal=causal)
    tau = 1 / math.sqrt(D)
    ref = loop_attention(
        q, k, v, lengths, causal, lambda b, h, i, j: torch.exp(tau * q[b, h, i] @ k[b, h, j])
    )
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("R", [2.5, 8.0])  # exp(a b - R^2) directly; the softmax path above 6
@pytest.mark.parametrize("n,m,lengths,causal", CASES)
def test_hadamard_matches_loops(n, m, lengths, causal, R):
    q, k, v = qkv(B, H, n, m, D)
    kernel = build_attention(HadamardSpec(bound=R, chunk_size=4), head_dim=D, num_heads=H)
    out = kernel(q, k, v, key_padding_mask=padding(lengths, m), causal=causal)
    a, b_ = R * torch.tanh(q / R), R * torch.tanh(k / R)
    ref = loop_attention(  # one softmax per channel: a per-channel weight vector
        q, k, v, lengths, causal, lambda b, h, i, j: torch.exp(a[b, h, i] * b_[b, h, j])
    )
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_hadamard_exp_path_matches_softmax_path_in_float32(causal):
    """Values and gradients of the direct exp(a b - R^2) chunks against the max-subtracting
    softmax chunks, fp32, with padding; at R = 6 (the largest bound the exp path takes) with
    every logit at -R^2 or worse nothing underflows to a zero denominator."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8, requires_grad=True) for _ in range(3))
    keep = keep_mask(padding([9, 4], 9), 9, 9, causal, q.device).expand(-1, -1, 9, -1)[..., None]
    a, b = bounded(q, 3.0), bounded(k, 3.0)
    outs = []
    for out in (exp_chunk(a, b, v, keep, bound=3.0), softmax_chunk(a, b, v, keep)):
        outs.append((out, *torch.autograd.grad(out.pow(2).sum(), (q, k, v), retain_graph=True)))
    for fast, slow in zip(*outs):
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    edge = build_attention(HadamardSpec(bound=6.0), head_dim=8, num_heads=3)
    big = torch.full((1, 3, 4, 8), 1e3)
    out = edge(big, -big, torch.randn(1, 3, 4, 8), causal=causal)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("implementation", ["folded", "fused", "features"])
@pytest.mark.parametrize("basis", ["svd", "taylor"])
@pytest.mark.parametrize("n,m,lengths,causal", CASES)
def test_heat_matches_dense_factorised_kernel(implementation, basis, n, m, lengths, causal):
    """The linear-attention algebra (prefix sums, chunks, masks) against the dense kernel
    sum_s phi_s(a) phi_s(b), per channel. The basis itself is tested in test_heat_basis.py."""
    q, k, v = qkv(B, H, n, m, D)
    spec = HeatSpec(rank=5, basis=basis, chunk_size=2, implementation=implementation)
    kernel = build_attention(spec, head_dim=D, num_heads=H)
    out = kernel(q, k, v, key_padding_mask=padding(lengths, m), causal=causal)
    R = kernel.spec.bound
    phi_a = kernel.features(R * torch.tanh(q / R))  # (B, H, n, d, r)
    phi_b = kernel.features(R * torch.tanh(k / R))
    ref = loop_attention(
        q, k, v, lengths, causal, lambda b, h, i, j: (phi_a[b, h, i] * phi_b[b, h, j]).sum(-1)
    )
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("order,feature_dim", [(2, 0), (4, 0), (2, 3), (4, 2)])
@pytest.mark.parametrize("n,m,lengths,causal", CASES)
def test_taylor_matches_truncated_exponential(order, feature_dim, n, m, lengths, causal):
    """Features phi(x).phi(y) must equal sum_{i<=p} (tau q.k)^i / i!, computed directly."""
    q, k, v = qkv(B, H, n, m, D)
    spec = TaylorSpec(order=order, feature_dim=feature_dim, chunk_size=3)
    kernel = build_attention(spec, head_dim=D, num_heads=H).double()
    out = kernel(q, k, v, key_padding_mask=padding(lengths, m), causal=causal)
    qf, kf = (kernel.projection(q), kernel.projection(k)) if feature_dim else (q, k)
    tau = 1 / math.sqrt(feature_dim or D)

    def truncated_exp(b, h, i, j):
        s = tau * qf[b, h, i] @ kf[b, h, j]
        return sum(s**p / math.factorial(p) for p in range(order + 1))

    ref = loop_attention(q, k, v, lengths, causal, truncated_exp)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-11)


def test_taylor_feature_count_is_symmetric_terms_only():
    from heat.attention.taylor import feature_count

    kernel = build_attention(TaylorSpec(order=2), head_dim=4, num_heads=1)
    x = torch.randn(3, 4, dtype=torch.float64)
    assert kernel.features(x).shape[-1] == feature_count(4, 2) == 1 + 4 + 10


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n,m,causal", [(9, 9, False), (9, 9, True), (4, 11, True), (6, 10, False)])
def test_hadamard_fused_cpu_kernel_matches_eager_chunks(monkeypatch, n, m, causal, threads):
    """The C++ kernels (`cpu_hadamard`) against the eager exp chunks they replace: values and
    gradients in float32, with padding, a batch row whose keys are all padding (its queries
    output 0), cached-decoding offsets (n < m), rms inputs and a partial channel block (d 20)."""
    from heat.attention import cpu_kernels, hadamard

    assert hadamard._fused_here(torch.device("cpu"), torch.float32)
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, n, 20) * 2, torch.randn(3, 2, m, 20) * 2, torch.randn(3, 2, m, 20)
    mask = padding([m, m - 3, 0], m)
    kernel = build_attention(HadamardSpec(input_norm="rms"), head_dim=20, num_heads=2)
    outs, before = [], torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for setting in ("1", "0"):  # HEAT_CPU_KERNELS=0: the eager chunks
            monkeypatch.setenv("HEAT_CPU_KERNELS", setting)
            cpu_kernels.library.cache_clear()  # the decision is cached per process
            cpu_kernels.available.cache_clear()
            assert hadamard._fused_here(torch.device("cpu"), torch.float32) == (setting == "1")
            leaves = [x.clone().requires_grad_() for x in (q, k, v)]
            out = kernel(*leaves, key_padding_mask=mask, causal=causal)
            outs.append((out, *torch.autograd.grad(out.pow(2).sum(), leaves)))
    finally:
        torch.set_num_threads(before)
        monkeypatch.undo()
        cpu_kernels.library.cache_clear()
        cpu_kernels.available.cache_clear()
    for fused, eager in zip(*outs):
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-6)
    assert (outs[0][0][2] == 0).all()
