"""The contract every registered attention variant keeps: shapes, padding, causality, gradients.

The checks are the methods of `AttentionContract`, which runs them on the spec its `spec` fixture
gives (and `self_only`: the spec needs n == m, so the cross-attention checks skip it).
`TestRegisteredVariants` runs them on every contract example of the registry (conftest's
CONTRACT_SPECS); a test file with a variant of its own subclasses `AttentionContract` the same
way (tests/test_seventh_variant.py).
"""

from __future__ import annotations

import pytest
import torch

from conftest import CONTRACT_SPECS, qkv
from heat.attention import AttentionSpec, build_attention

B, H, D = 3, 2, 8
SPEC_IDS = list(CONTRACT_SPECS)
SELF_ONLY = {"nystrom-conv"}  # the conv skip adds V at the query's own position: needs n == m


def skip_if_self_only(self_only: bool) -> None:
    if self_only:
        pytest.skip("the spec is self-attention only")


def make(spec: AttentionSpec, dtype=torch.float64):
    return build_attention(spec, head_dim=D, num_heads=H).to(dtype)


def padding_mask(lengths: list[int], total: int) -> torch.Tensor:
    return torch.arange(total)[None, :] >= torch.tensor(lengths)[:, None]  # (B, total)


class AttentionContract:
    """The contract checks; a subclass provides the `spec` fixture (and `self_only` if so)."""

    @pytest.fixture
    def self_only(self) -> bool:
        return False

    @pytest.mark.parametrize("n,m", [(13, 13), (5, 19)])
    def test_shapes_and_finite(self, spec, self_only, n, m):
        if n != m:
            skip_if_self_only(self_only)
        kernel = make(spec)
        q, k, v = qkv(B, H, n, m, D)
        out = kernel(q, k, v)
        assert out.shape == (B, H, n, D)
        assert torch.isfinite(out).all()

    def test_appending_padded_keys_changes_nothing(self, spec, self_only):
        """Padding by extension: cross-attention over m keys == over m + 6 with the extra 6
        padded."""
        skip_if_self_only(self_only)
        kernel = make(spec)
        n, m, extra = 9, 17, 6
        q, k, v = qkv(B, H, n, m + extra, D)
        lengths = [m, m - 4, m - 9]  # ragged batch: some real keys are padding already
        short = kernel(q, k[:, :, :m], v[:, :, :m], key_padding_mask=padding_mask(lengths, m))
        long = kernel(q, k, v, key_padding_mask=padding_mask(lengths, m + extra))
        torch.testing.assert_close(long, short, rtol=1e-9, atol=1e-10)

    def test_appending_padded_positions_in_self_attention(self, spec):
        """Self-attention: padding appended to queries and keys leaves the real outputs
        unchanged."""
        kernel = make(spec)
        m, extra = 15, 5
        x, _, v = qkv(B, H, m + extra, m + extra, D)
        lengths = [m, m - 3, m - 7]
        short_mask, long_mask = padding_mask(lengths, m), padding_mask(lengths, m + extra)
        short = kernel(x[:, :, :m], x[:, :, :m], v[:, :, :m],
                       key_padding_mask=short_mask, query_padding_mask=short_mask)
        long = kernel(x, x, v, key_padding_mask=long_mask, query_padding_mask=long_mask)
        real = ~short_mask[:, None, :, None]  # compare real query positions only
        torch.testing.assert_close(long[:, :, :m] * real, short * real, rtol=1e-9, atol=1e-10)

    def test_batch_elements_do_not_interact(self, spec):
        kernel = make(spec)
        q, k, v = qkv(B, H, 11, 11, D)
        mask = padding_mask([11, 8, 5], 11)
        batched = kernel(q, k, v, key_padding_mask=mask)
        for b in range(B):
            alone = kernel(q[b:b + 1], k[b:b + 1], v[b:b + 1], key_padding_mask=mask[b:b + 1])
            torch.testing.assert_close(batched[b:b + 1], alone, rtol=1e-9, atol=1e-10)

    def test_causality_by_perturbation(self, spec):
        kernel = make(spec)
        length, t = 23, 10
        q, k, v = qkv(B, H, length, length, D)
        if not kernel.capabilities.causal:
            with pytest.raises(ValueError, match=f"'{kernel.name}' does not support causal"):
                kernel(q, k, v, causal=True)
            return
        out = kernel(q, k, v, causal=True)
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for tensor in (q2, k2, v2):
            tensor[:, :, t + 1:] += 5 * torch.randn_like(tensor[:, :, t + 1:])
        perturbed = kernel(q2, k2, v2, causal=True)
        torch.testing.assert_close(perturbed[:, :, :t + 1], out[:, :, :t + 1], rtol=1e-9,
                                   atol=1e-10)
        assert not torch.allclose(perturbed[:, :, t + 1:], out[:, :, t + 1:])

    def test_causal_queries_are_the_last_positions(self, spec):
        """A cached decode step (n < m queries, all m keys) equals the tail of a full causal
        pass."""
        kernel = make(spec)
        if not kernel.capabilities.causal:
            pytest.skip(f"{kernel.name} is not causal-capable")
        q, k, v = qkv(B, H, 20, 20, D)
        full = kernel(q, k, v, causal=True)
        for n in (1, 6):
            tail = kernel(q[:, :, -n:], k, v, causal=True)
            torch.testing.assert_close(tail, full[:, :, -n:], rtol=1e-9, atol=1e-10)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_gradients_are_finite(self, spec, dtype):
        kernel = make(spec, dtype)
        q, k, v = (t.requires_grad_() for t in qkv(B, H, 12, 12, D, dtype=dtype))
        mask = padding_mask([12, 9, 4], 12)
        causal = kernel.capabilities.causal
        out = kernel(q, k, v, key_padding_mask=mask, query_padding_mask=mask, causal=causal)
        assert out.dtype == dtype
        (out.float() ** 2).sum().backward()
        for name, tensor in [("q", q), ("k", k), ("v", v), *kernel.named_parameters()]:
            assert tensor.grad is not None, f"no gradient for {name}"
            assert torch.isfinite(tensor.grad).all(), f"non-finite gradient for {name}"
        assert v.grad.abs().sum() > 0

    def test_keyless_query_outputs_zero_not_nan(self, spec, self_only):
        skip_if_self_only(self_only)
        kernel = make(spec)
        q, k, v = qkv(2, H, 7, 9, D)
        mask = padding_mask([9, 0], 9)  # the second element has no real key at all
        out = kernel(q, k, v, key_padding_mask=mask)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[1], torch.zeros_like(out[1]))


class TestRegisteredVariants(AttentionContract):
    @pytest.fixture(params=SPEC_IDS)
    def spec_id(self, request) -> str:
        return request.param

    @pytest.fixture
    def spec(self, spec_id: str) -> AttentionSpec:
        return CONTRACT_SPECS[spec_id]

    @pytest.fixture
    def self_only(self, spec_id: str) -> bool:
        return spec_id in SELF_ONLY
