"""HEAT's `key_shift: midrange`: each channel's keys centred on the midpoint of their range
before the polynomial kernel. Exact hadamard is invariant to it, so the shifted HEAT must come
closer to hadamard where keys sit at one end of [-R, R]; the fused kernels (which find the
midrange themselves) must match the eager paths in values and gradients; padded keys must not
move the midrange; causal sites are never shifted."""

from __future__ import annotations

import pytest
import torch

from conftest import qkv
from heat.attention import HadamardSpec, HeatSpec, build_attention
from heat.attention.heat import key_midrange


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def one_sided(n, m, d, dtype, seed=5):
    """Queries ~ N(0, 1.5^2), keys ~ 0.5 N(0, 1) + 2 in every channel: all keys near +R."""
    q, k, v = qkv(3, 2, n, m, d, dtype=dtype, seed=seed)
    return 1.5 * q, 0.5 * k + 2.0, v


def padding(m):
    lengths = [m, m - 11, m - 3]
    return torch.arange(m)[None, :] >= torch.tensor(lengths)[:, None]  # (3, m), right padding


def run(implementation, n, m, causal, d, dtype=torch.float32, key_shift="midrange",
        input_norm="none"):
    spec = HeatSpec(rank=8, chunk_size=16, implementation=implementation, key_shift=key_shift,
                    input_norm=input_norm)
    kernel = build_attention(spec, head_dim=d, num_heads=2)
    q, k, v = (t.requires_grad_() for t in one_sided(n, m, d, dtype))
    out = kernel(q, k, v, key_padding_mask=padding(m), causal=causal)
    (out * torch.linspace(-1, 1, d, dtype=dtype)).sum().backward()
    return out.detach(), [t.grad for t in (q, k, v)]


@pytest.mark.parametrize("implementation", ["folded", "fused"])
@pytest.mark.parametrize("n,m", [(37, 37), (29, 41)])  # causal sites are not shifted (below)
@pytest.mark.parametrize("input_norm", ["none", "rms"])
def test_fast_paths_match_features_with_key_shift(implementation, n, m, input_norm):
    out, grads = run(implementation, n, m, False, 40, input_norm=input_norm)
    ref, ref_grads = run("features", n, m, False, 40, input_norm=input_norm)
    assert relative(out, ref) < 1e-4
    for fast, features in zip(grads, ref_grads):
        assert relative(fast, features) < 1e-4


def test_fused_matches_folded_in_float64_with_key_shift():
    out, grads = run("fused", 29, 41, False, 24, torch.float64)
    ref, ref_grads = run("folded", 29, 41, False, 24, torch.float64)
    assert relative(out, ref) < 1e-12
    for fast, folded in zip(grads, ref_grads):
        assert relative(fast, folded) < 1e-12


@pytest.mark.parametrize("implementation", ["folded", "fused", "features"])
def test_shift_brings_heat_to_hadamard_on_one_sided_keys(implementation):
    q, k, v = one_sided(24, 24, 16, torch.float64)
    mask = padding(24)
    exact = build_attention(HadamardSpec(), head_dim=16, num_heads=2)(
        q, k, v, key_padding_mask=mask)
    errors = {}
    for shift in ("none", "midrange"):
        spec = HeatSpec(rank=12, implementation=implementation, key_shift=shift)
        heat = build_attention(spec, head_dim=16, num_heads=2)
        errors[shift] = relative(heat(q, k, v, key_padding_mask=mask), exact)
    assert errors["midrange"] < 1e-4
    assert errors["none"] > 30 * errors["midrange"]


@pytest.mark.parametrize("implementation", ["folded", "fused", "features"])
def test_padded_keys_do_not_move_the_shift(implementation):
    q, k, v = one_sided(20, 30, 16, torch.float32)
    mask = padding(30)
    kernel = build_attention(HeatSpec(rank=8, implementation=implementation,
                                      key_shift="midrange"), head_dim=16, num_heads=2)
    out = kernel(q, k, v, key_padding_mask=mask)
    far = mask[:, None, :, None]
    k2, v2 = k.masked_fill(far, -50.0), v.masked_fill(far, 7.0)  # padded keys far to one side
    torch.testing.assert_close(kernel(q, k2, v2, key_padding_mask=mask), out)


@pytest.mark.parametrize("implementation", ["folded", "fused"])
def test_causal_sites_are_not_shifted(implementation):
    q, k, v = one_sided(25, 25, 16, torch.float32)
    outs = [build_attention(HeatSpec(rank=8, implementation=implementation, key_shift=shift),
                            head_dim=16, num_heads=2)(q, k, v, causal=True)
            for shift in ("none", "midrange")]
    torch.testing.assert_close(outs[1], outs[0])


def test_midrange_ignores_padding_and_is_zero_without_valid_keys():
    b = torch.tensor([[1.0, 3.0, -9.0], [2.0, 2.0, 2.0]]).view(2, 1, 3, 1)
    mask = torch.tensor([[False, False, True], [True, True, True]])
    middle = key_midrange(b, mask)
    assert middle.flatten().tolist() == [2.0, 0.0]
    assert key_midrange(b, None).flatten().tolist() == [-3.0, 2.0]


def test_spec_checks_and_labels():
    assert "midrange-shift" in HeatSpec(key_shift="midrange").label()
    assert HeatSpec(key_shift="midrange").exact_counterpart() == HadamardSpec()
    with pytest.raises(ValueError, match="key_shift"):
        HeatSpec(key_shift="mean")
    with pytest.raises(ValueError, match="key shift on CUDA"):
        HeatSpec(key_shift="midrange", implementation="fused").check_runs_on("cuda", False)
