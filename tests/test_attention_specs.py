"""Bad specs fail at construction with an error naming the parameter and what is allowed."""

from __future__ import annotations

import sys

import pytest
import torch

from heat.attention import (
    HeatSpec,
    LinformerSpec,
    NystromSpec,
    SpecError,
    TaylorSpec,
    build_attention,
    spec_from_dict,
    spec_to_dict,
    variant_names,
)


def test_registry_holds_the_six_variants():
    assert variant_names() == ["hadamard", "heat", "linformer", "nystrom", "softmax", "taylor"]


@pytest.mark.parametrize(
    "raw,field,message",
    [
        ({"name": "performer"}, "attention.name", "allowed: hadamard, heat, linformer, nystrom"),
        ({"rank": 8}, "attention.name", "unknown variant None"),
        ({"name": "heat", "rank": 0}, "heat.rank", r"integer in \[1, 16\], got 0"),
        ({"name": "heat", "rank": 17}, "heat.rank", r"\[1, 16\], got 17 \(ranks above 16 are"),
        ({"name": "heat", "rank": 9, "bound": 1.0}, "heat.rank", r"\[1, 8\].*bound=1.0"),
        ({"name": "heat", "rank": 21, "basis": "taylor"}, "heat.rank", r"\[1, 20\]"),
        ({"name": "heat", "rank": "8"}, "heat.rank", "got '8'"),
        ({"name": "heat", "rank": True}, "heat.rank", "got True"),
        ({"name": "heat", "basis": "fourier"}, "heat.basis", "one of svd, taylor"),
        ({"name": "heat", "bound": -1.0}, "heat.bound", "number in"),
        ({"name": "heat", "landmarks": 8}, "heat.landmarks", "allowed: rank, basis"),
        ({"name": "taylor", "order": 3}, "taylor.order", "odd order 3.*allow_odd"),
        ({"name": "taylor", "order": 6}, "taylor.order", r"\[1, 4\]"),
        ({"name": "linformer", "rank": 0}, "linformer.rank", r"\[1, 512\]"),
        ({"name": "linformer", "rank": 64, "max_length": 32}, "linformer.rank", r"\[1, 32\]"),
        ({"name": "linformer", "sharing": "heads"}, "linformer.sharing", "none, kv, layer"),
        ({"name": "nystrom", "landmarks": 0}, "nystrom.landmarks", r"\[1, 4096\]"),
        ({"name": "nystrom", "conv_kernel": 4}, "nystrom.conv_kernel", "0 or odd"),
        ({"name": "softmax", "rank": 4}, "softmax.rank", r"allowed: \(none\)"),
    ],
)
def test_bad_specs_name_the_parameter(raw, field, message):
    with pytest.raises(SpecError, match=message) as info:
        spec_from_dict(raw)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_odd_taylor_order_with_opt_in_is_accepted():
    assert spec_from_dict({"name": "taylor", "order": 3, "allow_odd": True}).order == 3


def test_spec_round_trip():
    for spec in (HeatSpec(rank=4, basis="taylor"), LinformerSpec(rank=16), NystromSpec(),
                 TaylorSpec(order=4, feature_dim=8)):
        assert spec_from_dict(spec_to_dict(spec)) == spec


@pytest.mark.parametrize("spec", [LinformerSpec(rank=4, max_length=16), NystromSpec(landmarks=4)])
def test_causal_request_on_non_causal_variant(spec):
    kernel = build_attention(spec, head_dim=4, num_heads=2)
    x = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match=rf"'{spec.name}' does not support causal=True.*heat"):
        kernel(x, x, x, causal=True)


def test_linformer_input_longer_than_its_fixed_length():
    kernel = build_attention(LinformerSpec(rank=4, max_length=16), head_dim=4, num_heads=2)
    x = torch.randn(1, 2, 17, 4)
    with pytest.raises(ValueError, match="linformer.max_length"):
        kernel(x, x, x)


def test_bad_call_shapes_and_masks():
    kernel = build_attention(HeatSpec(), head_dim=4, num_heads=2)
    x = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match=r"\(batch, heads, length, head_dim\)"):
        kernel(x[0], x[0], x[0])
    with pytest.raises(ValueError, match="key_padding_mask must be a bool tensor of shape"):
        kernel(x, x, x, key_padding_mask=torch.zeros(1, 8))


def test_discovery_imports_the_modules_that_register_a_variant(tmp_path, monkeypatch):
    from heat.attention import discovery
    from heat.attention.registry import unregister

    package = tmp_path / "extra_variants"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helper.py").write_text('raise ImportError("registers nothing: not imported")\n')
    (package / "notes.py").write_text(
        '"""How to add one:\n\n    @register(MySpec)\n    class MyKernel: ..."""\n'
        'raise ImportError("only mentions @register( in a docstring: not imported")\n'
    )
    (package / "relu.py").write_text(
        "from dataclasses import dataclass\n"
        "from typing import ClassVar\n"
        "from heat.attention import AttentionKernel, AttentionSpec, Capabilities\n"
        "from heat.attention.registry import register\n\n\n"
        "@dataclass(frozen=True, kw_only=True)\n"
        "class ReluSpec(AttentionSpec):\n"
        "    name: ClassVar[str] = 'discovered_relu'\n\n\n"
        "@register(ReluSpec)\n"
        "class ReluKernel(AttentionKernel):\n"
        "    capabilities = Capabilities(causal=False, cross=True, fixed_max_length=False)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = [str(package)]
    assert discovery.variant_modules("extra_variants", path) == ["extra_variants.relu"]
    try:
        assert discovery.import_variant_modules("extra_variants", path) == ["extra_variants.relu"]
        assert "discovered_relu" in variant_names()
    finally:
        unregister("discovered_relu")
        for name in ("extra_variants.relu", "extra_variants"):
            sys.modules.pop(name, None)
