"""Attention variants behind one interface; see DESIGN.md section 3.

Importing this package registers every variant in `REGISTRY`.
"""

from heat.attention import hadamard, heat, linformer, nystrom, softmax, taylor  # noqa: F401  (registers)
from heat.attention.base import AttentionKernel, Capabilities
from heat.attention.registry import REGISTRY, build_attention, variant_names
from heat.attention.specs import (
    AttentionSpec,
    HadamardSpec,
    HeatSpec,
    LinformerSpec,
    NystromSpec,
    SoftmaxSpec,
    SpecError,
    TaylorSpec,
    exact_counterpart,
    spec_from_dict,
    spec_to_dict,
)

__all__ = [
    "REGISTRY", "AttentionKernel", "AttentionSpec", "Capabilities", "HadamardSpec", "HeatSpec",
    "LinformerSpec", "NystromSpec", "SoftmaxSpec", "SpecError", "TaylorSpec", "build_attention", "exact_counterpart",
    "spec_from_dict", "spec_to_dict", "variant_names",
]
