from __future__ import annotations

import pytest
import torch

from heat.attention.registry import ordered_variants

# One or more specs per registry entry, small enough for fast tests, from each spec's
# `contract_examples()` (chunk sizes that do not divide the test lengths, so that ragged last
# chunks are exercised), by test id, in listing order.
CONTRACT_SPECS = {
    spec_id: spec
    for entry in ordered_variants()
    for spec_id, spec in entry.spec.contract_examples().items()
}

assert sum(len(entry.spec.contract_examples()) for entry in ordered_variants()) == len(
    CONTRACT_SPECS
), "contract example ids must be unique across variants"
assert {spec.name for spec in CONTRACT_SPECS.values()} == {e.name for e in ordered_variants()}, (
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


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A finished tiny pipeline run (real Ray, DeepSpeed, MLflow) that the bad-input suites
    point their failing runs at: nothing it wrote may change (`tests/bad_input.py`)."""
    from bad_input import finish_a_run

    return finish_a_run(tmp_path_factory.mktemp("finished"))


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """One full `heat-pipeline smoke` run, shared by every suite that inspects its outputs, its
    console and its MLflow store (`tests/smoke_run.py`)."""
    from smoke_run import run_smoke

    return run_smoke(tmp_path_factory.mktemp("smoke"))
