"""`input_norm: rms` for `hadamard` and `heat`: queries and keys divided by their root mean
square over the head's channels before the bound (HEAT's basis is fitted for unit-variance
inputs; trained queries and keys drift away from it). Causality and padding are covered by the
contract tests (`hadamard-rms`, `heat-svd-rms` in `contract_examples`)."""

from __future__ import annotations

import pytest
import torch

from conftest import qkv
from heat.attention import HadamardSpec, HeatSpec, SpecError, build_attention
from heat.attention.hadamard import normalised


def test_rms_normalisation_gives_unit_mean_square_per_position_and_keeps_zeros():
    x = torch.randn(2, 3, 5, 16, dtype=torch.float64) * 7.0
    x[0, 0, 0] = 0.0
    y = normalised(x, "rms")
    assert torch.allclose(y[0, 0, 1:].pow(2).mean(-1), torch.ones(4, dtype=torch.float64))
    assert torch.equal(y[0, 0, 0], torch.zeros(16, dtype=torch.float64))
    assert normalised(x, "none") is x


@pytest.mark.parametrize("spec_class", [HadamardSpec, HeatSpec])
def test_scaling_queries_and_keys_changes_nothing_once_normalised(spec_class):
    """The point of the option: a query or key 5x too large lands in the same place."""
    q, k, v = qkv(2, 2, 9, 11, 8)
    kernel = build_attention(spec_class(input_norm="rms"), head_dim=8, num_heads=2)
    plain = build_attention(spec_class(), head_dim=8, num_heads=2)
    assert torch.allclose(kernel(q, k, v), kernel(5 * q, 3 * k, v), atol=1e-6)  # eps 1e-6
    assert not torch.allclose(plain(q, k, v), plain(5 * q, 3 * k, v), atol=1e-3)


def test_heat_with_normalised_inputs_approximates_hadamard_with_them_even_for_large_inputs():
    q, k, v = qkv(2, 4, 64, 64, 16)
    errors = {}
    for norm in ("none", "rms"):
        heat = build_attention(HeatSpec(rank=8, input_norm=norm), head_dim=16, num_heads=4)
        exact = build_attention(heat.spec.exact_counterpart(), head_dim=16, num_heads=4)
        want = exact(2.5 * q, 2.5 * k, v)
        errors[norm] = float((heat(2.5 * q, 2.5 * k, v) - want).norm() / want.norm())
    assert errors["rms"] < 2e-3 < errors["none"]


def test_the_exact_counterpart_keeps_the_normalisation_and_bad_values_are_named():
    assert HeatSpec(input_norm="rms").exact_counterpart() == HadamardSpec(input_norm="rms")
    with pytest.raises(SpecError, match="input_norm"):
        HeatSpec(input_norm="layer")
    assert "rms-norm" in HeatSpec(input_norm="rms").label()
