"""HEAT: Hadamard Estimated Attention (Catapang, 2022), made precise in DESIGN.md section 3.

`hadamard` attention with its per-channel kernel exp(a b) on [-R, R]^2 replaced by a rank-r
factorisation exp(a b) ~ sum_s phi_s(a) phi_s(b) (see `exp_basis`). Per channel c this is linear
attention with r features:
    o_ic = sum_s phi_s(a_ic) S_sc / sum_s phi_s(a_ic) z_sc,
    S_sc = sum_j phi_s(b_jc) v_jc,   z_sc = sum_j phi_s(b_jc).
The eigenfunctions are polynomials in t = a / R, phi(a) = V(t) C (C: P x r), which allows the
folded evaluation of `folded.py` (default, O(n P d), nothing of size n x d x r materialised) next
to the plain one that materialises phi (`implementation: features`, the reference). Causal by
chunked prefix sums. Accumulation in fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from heat.attention.base import AttentionKernel, Capabilities
from heat.attention.exp_basis import fit_report, polynomial_coefficients, svd_max_rank
from heat.attention.folded import folded_heat
from heat.attention.fused import fused_available, fused_heat, kernel_layout
from heat.attention.hadamard import HadamardSpec, bounded, normalised
from heat.attention.linear import NORMALISER_EPS, accumulation_dtype, linear_attention
from heat.attention.registry import register
from heat.attention.specs import AttentionSpec, SpecError, Sweep


@dataclass(frozen=True, kw_only=True)
class HeatSpec(AttentionSpec):
    """HEAT: `hadamard` with its kernel exp(ab) replaced by a rank-`rank` factorisation."""

    name: ClassVar[str] = "heat"
    listing_order: ClassVar[int] = 50
    demo_order: ClassVar[int] = 10
    sweeps: ClassVar[tuple[Sweep, ...]] = (
        Sweep("basis", "bases", ("svd",)),
        Sweep("rank", "ranks", (8,)),
        Sweep("implementation", "implementations", ("auto",),
              help="auto, fused, folded, features (compare them side by side)"),
        Sweep("input_norm", "input-norms", ("none",),
              help="none (the paper's HEAT), rms (queries and keys divided by their RMS first)"),
        Sweep("key_shift", "key-shifts", ("none",),
              help="none (the paper's HEAT), midrange (each channel's keys centred, non-causal)"),
    )
    MAX_TAYLOR_RANK: ClassVar[int] = 20
    IMPLEMENTATIONS: ClassVar[tuple[str, ...]] = ("auto", "fused", "folded", "features")
    KEY_SHIFTS: ClassVar[tuple[str, ...]] = ("none", "midrange")

    rank: int = 8
    """r, the number of eigenfunctions (svd) or Taylor terms (taylor)."""
    basis: str = "svd"
    """'svd': input-weighted eigenfunctions of exp(ab); 'taylor': a^p / sqrt(p!), p < rank."""
    bound: float = 3.0
    """R, as in `hadamard`."""
    input_norm: str = "none"
    """As in `hadamard`: 'rms' divides queries and keys by their root mean square over the
    head's channels before the bound; 'none': the paper's HEAT."""
    key_shift: str = "none"
    """'midrange': at non-causal sites, subtract from each channel's bounded keys the midpoint
    of their range over the valid keys, u = (max_j b_j + min_j b_j) / 2 (per batch row, head and
    channel, no gradient, like softmax's max). Exact hadamard is unchanged by it (softmax_j of
    a (b_j - u) is softmax_j of a b_j); the polynomial kernel then sees keys spread around 0
    instead of all at one end of [-R, R], where it is far from exp(ab) (e.g. a = -R, b = +R: the
    true kernel is e^-9, the rank-r one is off by more than that). Causal sites are never
    shifted (a midrange over all keys would look at future ones). 'none': the paper's HEAT."""
    sigma: float = 1.0
    """Standard deviation of the Gaussian input measure the svd basis is optimal for."""
    quadrature_nodes: int = 24
    """Gauss-Hermite nodes the svd basis is computed on. The svd rank is bounded by the number of
    eigenvalues float64 resolves (16 for the defaults R=3, sigma=1, 24 nodes)."""
    chunk_size: int = 256
    """Positions per chunk of the causal prefix sums."""
    implementation: str = "auto"
    """'folded': moments times C C^T, Horner at the queries, no (n, d, r) tensor (DESIGN.md
    section 8), in eager PyTorch; 'fused': the same in fused kernels with a hand-written backward
    (C++ on the CPU, Triton on CUDA), an error where they are unavailable; 'auto': 'fused' where
    available, else 'folded'; 'features': materialise phi and run plain linear attention (the
    reference the others are tested against)."""

    def __post_init__(self) -> None:
        self.check_choice("basis", ("svd", "taylor"))
        self.check_choice("implementation", self.IMPLEMENTATIONS)
        self.check_choice("input_norm", HadamardSpec.INPUT_NORMS)
        self.check_choice("key_shift", self.KEY_SHIFTS)
        self.check_float("bound", 0.0, 20.0)
        self.check_float("sigma", 0.0, 100.0)
        self.check_int("quadrature_nodes", 2, 128)
        self.check_int("chunk_size", 1, 1 << 16)
        if self.basis == "taylor":
            self.check_int("rank", 1, self.MAX_TAYLOR_RANK)
            return
        high = svd_max_rank(self.bound, self.sigma, self.quadrature_nodes)
        try:
            self.check_int("rank", 1, high)
        except SpecError as error:
            raise self.error("rank", (
                f"{error.message} (ranks above {high} are float64 round-off of "
                f"the kernel with bound={self.bound}, sigma={self.sigma}, "
                f"quadrature_nodes={self.quadrature_nodes})"
            )) from None

    def check_runs_on(self, device_type: str, causal: bool) -> None:
        """`implementation: fused` needs fused kernels: the C++ ones on the CPU (built on first
        use: a compiler, HEAT_CPU_KERNELS not 0), the Triton ones on CUDA, which are non-causal
        only (whether Triton runs on a GPU node cannot be told from here)."""
        if self.implementation != "fused":
            return
        if device_type == "cuda" and causal:
            raise self.error("implementation", "fused has no causal kernel on CUDA (the Triton "
                                               "kernels are non-causal); use auto (fused where "
                                               "it can, folded at causal sites) or folded")
        if device_type == "cuda" and self.key_shift != "none":
            raise self.error("implementation", "fused has no key shift on CUDA (the Triton "
                                               "kernels); use auto or folded, or key_shift: none")
        if device_type == "cpu":
            from heat.attention import cpu_kernels

            reason = cpu_kernels.unavailable_reason()
            if reason is not None:
                raise self.error("implementation", f"fused needs the C++ CPU kernels, which are "
                                                   f"unavailable here ({reason}); use auto or "
                                                   f"folded")

    def exact_counterpart(self) -> HadamardSpec:
        return HadamardSpec(bound=self.bound, input_norm=self.input_norm)

    @classmethod
    def contract_examples(cls) -> dict[str, HeatSpec]:
        return {"heat-svd": cls(rank=6, chunk_size=7),
                "heat-taylor": cls(rank=6, basis="taylor", chunk_size=7),
                "heat-svd-rms": cls(rank=6, chunk_size=7, input_norm="rms"),
                "heat-svd-shift": cls(rank=6, chunk_size=7, key_shift="midrange")}

    @classmethod
    def demo_examples(cls, length: int) -> dict[str, HeatSpec]:
        specs = [cls(rank=rank, basis=basis) for basis in ("svd", "taylor") for rank in (4, 8, 12)]
        return {spec.describe("rank", "basis"): spec for spec in specs}

    def label(self) -> str:
        norm = "" if self.input_norm == "none" else f" {self.input_norm}-norm"
        shift = "" if self.key_shift == "none" else f" {self.key_shift}-shift"
        return f"heat {self.basis} r{self.rank}{norm}{shift}"


@register(HeatSpec)
class HeatAttention(AttentionKernel):
    capabilities = Capabilities(causal=True, cross=True, fixed_max_length=False)
    bandwidth_bound = True

    def __init__(
        self, spec: HeatSpec, *, head_dim: int, num_heads: int, shared: dict[str, Any] | None = None
    ) -> None:
        super().__init__(head_dim=head_dim, num_heads=num_heads)
        self.spec = spec
        # Computed once per (basis, R, sigma, r, G), cached process-wide, float64; plain
        # attributes, not buffers, so model.to(bfloat16) cannot round them and they get no grad.
        self.coefficients = polynomial_coefficients(
            spec.basis, spec.bound, spec.sigma, spec.rank, spec.quadrature_nodes
        )  # (P, r)
        self.kernel_matrix = self.coefficients @ self.coefficients.T  # (P, P), rank r
        self._kernel_copies: dict[tuple[torch.device, torch.dtype, bool], Tensor] = {}

    def _kernel_on(self, device: torch.device, dtype: torch.dtype, fused: bool = False) -> Tensor:
        """C C^T on the device (in the fused kernels' layout if `fused`), copied once: a
        host-to-device copy per call would stall the stream on every forward."""
        key = (device, dtype, fused)
        if key not in self._kernel_copies:
            kernel = self.kernel_matrix.to(device=device, dtype=dtype)
            self._kernel_copies[key] = kernel_layout(kernel) if fused else kernel
        return self._kernel_copies[key]

    def features(self, x: Tensor) -> Tensor:
        """phi_s(x) = V(x / R) C per element: (...,) -> (..., r)."""
        t = x / self.spec.bound
        powers = t[..., None] ** torch.arange(self.coefficients.shape[0], device=x.device)
        return powers @ self.coefficients.to(device=x.device, dtype=x.dtype)  # (..., P) @ (P, r)

    def _attend(self, q, k, v, *, key_padding_mask, query_padding_mask, causal) -> Tensor:
        in_dtype, dtype = q.dtype, accumulation_dtype(q.dtype)
        floor = self._normaliser_floor(key_padding_mask, q, k, causal)  # (B, n) or a number
        implementation = self.implementation_for(q.device, causal)
        if implementation == "fused":  # applies the input norm and the bound R tanh(x / R)
            valid = None if key_padding_mask is None else ~key_padding_mask  # (B, m)
            out = fused_heat(
                q, k, v, self._kernel_on(q.device, dtype, fused=True),
                degree=self.kernel_matrix.shape[0], bound=self.spec.bound, key_valid=valid,
                causal=causal, floor=floor, input_norm=self.spec.input_norm,
                key_shift=self.spec.key_shift,
            )
            return out.to(in_dtype)
        if self.spec.input_norm != "none":  # before the bound, which every path applies
            q, k = (normalised(x.to(dtype), self.spec.input_norm).to(in_dtype) for x in (q, k))
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        floor = (floor.to(dtype) if isinstance(floor, Tensor)
                 else q.new_full((q.shape[0], q.shape[2]), floor))
        a = bounded(q, self.spec.bound)  # (B, H, n, d)
        b = bounded(k, self.spec.bound)  # (B, H, m, d)
        if self.spec.key_shift == "midrange" and not causal:
            b = b - key_midrange(b, key_padding_mask)
        if implementation == "folded":
            out = self._folded(a, b, v, key_padding_mask, causal, floor)
        else:
            out = self._materialised(a, b, v, key_padding_mask, causal, floor)
        return out.to(in_dtype)

    def implementation_for(self, device: torch.device, causal: bool = False) -> str:
        """The path `spec.implementation` means here ('auto': fused if available)."""
        wanted = self.spec.implementation
        if wanted in ("folded", "features"):
            return wanted
        if fused_available(device, causal, self.spec.key_shift):
            return "fused"
        if wanted == "fused":
            kind = "causal " if causal else ""
            raise RuntimeError(
                f"heat.implementation=fused: no fused {kind}kernels on {device.type} here (see "
                f"the log); use implementation: auto or folded"
            )
        return "folded"

    def describe_run(self, device: torch.device, *, causal: bool) -> dict[str, Any]:
        s = self.spec
        return {"fit": fit_report(s.basis, s.bound, s.sigma, s.rank, s.quadrature_nodes),
                "implementation": self.implementation_for(device, causal)}

    def _folded(self, a, b, v, key_padding_mask, causal, floor) -> Tensor:
        valid = None if key_padding_mask is None else (
            ~key_padding_mask[:, None, :, None]).to(a.dtype)  # (B, 1, m, 1)
        bound = self.spec.bound
        return folded_heat(
            a / bound, b / bound, v, self._kernel_on(a.device, a.dtype),
            key_valid=valid, causal=causal, chunk_size=self.spec.chunk_size,
            floor=floor[:, None, :, None],  # (B, 1, n, 1)
        )

    def _materialised(self, a, b, v, key_padding_mask, causal, floor) -> Tensor:
        phi_a = self.features(a)  # (B, H, n, d, r)
        phi_b = self.features(b)  # (B, H, m, d, r)
        if key_padding_mask is not None:
            phi_b = phi_b.masked_fill(key_padding_mask[:, None, :, None, None], 0.0)
        # each channel is its own linear attention: move channels into the batch dimensions
        out = linear_attention(
            phi_a.transpose(2, 3),  # (B, H, d, n, r)
            phi_b.transpose(2, 3),  # (B, H, d, m, r)
            v.transpose(2, 3)[..., None],  # (B, H, d, m, 1)
            causal=causal,
            chunk_size=self.spec.chunk_size,
            normaliser_floor=floor[:, None, None, :, None],  # (B, 1, 1, n, 1)
        )  # (B, H, d, n, 1)
        return out[..., 0].transpose(2, 3)  # (B, H, n, d)

    def _normaliser_floor(
        self, key_padding_mask, q: Tensor, k: Tensor, causal: bool
    ) -> Tensor | float:
        """exp(ab) >= exp(-R^2) on [-R, R]^2, so the exact normaliser of a query is at least
        exp(-R^2) times its number of visible keys. A low-rank kernel can dip below that, even
        below zero, where few keys are visible (early causal positions); clamping to the exact
        bound keeps those rows finite instead of dividing by ~0. Shape (B, n), or one number when
        every query sees the same keys (non-causal, no padding)."""
        batch, n, m = q.shape[0], q.shape[2], k.shape[2]
        lowest = math.exp(-self.spec.bound**2)
        if key_padding_mask is None:  # no mask: no (B, m) temporaries
            if not causal:
                return max(m * lowest, NORMALISER_EPS)  # one number for every query
            visible = torch.arange(m - n + 1, m + 1, device=q.device, dtype=torch.float32)
            return (visible * lowest).clamp_min(NORMALISER_EPS).expand(batch, n)
        valid = (~key_padding_mask).to(torch.float32)  # (B, m)
        if causal:
            visible = valid.cumsum(dim=-1)[:, m - n:]  # (B, n): keys <= i + (m - n)
        else:
            visible = valid.sum(dim=-1, keepdim=True).expand(batch, n)  # (B, n)
        return (visible * lowest).clamp_min(NORMALISER_EPS)

    def extra_repr(self) -> str:
        s = self.spec
        return f"rank={s.rank}, basis={s.basis}, bound={s.bound}, implementation={s.implementation}"


def key_midrange(b: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """(max_j b_j + min_j b_j) / 2 per (batch, head, channel) over the valid keys of b
    (B, H, m, d), 0 where a row has none; detached. -> (B, H, 1, d)."""
    b = b.detach()
    if key_padding_mask is None:
        return (b.amax(dim=2, keepdim=True) + b.amin(dim=2, keepdim=True)) / 2
    padded = key_padding_mask[:, None, :, None]  # (B, 1, m, 1)
    high = b.masked_fill(padded, -math.inf).amax(dim=2, keepdim=True)
    low = b.masked_fill(padded, math.inf).amin(dim=2, keepdim=True)
    middle = (high + low) / 2
    return torch.where(torch.isfinite(middle), middle, torch.zeros_like(middle))
