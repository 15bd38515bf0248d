from __future__ import annotations

import pytest
import torch

from heat.attention import (
    REGISTRY,
    HadamardSpec,
    HeatSpec,
    LinformerSpec,
    NystromSpec,
    SoftmaxSpec,
    TaylorSpec,
)

# One or more specs per registry entry, small enough for fast tests; chunk sizes that do not
# divide the test lengths, so that ragged last chunks are exercised.
CONTRACT_SPECS = {
    "softmax": SoftmaxSpec(),
    "linformer": LinformerSpec(rank=8, max_length=64),
    "linformer-none": LinformerSpec(rank=8, max_length=64, sharing="none"),
    "nystrom": NystromSpec(landmarks=4, pinv_iterations=8),
    "nystrom-conv": NystromSpec(landmarks=4, conv_kernel=3),
    "hadamard": HadamardSpec(chunk_size=5),
    "heat-svd": HeatSpec(rank=6, chunk_size=7),
    "heat-taylor": HeatSpec(rank=6, basis="taylor", chunk_size=7),
    "taylor": TaylorSpec(order=2, chunk_size=7),
    "taylor-projected": TaylorSpec(order=4, feature_dim=4, chunk_size=7),
}

assert {spec.name for spec in CONTRACT_SPECS.values()} == set(REGISTRY), (
    "every registered variant needs a contract spec"
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def qkv(batch: int, heads: int, n: int, m: int, d: int, dtype=torch.float64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n, d, generator=generator, dtype=dtype)
    k = torch.randn(batch, heads, m, d, generator=generator, dtype=dtype)
    v = torch.randn(batch, heads, m, d, generator=generator, dtype=dtype)
    return q, k, v
