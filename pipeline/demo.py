"""`heat-pipeline demo-attention`: how close each variant comes to the attention it approximates.

Random q, k, v ~ N(0, 1) per channel (the input measure HEAT's svd basis is built for), each
variant against its exact counterpart on the same inputs: `heat` and `taylor` against their exact
kernels (`hadamard`, `softmax`), `linformer` and `nystrom` against `softmax`. Linformer's
projections are untrained here, so its error is what a freshly initialised layer starts from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from heat.attention import AttentionSpec, build_attention, exact_counterpart
from heat.attention.registry import REGISTRY


@dataclass(frozen=True)
class ErrorRow:
    variant: str
    params: str
    reference: str
    causal: bool
    rel_error: float


def demo_examples(length: int) -> list[tuple[str, AttentionSpec]]:
    """(parameters shown, spec) of every registered approximation, in `demo_order`."""
    entries = sorted(REGISTRY.values(), key=lambda entry: (entry.spec.demo_order, entry.name))
    return [item for entry in entries for item in entry.spec.demo_examples(length).items()]


def demo_specs(length: int) -> list[AttentionSpec]:
    return [spec for _, spec in demo_examples(length)]


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
    for params, spec in demo_examples(length):
        torch.manual_seed(seed)  # the same learned projections (taylor/linformer) every run
        kernel = build_attention(spec, head_dim=head_dim, num_heads=heads).double()
        if causal and not kernel.capabilities.causal:
            continue
        reference_spec = exact_counterpart(spec)
        reference = build_attention(reference_spec, head_dim=head_dim, num_heads=heads).double()
        with torch.no_grad():
            error = relative_error(kernel(q, k, v, causal=causal), reference(q, k, v, causal=causal))
        rows.append(ErrorRow(
            variant=spec.name,
            params=params,
            reference=reference_spec.name,
            causal=causal,
            rel_error=error,
        ))
    return rows


def format_rows(rows: list[ErrorRow]) -> str:
    header = f"{'variant':<10} {'parameters':<22} {'against':<9} {'causal':<7} {'rel. error':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.variant:<10} {row.params:<22} {row.reference:<9} {str(row.causal):<7} "
            f"{row.rel_error:>10.2e}"
        )
    return "\n".join(lines)
