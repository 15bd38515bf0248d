"""The folded HEAT path (moments x C C^T, Horner) against the materialised-features reference:
values and gradients in fp32, causal and not, padding, batch > 1, ragged chunks."""

from __future__ import annotations

import pytest
import torch

from conftest import qkv
from heat.attention import HeatSpec, build_attention


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("basis,rank", [("svd", 8), ("svd", 16), ("taylor", 6)])
@pytest.mark.parametrize(
    "n,m,causal",
    [(37, 37, False), (29, 41, False), (37, 37, True), (5, 37, True)],  # (5, 37): cached decoding
)
def test_folded_matches_features_values_and_gradients(basis, rank, n, m, causal):
    lengths = [m, m - 11, m - 3]
    mask = torch.arange(m)[None, :] >= torch.tensor(lengths)[:, None]  # (3, m), right padding
    outputs, grads = {}, {}
    for implementation in ("folded", "features"):
        spec = HeatSpec(rank=rank, basis=basis, chunk_size=16, implementation=implementation)
        kernel = build_attention(spec, head_dim=8, num_heads=2)
        q, k, v = (t.float().requires_grad_() for t in qkv(3, 2, n, m, 8, seed=3))
        out = kernel(q, k, v, key_padding_mask=mask, causal=causal)
        (out * torch.linspace(-1, 1, 8)).sum().backward()
        outputs[implementation] = out.detach()
        grads[implementation] = [t.grad for t in (q, k, v)]
    assert relative(outputs["folded"], outputs["features"]) < 1e-4
    for folded, features in zip(grads["folded"], grads["features"]):
        assert relative(folded, features) < 1e-4


def test_folded_is_the_default():
    assert HeatSpec().implementation == "folded"
