"""Low-rank factorisations of the scalar kernel kappa(a, b) = exp(a b) on [-R, R]^2.

HEAT (DESIGN.md section 3) replaces the per-channel kernel of `hadamard` by
    exp(a b) ~ sum_{s < r} phi_s(a) phi_s(b).

basis='svd': the rank-r optimum in L2 of the INPUT measure. Inputs are a = R tanh(z / R) with
z ~ N(0, sigma^2); take Gauss-Hermite nodes z_g with weights w_g for that Gaussian, map them to
x_g = R tanh(z_g / R), and eigen-decompose the weighted kernel matrix
    M = W^1/2 K W^1/2 = U diag(lambda) U^T,   K_gh = exp(x_g x_h).
The eigenfunctions, evaluated anywhere by the Nystrom extension, are
    phi_s(a) = sum_g sqrt(w_g) exp(a x_g) U_gs / sqrt(lambda_s),
which reproduce K_gh exactly at the nodes for r = G. (The paper's eqs. 4-5, made precise: a uniform
weight on [-R, R] wastes the rank on corners where exp(ab) is huge and inputs are rare.)

basis='taylor': phi_p(a) = a^p / sqrt(p!), p < r, the truncated series of exp(ab).

Bases are computed once per (R, sigma, r, G) in float64, cached, and never receive gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class SvdBasis:
    """phi(a) = exp(a[..., None] * nodes) @ coefficients, shapes (G,) and (G, r)."""

    nodes: Tensor  # (G,) float64, the mapped quadrature nodes x_g
    coefficients: Tensor  # (G, r) float64, sqrt(w_g) U_gs / sqrt(lambda_s)
    eigenvalues: Tensor  # (r,) float64, lambda_s (for reporting the truncation)


RESOLVABLE_EIGENVALUE = 1e-12
"""Eigenvalues below this fraction of the largest are float64 round-off, not kernel structure."""


def _weighted_kernel(bound: float, sigma: float, nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mapped nodes x_g, sqrt(w_g), and M = W^1/2 K W^1/2 for N(0, sigma^2) inputs."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)  # probabilists' Hermite: weight exp(-z^2/2)
    w = w / w.sum()  # a probability measure: N(0, 1) at the nodes z
    x = bound * np.tanh(sigma * z / bound)  # (G,)
    sqrt_w = np.sqrt(w)
    return x, sqrt_w, sqrt_w[:, None] * np.exp(np.outer(x, x)) * sqrt_w[None, :]


@lru_cache(maxsize=64)
def svd_max_rank(bound: float, sigma: float, nodes: int) -> int:
    """The largest rank whose eigenvalues float64 resolves (e.g. 16 for R=3, sigma=1, G=24)."""
    lam = np.linalg.eigvalsh(_weighted_kernel(bound, sigma, nodes)[2])
    return int((lam > RESOLVABLE_EIGENVALUE * lam.max()).sum())


@lru_cache(maxsize=64)
def svd_basis(bound: float, sigma: float, rank: int, nodes: int) -> SvdBasis:
    """The input-weighted eigenfunction basis of exp(ab), cached per (R, sigma, r, G)."""
    high = svd_max_rank(bound, sigma, nodes)
    if not 1 <= rank <= high:  # HeatSpec checks this first; kept for direct callers
        raise ValueError(f"heat.rank must be in [1, {high}], got {rank}")
    x, sqrt_w, weighted = _weighted_kernel(bound, sigma, nodes)
    lam, u = np.linalg.eigh(weighted)
    order = np.argsort(lam)[::-1][:rank]  # eigh sorts ascending; keep the largest r
    lam, u = lam[order], u[:, order]
    coefficients = sqrt_w[:, None] * u / np.sqrt(lam)[None, :]  # (G, r)
    return SvdBasis(
        nodes=torch.from_numpy(x),
        coefficients=torch.from_numpy(np.ascontiguousarray(coefficients)),
        eigenvalues=torch.from_numpy(np.ascontiguousarray(lam)),
    )


@lru_cache(maxsize=64)
def taylor_scales(rank: int) -> Tensor:
    """1 / sqrt(p!) for p < rank, float64 (r,)."""
    return torch.tensor([1.0 / math.sqrt(math.factorial(p)) for p in range(rank)], dtype=torch.float64)


def svd_features(a: Tensor, basis: SvdBasis) -> Tensor:
    """phi_s(a) for every element of a: (...,) -> (..., r), in a's dtype."""
    nodes = basis.nodes.to(device=a.device, dtype=a.dtype)
    coefficients = basis.coefficients.to(device=a.device, dtype=a.dtype)
    return torch.exp(a[..., None] * nodes) @ coefficients  # (..., G) @ (G, r)


def taylor_features(a: Tensor, rank: int) -> Tensor:
    """a^p / sqrt(p!) for p < rank: (...,) -> (..., r), in a's dtype."""
    powers = torch.arange(rank, device=a.device, dtype=a.dtype)
    scales = taylor_scales(rank).to(device=a.device, dtype=a.dtype)
    # a ** 0 must be 1 also at a == 0 (torch.pow gives 1 for 0 ** 0)
    return torch.pow(a[..., None], powers) * scales


POLYNOMIAL_EXTRA_DEGREE = 4
"""P = r + 4 monomials fit the r eigenfunctions as well as the exact Nystrom extension (rank 8:
2.9e-4 output error against hadamard both ways; P = r gives 1.9e-2). DESIGN.md section 8."""


@lru_cache(maxsize=64)
def polynomial_coefficients(
    basis: str, bound: float, sigma: float, rank: int, nodes: int
) -> Tensor:
    """C (P, r), float64, with phi(a) = V(a / R) C and V(t) = (1, t, ..., t^(P-1)).

    svd: each eigenfunction fit by least squares in the input measure (Gauss-Hermite nodes for
    N(0, sigma^2) mapped through R tanh(z / R), four times as many as the basis uses), so the
    fit spends its accuracy where inputs fall. taylor: exact, C = diag(R^p / sqrt(p!)), P = r.
    """
    if basis == "taylor":
        return torch.diag(taylor_scales(rank) * bound ** torch.arange(rank, dtype=torch.float64))
    eigen = svd_basis(bound, sigma, rank, nodes)
    z, w = np.polynomial.hermite_e.hermegauss(4 * nodes)
    t = np.tanh(sigma * z / bound)  # (N,) in (-1, 1)
    targets = svd_features(torch.from_numpy(bound * t), eigen).numpy()  # (N, r)
    degree = rank + POLYNOMIAL_EXTRA_DEGREE
    vandermonde = t[:, None] ** np.arange(degree)[None, :]  # (N, P)
    sqrt_w = np.sqrt(w / w.sum())[:, None]
    coefficients, *_ = np.linalg.lstsq(sqrt_w * vandermonde, sqrt_w * targets, rcond=None)
    return torch.from_numpy(np.ascontiguousarray(coefficients))  # (P, r)


@lru_cache(maxsize=64)
def fit_report(basis: str, bound: float, sigma: float, rank: int, nodes: int) -> dict[str, float]:
    """How good the cached polynomial factorisation is, on nodes the fit never saw.

    - `kernel_rms`: weighted RMS over (a, b) of V(t_a) C C^T V(t_b)^T - exp(ab), relative to the
      weighted RMS of exp(ab), inputs a, b ~ R tanh(N(0, sigma^2) / R): the kernel error HEAT
      makes where its inputs fall.
    - `fit_rms` (svd only, else 0): weighted RMS of V(t) C minus the exact eigenfunctions,
      relative to their RMS: what the degree-(P-1) polynomial loses against the Nystrom extension.
    - `degree`: P, the number of monomials.
    """
    coefficients = polynomial_coefficients(basis, bound, sigma, rank, nodes).numpy()
    z, w = np.polynomial.hermite_e.hermegauss(6 * nodes + 1)  # not the fit's 4 * nodes
    w = w / w.sum()
    t = np.tanh(sigma * z / bound)
    phi = (t[:, None] ** np.arange(coefficients.shape[0])[None, :]) @ coefficients  # (N, r)
    a = bound * t
    exact = np.exp(a[:, None] * a[None, :])
    error = phi @ phi.T - exact
    report = {
        "degree": int(coefficients.shape[0]),
        "kernel_rms": float(np.sqrt((w @ error**2 @ w) / (w @ exact**2 @ w))),
        "fit_rms": 0.0,
    }
    if basis == "svd":
        target = svd_features(torch.from_numpy(a), svd_basis(bound, sigma, rank, nodes)).numpy()
        report["fit_rms"] = float(
            np.sqrt(w @ ((phi - target) ** 2).sum(1) / (w @ (target**2).sum(1)))
        )
    return report
