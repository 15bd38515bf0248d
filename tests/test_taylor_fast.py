"""The chunked non-causal Taylor path (hand-written backward) against the materialised-features
reference: values and gradients (inputs and the learned projection) in fp32 within 1e-4, with
padding, batch > 1 and several ragged chunks."""

from __future__ import annotations

import pytest
import torch

from heat.attention import build_attention
from heat.attention import taylor_fast
from heat.attention.specs import TaylorSpec


def run(implementation, order, feature_dim, n, m, mask):
    torch.manual_seed(1)
    spec = TaylorSpec(order=order, feature_dim=feature_dim, implementation=implementation,
                      allow_odd=order % 2 == 1)
    kernel = build_attention(spec, head_dim=12, num_heads=3)
    torch.manual_seed(2)
    q, k, v = (torch.randn(3, 3, length, 12, requires_grad=True) for length in (n, m, m))
    out = kernel(q, k, v, key_padding_mask=mask)
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
