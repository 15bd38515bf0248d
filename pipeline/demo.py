"""`heat-pipeline demo-attention`: how close each variant comes to the attention it approximates.

Random q, k, v ~ N(0, 1) per channel (the input measure HEAT's svd basis is built for), each
variant against its exact counterpart on the same inputs: `heat` and `taylor` against their exact
kernels (`hadamard`, `softmax`), `linformer` and `nystrom` against `softmax`. Linformer's
projections are untrained here, so its error is what a freshly initialised layer starts from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from heat.attention import (
    AttentionSpec,
    HeatSpec,
    LinformerSpec,
    NystromSpec,
    TaylorSpec,
    build_attention,
    exact_counterpart,
    spec_to_dict,
)


@dataclass(frozen=True)
class ErrorRow:
    variant: str
    params: str
    reference: str
    causal: bool
    rel_error: float


def demo_specs(length: int) -> list[AttentionSpec]:
    specs: list[AttentionSpec] = []
    for basis in ("svd", "taylor"):
        specs += [HeatSpec(rank=rank, basis=basis) for rank in (4, 8, 12)]
    specs += [TaylorSpec(order=order) for order in (2, 4)]
    specs += [NystromSpec(landmarks=l) for l in (16, 64) if l < length]
    specs += [LinformerSpec(rank=r, max_length=length) for r in (32, 128) if r <= length]
    return specs


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output - reference).norm() / reference.norm())


def attention_errors(
    *, batch: int = 2, heads: int = 4, length: int = 256, head_dim: int = 32,
    causal: bool = False, seed: int = 0,
) -> list[ErrorRow]:
    """Relative output error of every demo variant against its exact counterpart (fp64)."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.randn(batch, heads, length, head_dim, generator=generator, dtype=torch.float64)
        for _ in range(3)
    )
    rows = []
    for spec in demo_specs(length):
        torch.manual_seed(seed)  # the same learned projections (taylor/linformer) every run
        kernel = build_attention(spec, head_dim=head_dim, num_heads=heads).double()
        if causal and not kernel.capabilities.causal:
            continue
        reference_spec = exact_counterpart(spec)
        reference = build_attention(reference_spec, head_dim=head_dim, num_heads=heads).double()
        with torch.no_grad():
            error = relative_error(kernel(q, k, v, causal=causal), reference(q, k, v, causal=causal))
        params = {key: val for key, val in spec_to_dict(spec).items() if key in _SHOWN}
        rows.append(ErrorRow(
            variant=spec.name,
            params=", ".join(f"{key}={val}" for key, val in params.items()),
            reference=reference_spec.name,
            causal=causal,
            rel_error=error,
        ))
    return rows


_SHOWN = ("rank", "basis", "order", "landmarks")


def format_rows(rows: list[ErrorRow]) -> str:
    header = f"{'variant':<10} {'parameters':<22} {'against':<9} {'causal':<7} {'rel. error':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.variant:<10} {row.params:<22} {row.reference:<9} {str(row.causal):<7} "
            f"{row.rel_error:>10.2e}"
        )
    return "\n".join(lines)
