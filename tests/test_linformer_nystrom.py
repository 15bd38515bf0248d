"""Linformer and Nystrom kernels against naive references written here (loops, dense tensors).

The references read nothing from the modules but their learned parameters (Linformer's E and F,
the conv filter), so a shared mistake in a module's vectorised code paths cannot hide.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from heat.attention import LinformerSpec, NystromSpec, SoftmaxSpec, build_attention
from heat.attention.linformer import LinformerAttention
from heat.attention.nystrom import NystromAttention, iterative_pinv

B, H, D = 2, 2, 8
F64 = torch.float64


def _qkv(n: int, m: int, scale: float = 1.0, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = scale * torch.randn(B, H, n, D, generator=g, dtype=F64)
    k = scale * torch.randn(B, H, m, D, generator=g, dtype=F64)
    v = torch.randn(B, H, m, D, generator=g, dtype=F64)
    return q, k, v


def _padding(lengths: list[int], total: int) -> Tensor:
    """(B, total) True at padding, each row valid on its first `lengths[b]` positions."""
    return torch.arange(total)[None, :] >= torch.tensor(lengths)[:, None]


def _append_padding(x: Tensor, extra: int, seed: int) -> Tensor:
    """x with `extra` positions of garbage appended on the sequence axis (dim 2)."""
    g = torch.Generator().manual_seed(seed)
    junk = 100 * torch.randn(*x.shape[:2], extra, x.shape[3], generator=g, dtype=x.dtype)
    return torch.cat([x, junk], dim=2)


def _extend_mask(mask: Tensor, extra: int) -> Tensor:
    return torch.cat([mask, torch.ones(mask.shape[0], extra, dtype=torch.bool)], dim=1)


def _softmax_rows(scores: Tensor) -> Tensor:
    e = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------- Linformer


def _linformer(rank: int = 4, max_length: int = 10, sharing: str = "none") -> LinformerAttention:
    spec = LinformerSpec(rank=rank, max_length=max_length, sharing=sharing)
    kernel = build_attention(spec, head_dim=D, num_heads=H)
    assert isinstance(kernel, LinformerAttention)
    return kernel.double()


def _linformer_reference(
    kernel: LinformerAttention, q: Tensor, k: Tensor, v: Tensor, padding: Tensor
) -> Tensor:
    e, f = (p.detach() for p in kernel.projections())  # (rank, L) each
    length = e.shape[1]
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        # Keys zero-padded to L, with padded rows zeroed.
        k_full = torch.zeros(H, length, D, dtype=F64)
        v_full = torch.zeros(H, length, D, dtype=F64)
        for j in range(k.shape[2]):
            if not padding[b, j]:
                k_full[:, j] = k[b, :, j]
                v_full[:, j] = v[b, :, j]
        for h in range(H):
            scores = q[b, h] @ (e @ k_full[h]).T / D**0.5
            out[b, h] = _softmax_rows(scores) @ (f @ v_full[h])
    return out


def test_linformer_matches_reference_cross_attention_with_padding() -> None:
    kernel = _linformer(sharing="none")
    q, k, v = _qkv(n=5, m=7)
    padding = _padding([7, 4], 7)
    out = kernel(q, k, v, key_padding_mask=padding)
    assert out.shape == (B, H, 5, D)
    torch.testing.assert_close(out, _linformer_reference(kernel, q, k, v, padding))


def test_linformer_padded_keys_change_nothing() -> None:
    kernel = _linformer()
    q, k, v = _qkv(n=5, m=7)
    padding = _padding([7, 4], 7)
    out = kernel(q, k, v, key_padding_mask=padding)
    longer = kernel(
        q, _append_padding(k, 3, 1), _append_padding(v, 3, 2),
        key_padding_mask=_extend_mask(padding, 3),
    )
    torch.testing.assert_close(longer, out)


def test_linformer_rejects_keys_longer_than_max_length() -> None:
    kernel = _linformer(max_length=10)
    q, k, v = _qkv(n=5, m=11)
    with pytest.raises(ValueError, match=r"linformer\.max_length=10.*m=11"):
        kernel(q, k, v)


def test_linformer_sharing_modes() -> None:
    kv = _linformer(sharing="kv")
    assert len(list(kv.parameters())) == 1
    e, f = kv.projections()
    assert e is f

    none = _linformer(sharing="none")
    e, f = none.projections()
    assert len(list(none.parameters())) == 2 and e is not f

    shared: dict = {}
    spec = LinformerSpec(rank=4, max_length=10, sharing="layer")
    first = build_attention(spec, head_dim=D, num_heads=H, shared=shared)
    second = build_attention(spec, head_dim=D, num_heads=H, shared=shared)
    assert first.projections()[0] is second.projections()[0]
    assert first.projections()[0] is first.projections()[1]
    assert len(list(nn.ModuleList([first, second]).parameters())) == 1
    # Without a model-owned dict there is nothing to share across layers: behaves like 'kv'.
    alone = build_attention(spec, head_dim=D, num_heads=H)
    assert len(list(alone.parameters())) == 1
    assert alone.projections()[0] is not first.projections()[0]


def test_linformer_layer_sharing_rejects_a_different_shape() -> None:
    shared: dict = {}
    build_attention(LinformerSpec(rank=4, max_length=10, sharing="layer"),
                    head_dim=D, num_heads=H, shared=shared)
    with pytest.raises(ValueError, match="linformer.rank"):
        build_attention(LinformerSpec(rank=2, max_length=10, sharing="layer"),
                        head_dim=D, num_heads=H, shared=shared)


# ------------------------------------------------------------------------------------ Nystrom


def _nystrom(landmarks: int = 4, iterations: int = 40, conv: int = 0) -> NystromAttention:
    spec = NystromSpec(landmarks=landmarks, pinv_iterations=iterations, conv_kernel=conv)
    kernel = build_attention(spec, head_dim=D, num_heads=H)
    assert isinstance(kernel, NystromAttention)
    return kernel.double()


def _landmark_groups(valid_positions: list[int], landmarks: int) -> list[list[int]]:
    """The non-empty segments of the valid positions, in order."""
    groups: list[list[int]] = [[] for _ in range(landmarks)]
    for rank, position in enumerate(valid_positions):
        groups[rank * landmarks // len(valid_positions)].append(position)
    return [group for group in groups if group]


def _nystrom_reference(
    q: Tensor, k: Tensor, v: Tensor, landmarks: int,
    key_padding: Tensor, query_padding: Tensor | None = None,
) -> Tensor:
    """Dense Nystrom with empty landmarks dropped (not masked) and an exact pseudo-inverse."""
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        keys = [j for j in range(k.shape[2]) if not key_padding[b, j]]
        queries = [i for i in range(q.shape[2]) if query_padding is None or not query_padding[b, i]]
        key_groups = _landmark_groups(keys, landmarks)
        query_groups = _landmark_groups(queries, landmarks)
        for h in range(q.shape[1]):
            qs = q[b, h] / D**0.5
            k_land = torch.stack([k[b, h, g].mean(dim=0) for g in key_groups])
            q_land = torch.stack([qs[g].mean(dim=0) for g in query_groups])
            kernel1 = _softmax_rows(qs @ k_land.T)
            kernel2 = _softmax_rows(q_land @ k_land.T)
            kernel3 = _softmax_rows(q_land @ k[b, h, keys].T)
            out[b, h] = kernel1 @ torch.linalg.pinv(kernel2) @ (kernel3 @ v[b, h, keys])
    return out


def _conv_reference(kernel: NystromAttention, v: Tensor, padding: Tensor) -> Tensor:
    weight = kernel.conv.weight.detach()[:, 0, :, 0]  # (H, width)
    width = weight.shape[1]
    out = torch.zeros_like(v)
    for b in range(v.shape[0]):
        for h in range(v.shape[1]):
            for i in range(v.shape[2]):
                for t in range(width):
                    j = i + t - width // 2
                    if 0 <= j < v.shape[2] and not padding[b, j]:
                        out[b, h, i] += weight[h, t] * v[b, h, j]
    return out


def test_nystrom_matches_dense_reference_cross_attention() -> None:
    kernel = _nystrom(landmarks=4)
    q, k, v = _qkv(n=9, m=13, scale=1.5)
    # 13 valid keys (uneven segments) and 3 (an empty key landmark); 9 valid queries and 2
    # (two empty query landmarks, so kernel2 is effectively 2 x 3).
    padding = _padding([13, 3], 13)
    query_padding = _padding([9, 2], 9)
    out = kernel(q, k, v, key_padding_mask=padding, query_padding_mask=query_padding)
    expected = _nystrom_reference(q, k, v, 4, padding, query_padding)
    keep = ~query_padding[:, None, :, None]
    torch.testing.assert_close(out * keep, expected * keep, rtol=1e-6, atol=1e-8)
    # Outputs at padded queries are unspecified but must stay finite (they reach the backward).
    assert torch.isfinite(out).all()


def test_nystrom_matches_dense_reference_with_query_padding() -> None:
    kernel = _nystrom(landmarks=4)
    q, k, v = _qkv(n=12, m=12, scale=1.5, seed=3)
    padding = _padding([12, 9], 12)
    out = kernel(q, k, v, key_padding_mask=padding, query_padding_mask=padding)
    expected = _nystrom_reference(q, k, v, 4, padding, padding)
    keep = ~padding[:, None, :, None]
    torch.testing.assert_close(out * keep, expected * keep, rtol=1e-6, atol=1e-8)


def test_nystrom_is_softmax_when_keys_fit_in_landmarks() -> None:
    softmax = build_attention(SoftmaxSpec(), head_dim=D, num_heads=H)
    kernel = _nystrom(landmarks=8, iterations=6)
    q, k, v = _qkv(n=5, m=8)
    assert torch.equal(kernel(q, k, v), softmax(q, k, v))
    padding = _padding([8, 0], 8)  # the second element has no key at all
    out = kernel(q, k, v, key_padding_mask=padding)
    assert torch.equal(out, softmax(q, k, v, key_padding_mask=padding))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    # m > l, but no element has more than l valid keys: still exact.
    long_padding = _padding([8, 5], 11)
    q, k, v = _qkv(n=5, m=11)
    assert torch.equal(
        kernel(q, k, v, key_padding_mask=long_padding),
        softmax(q, k, v, key_padding_mask=long_padding),
    )


@pytest.mark.parametrize("lengths", [[14, 10], [14, 3]])
@pytest.mark.parametrize("conv", [0, 3])
def test_nystrom_padded_keys_and_queries_change_nothing(lengths: list[int], conv: int) -> None:
    # Few iterations on purpose: invariance must not depend on the pseudo-inverse converging.
    kernel = _nystrom(landmarks=4, iterations=6, conv=conv)
    q, k, v = _qkv(n=14, m=14, seed=5)
    padding = _padding(lengths, 14)
    out = kernel(q, k, v, key_padding_mask=padding, query_padding_mask=padding)
    extra = 7
    longer_padding = _extend_mask(padding, extra)
    longer = kernel(
        _append_padding(q, extra, 1), _append_padding(k, extra, 2), _append_padding(v, extra, 3),
        key_padding_mask=longer_padding, query_padding_mask=longer_padding,
    )[:, :, :14]
    keep = ~padding[:, None, :, None]
    assert torch.isfinite(longer).all()
    torch.testing.assert_close(longer * keep, out * keep)


def test_iterative_pinv_starts_per_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.eye(6, dtype=F64) + 0.1 * torch.randn(2, 6, 6, generator=g, dtype=F64)
    # A start scaled by the batch's largest norms would leave the small matrix ~1e6 too small,
    # about 12 iterations short of converging.
    batch = base * torch.tensor([1.0, 1e-3], dtype=F64)[:, None, None]
    pinv = iterative_pinv(batch, iterations=10)
    torch.testing.assert_close(pinv, torch.linalg.pinv(batch), rtol=1e-8, atol=0.0)


def test_iterative_pinv_runs_in_fp32_for_bf16() -> None:
    g = torch.Generator().manual_seed(1)
    matrix = torch.eye(6) + 0.1 * torch.randn(6, 6, generator=g)
    pinv = iterative_pinv(matrix.to(torch.bfloat16), iterations=10)
    assert pinv.dtype == torch.bfloat16
    # bf16 iterations stall around 1e-2; fp32 ones land within bf16 rounding of the answer.
    expected = torch.linalg.pinv(matrix.to(torch.bfloat16).float())
    torch.testing.assert_close(pinv.float(), expected, rtol=8e-3, atol=1e-3)


def test_nystrom_batch_elements_are_independent() -> None:
    # Very different scales give very different kernel2 norms; with an unconverged pinv any
    # batch-wide start would couple the two elements.
    kernel = _nystrom(landmarks=4, iterations=3)
    q, k, v = _qkv(n=12, m=12, seed=7)
    scale = torch.tensor([0.2, 4.0], dtype=F64)[:, None, None, None]
    q, k = q * scale, k * scale
    together = kernel(q, k, v)
    for b in range(B):
        alone = kernel(q[b : b + 1], k[b : b + 1], v[b : b + 1])
        torch.testing.assert_close(together[b : b + 1], alone)


def test_nystrom_conv_skip_matches_reference() -> None:
    kernel = _nystrom(landmarks=4, conv=3)
    q, k, v = _qkv(n=12, m=12, scale=1.5, seed=9)
    padding = _padding([12, 9], 12)
    out = kernel(q, k, v, key_padding_mask=padding, query_padding_mask=padding)
    expected = _nystrom_reference(q, k, v, 4, padding, padding)
    expected = expected + _conv_reference(kernel, v, padding)
    keep = ~padding[:, None, :, None]
    torch.testing.assert_close(out * keep, expected * keep, rtol=1e-6, atol=1e-8)


def test_nystrom_conv_skip_rejects_cross_attention() -> None:
    kernel = _nystrom(landmarks=4, conv=3)
    q, k, v = _qkv(n=5, m=12)
    with pytest.raises(ValueError, match="nystrom.conv_kernel"):
        kernel(q, k, v)


def test_nystrom_element_without_keys_gives_zeros() -> None:
    kernel = _nystrom(landmarks=4, iterations=6)
    q, k, v = _qkv(n=10, m=10)
    out = kernel(q, k, v, key_padding_mask=_padding([10, 0], 10))
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_bf16_gives_finite_outputs_and_gradients() -> None:
    q, k, v = (x.to(torch.bfloat16).requires_grad_() for x in _qkv(n=20, m=20))
    padding = _padding([20, 13], 20)
    nystrom = build_attention(NystromSpec(landmarks=4, conv_kernel=3), head_dim=D, num_heads=H)
    linformer = build_attention(LinformerSpec(rank=4, max_length=32), head_dim=D, num_heads=H)
    for kernel in (nystrom, linformer):
        out = kernel(q, k, v, key_padding_mask=padding, query_padding_mask=padding)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        out.float().square().sum().backward()
        grads = [q.grad, k.grad, v.grad, *(p.grad for p in kernel.parameters())]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        q.grad = k.grad = v.grad = None


@pytest.mark.parametrize("name", ["linformer", "nystrom"])
def test_causal_is_refused(name: str) -> None:
    kernel = _linformer() if name == "linformer" else _nystrom()
    assert not kernel.capabilities.causal
    q, k, v = _qkv(n=6, m=6)
    with pytest.raises(ValueError, match=name):
        kernel(q, k, v, causal=True)
