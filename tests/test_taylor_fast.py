"""The chunked Taylor paths (moments, hand-written backward), non-causal and causal, against the
materialised-features reference: values and gradients (inputs and the learned projection) in fp32
within 1e-4, with padding, batch > 1, several ragged chunks and (causal) more keys than queries."""

from __future__ import annotations

import pytest
import torch

from heat.attention import TaylorSpec, build_attention, taylor_fast


def run(implementation, order, feature_dim, n, m, mask, causal=False, chunk_size=128):
    torch.manual_seed(1)
    spec = TaylorSpec(order=order, feature_dim=feature_dim, implementation=implementation,
                      allow_odd=order % 2 == 1, chunk_size=chunk_size)
    kernel = build_attention(spec, head_dim=12, num_heads=3)
    torch.manual_seed(2)
    q, k, v = (torch.randn(3, 3, length, 12, requires_grad=True) for length in (n, m, m))
    out = kernel(q, k, v, key_padding_mask=mask, causal=causal)
    (out * torch.linspace(-1, 1, 12)).sum().backward()
    return [out.detach(), q.grad, k.grad, v.grad, *[p.grad for p in kernel.parameters()]]


@pytest.mark.filterwarnings("ignore:taylor.order=1 is odd")
@pytest.mark.parametrize("order,feature_dim", [(2, 0), (2, 5), (1, 0)])
@pytest.mark.parametrize("n,m", [(37, 29), (40, 40)])
@pytest.mark.parametrize("padded", [False, True])
def test_chunked_matches_features(monkeypatch, order, feature_dim, n, m, padded):
    monkeypatch.setattr(taylor_fast, "CHUNK_ELEMENTS", 1)  # chunks of 16: ragged, several
    mask = torch.zeros(3, m, dtype=torch.bool)
    if padded:
        mask[1, -6:] = True
        mask[2, :4] = True
    fast = run("auto", order, feature_dim, n, m, mask)
    reference = run("features", order, feature_dim, n, m, mask)
    assert len(fast) == len(reference) == 4 + (feature_dim > 0)
    for a, b in zip(fast, reference):
        assert float((a - b).norm() / b.norm()) < 1e-4


@pytest.mark.filterwarnings("ignore:taylor.order=1 is odd")
@pytest.mark.parametrize("order,feature_dim", [(2, 0), (2, 5), (1, 0)])
@pytest.mark.parametrize("n,m", [(37, 37), (29, 37), (1, 9)])
@pytest.mark.parametrize("padded", [False, True])
def test_causal_chunked_matches_features(order, feature_dim, n, m, padded):
    mask = torch.zeros(3, m, dtype=torch.bool)
    if padded:
        mask[1, -6:] = True
        mask[2, :4] = True  # with m > n: padded keys among the ones every query sees
    fast = run("auto", order, feature_dim, n, m, mask, causal=True, chunk_size=8)  # ragged
    reference = run("features", order, feature_dim, n, m, mask, causal=True, chunk_size=8)
    assert len(fast) == len(reference) == 4 + (feature_dim > 0)
    for a, b in zip(fast, reference):
        assert float((a - b).norm() / b.norm()) < 1e-4


def test_causal_output_ignores_later_keys():
    kernel = build_attention(TaylorSpec(chunk_size=4), head_dim=6, num_heads=2)
    q, k, v = (torch.randn(2, 2, 11, 6) for _ in range(3))
    out = kernel(q, k, v, causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 7:], v2[:, :, 7:] = torch.randn(2, 2, 4, 6), torch.randn(2, 2, 4, 6)
    torch.testing.assert_close(kernel(q, k2, v2, causal=True)[:, :, :7], out[:, :, :7])


def test_a_query_with_no_visible_key_outputs_zero():
    kernel = build_attention(TaylorSpec(), head_dim=4, num_heads=1)
    q, k, v = (torch.randn(2, 1, 5, 4) for _ in range(3))
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1] = True
    out = kernel(q, k, v, key_padding_mask=mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert out[0].abs().sum() > 0


def test_feature_inner_product_is_the_order_two_polynomial():
    x, y = torch.randn(7, 6, dtype=torch.float64), torch.randn(7, 6, dtype=torch.float64)
    s = (x * y).sum(-1)
    inner = (taylor_fast.features(x, 2) * taylor_fast.features(y, 2)).sum(-1)
    torch.testing.assert_close(inner, 1 + s + s**2 / 2)
