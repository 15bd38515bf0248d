"""HEAT's kernel bases (DESIGN.md section 3 notes): exactness at the quadrature nodes, convergence
to `hadamard` as the rank grows, the input-weighted svd basis beating the Taylor basis, Taylor
positivity, and caching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import qkv
from heat.attention import HadamardSpec, HeatSpec, TaylorSpec, build_attention
from heat.attention.exp_basis import (
    polynomial_coefficients,
    svd_basis,
    svd_features,
    svd_max_rank,
    taylor_features,
)


def relative_error(output, reference) -> float:
    return float((output - reference).norm() / reference.norm())


def test_highest_rank_svd_basis_reproduces_the_weighted_kernel():
    """At the largest resolvable rank, phi(x_g) . phi(x_h) = exp(x_g x_h) in the input-weighted
    norm (Eckart-Young: the error is the first dropped eigenvalue, < 1e-12 of the largest)."""
    rank = svd_max_rank(3.0, 1.0, 24)
    assert rank == 16
    basis = svd_basis(3.0, 1.0, rank, 24)
    x = basis.nodes
    z, w = np.polynomial.hermite_e.hermegauss(24)
    sqrt_w = torch.from_numpy(np.sqrt(w / w.sum()))
    phi = svd_features(x, basis)  # (G, r)
    weighted_error = sqrt_w[:, None] * (phi @ phi.T - torch.exp(torch.outer(x, x))) * sqrt_w
    assert torch.linalg.matrix_norm(weighted_error, ord=2) < 1e-10 * basis.eigenvalues[0]


def test_svd_basis_is_the_weighted_eigendecomposition():
    """Independent check with numpy's SVD of W^1/2 K W^1/2: same rank-r kernel approximation."""
    bound, sigma, rank, nodes = 3.0, 1.0, 6, 24
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    x = bound * np.tanh(sigma * z / bound)
    sw = np.sqrt(w)
    u, s, _ = np.linalg.svd(sw[:, None] * np.exp(np.outer(x, x)) * sw[None, :])
    low_rank = (u[:, :rank] * s[:rank]) @ u[:, :rank].T / np.outer(sw, sw)  # W^-1/2 M_r W^-1/2
    phi = svd_features(torch.from_numpy(x), svd_basis(bound, sigma, rank, nodes)).numpy()
    # eigh (the basis) and svd (here) agree to ~1e-9 of the largest entry, depending on the LAPACK
    # build (numpy 2.4.6: 1.3e-9 at [0, 0]); a wrong basis would be off by O(1)
    np.testing.assert_allclose(phi @ phi.T, low_rank, rtol=0, atol=1e-8 * np.abs(low_rank).max())


def test_basis_is_cached_and_has_no_parameters():
    assert svd_basis(3.0, 1.0, 8, 24) is svd_basis(3.0, 1.0, 8, 24)
    assert polynomial_coefficients("svd", 3.0, 1.0, 8, 24) is polynomial_coefficients(
        "svd", 3.0, 1.0, 8, 24)
    kernel = build_attention(HeatSpec(rank=8), head_dim=4, num_heads=2)
    assert list(kernel.parameters()) == []
    assert kernel.to(torch.bfloat16).coefficients.dtype == torch.float64
    assert kernel.coefficients.shape == (12, 8)  # P = r + 4 monomials


def test_polynomial_fit_matches_the_eigenfunctions_where_inputs_fall():
    """The fitted phi(a) = V(a/R) C against the exact Nystrom-extension eigenfunctions."""
    a = 3.0 * torch.tanh(torch.randn(20000, dtype=torch.float64) / 3.0)  # the input measure
    exact = svd_features(a, svd_basis(3.0, 1.0, 8, 24))
    fitted = build_attention(HeatSpec(rank=8), head_dim=4, num_heads=1).features(a)
    assert relative_error(fitted, exact) < 1e-3


def heat_errors(basis: str, ranks, causal=False) -> dict[int, float]:
    """DESIGN.md's measurement: R = 3, q, k ~ N(0, 1), output error against hadamard."""
    q, k, v = qkv(2, 4, 96, 96, 16, seed=1)
    reference = build_attention(HadamardSpec(bound=3.0), head_dim=16, num_heads=4)
    exact = reference(q, k, v, causal=causal)
    return {
        rank: relative_error(
            build_attention(HeatSpec(rank=rank, basis=basis), head_dim=16, num_heads=4)(
                q, k, v, causal=causal), exact)
        for rank in ranks
    }


def test_heat_converges_to_hadamard_as_rank_grows():
    ranks = (2, 4, 6, 8, 10, 12)
    for basis in ("svd", "taylor"):
        errors = heat_errors(basis, ranks)
        values = [errors[r] for r in ranks]
        assert all(a > b for a, b in zip(values, values[1:])), (basis, errors)
    svd = heat_errors("svd", (4, 8, 12))
    # DESIGN.md measured 6.3e-2, 2.9e-4, 1.7e-7; bounds leave room for the sample, not for a
    # uniform-weight basis (9.4e-1, 1.3e-2, 2.8e-5)
    assert svd[4] < 1e-1
    assert svd[8] < 1e-3
    assert svd[12] < 2e-6


def test_weighted_svd_basis_beats_taylor_basis_from_rank_4():
    ranks = (4, 6, 8, 12)
    svd, taylor = heat_errors("svd", ranks), heat_errors("taylor", ranks)
    for rank in ranks:
        assert svd[rank] < taylor[rank] / 2, (rank, svd[rank], taylor[rank])


def test_causal_heat_converges_too():
    errors = heat_errors("svd", (4, 8, 12), causal=True)
    assert errors[4] > errors[8] > errors[12]
    assert errors[12] < 1e-5


def truncated_exp(s: torch.Tensor, order: int) -> torch.Tensor:
    return sum(s**p / math.factorial(p) for p in range(order + 1))


@pytest.mark.parametrize("order", [2, 4])
def test_even_taylor_orders_have_positive_normalisers(order):
    s = torch.linspace(-40, 40, 8001, dtype=torch.float64)
    assert (truncated_exp(s, order) > 0).all()
    # the normalisers the kernel forms from its features, with strongly anti-aligned q and k
    kernel = build_attention(TaylorSpec(order=order), head_dim=8, num_heads=1)
    q = torch.randn(64, 8, dtype=torch.float64) * 4
    phi_q, phi_k = kernel.features(q * 8**-0.25), kernel.features(-q * 8**-0.25)
    normalisers = phi_q @ phi_k.T  # (64, 64): T_p(tau q_i . (-q_j))
    assert (normalisers > 0).all()
    assert normalisers.min() < 1.0  # the test really reached negative dot products


def test_odd_taylor_orders_can_go_negative_and_warn():
    assert truncated_exp(torch.tensor(-5.0, dtype=torch.float64), 3) < 0
    with pytest.warns(UserWarning, match="odd"):
        build_attention(TaylorSpec(order=3, allow_odd=True), head_dim=4, num_heads=1)


def test_taylor_basis_features():
    a = torch.tensor([0.0, -1.5, 2.0], dtype=torch.float64)
    phi = taylor_features(a, 4)
    expected = torch.stack([a**p / math.sqrt(math.factorial(p)) for p in range(4)], dim=-1)
    torch.testing.assert_close(phi, expected)
    b = torch.tensor([0.7], dtype=torch.float64)
    torch.testing.assert_close(  # rank r: exp(ab) truncated after the a^(r-1) b^(r-1) term
        phi @ taylor_features(b, 4).T, truncated_exp(a[:, None] * b[None, :], 3))
