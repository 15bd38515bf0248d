"""Attention variants behind one interface; see DESIGN.md section 3.

A variant is one module of this package: its spec class (an `AttentionSpec`), its kernel class (an
`AttentionKernel`) and `@register(SpecClass)` on the kernel. Importing this package imports every
such module (`discovery`), so every variant is in `REGISTRY`; the built-in specs are also exported
here by name.
"""

from heat.attention import discovery
from heat.attention.base import AttentionKernel, Capabilities
from heat.attention.hadamard import HadamardSpec
from heat.attention.heat import HeatSpec
from heat.attention.linformer import LinformerSpec
from heat.attention.nystrom import NystromSpec
from heat.attention.registry import (
    REGISTRY,
    build_attention,
    spec_from_dict,
    spec_to_dict,
    variant_names,
)
from heat.attention.softmax import SoftmaxSpec
from heat.attention.specs import AttentionSpec, SpecError, exact_counterpart
from heat.attention.taylor import TaylorSpec

discovery.import_variant_modules(__name__, __path__)

__all__ = [
    "REGISTRY", "AttentionKernel", "AttentionSpec", "Capabilities", "HadamardSpec", "HeatSpec",
    "LinformerSpec", "NystromSpec", "SoftmaxSpec", "SpecError", "TaylorSpec", "build_attention",
    "exact_counterpart", "spec_from_dict", "spec_to_dict", "variant_names",
]
