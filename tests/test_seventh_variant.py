"""A seventh attention variant in one file, run through everything a built-in one gets.

`elu_linear` is linear attention with the feature map elu(x) + 1 (Katharopoulos et al., 2020),
causal by chunked prefix sums. Its spec and kernel below are all a new variant needs (in
`heat/attention/` it would be one module, registered by `@register(EluLinearSpec)` on the kernel
and found when the package is imported). Here it is registered only while this module's tests run
(`registered`), so the other tests still see the six built-in variants.

It then goes through the contract tests (`AttentionContract`), `heat-pipeline demo-attention`
(`pipeline.demo.attention_errors`) and `heat-pipeline bench attention` at tiny sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch.nn.functional as F
from torch import Tensor

from heat.attention import (
    AttentionKernel,
    AttentionSpec,
    Capabilities,
    SoftmaxSpec,
    SpecError,
    build_attention,
    exact_counterpart,
    spec_from_dict,
    variant_names,
)
from heat.attention.linear import accumulation_dtype, linear_attention
from heat.attention.registry import REGISTRY, registered
from test_attention_contract import AttentionContract

# ---------------------------------------------------------------------------- the variant


@dataclass(frozen=True, kw_only=True)
class EluLinearSpec(AttentionSpec):
    """Linear attention with phi(x) = elu(x) + 1; approximates softmax attention."""

    name: ClassVar[str] = "elu_linear"

    chunk_size: int = 64
    """Positions per chunk of the causal prefix sums."""

    def __post_init__(self) -> None:
        self.check_int("chunk_size", 1, 1 << 16)

    def exact_counterpart(self) -> SoftmaxSpec:
        return SoftmaxSpec()

    @classmethod
    def contract_examples(cls) -> dict[str, EluLinearSpec]:
        return {"elu_linear": cls(chunk_size=5)}  # does not divide the tests' lengths


class EluLinearAttention(AttentionKernel):
    capabilities = Capabilities(causal=True, cross=True, fixed_max_length=False)

    def __init__(
        self, spec: EluLinearSpec, *, head_dim: int, num_heads: int,
        shared: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(head_dim=head_dim, num_heads=num_heads)
        self.spec = spec

    def _attend(self, q, k, v, *, key_padding_mask, query_padding_mask, causal) -> Tensor:
        dtype = accumulation_dtype(q.dtype)
        phi_q = F.elu(q.to(dtype)) + 1  # (B, H, n, d)
        phi_k = F.elu(k.to(dtype)) + 1  # (B, H, m, d)
        if key_padding_mask is not None:
            phi_k = phi_k.masked_fill(key_padding_mask[:, None, :, None], 0.0)
        out = linear_attention(phi_q, phi_k, v.to(dtype), causal=causal,
                               chunk_size=self.spec.chunk_size)
        return out.to(q.dtype)


@pytest.fixture(autouse=True, scope="module")
def _elu_linear_registered():
    with registered(EluLinearSpec, EluLinearAttention) as entry:
        yield entry
    assert "elu_linear" not in REGISTRY


# ---------------------------------------------------------------------------- registry, specs


def test_it_is_registered_like_a_built_in_variant():
    assert "elu_linear" in variant_names() and len(variant_names()) == 7
    spec = spec_from_dict({"name": "elu_linear", "chunk_size": 3})
    assert spec == EluLinearSpec(chunk_size=3)
    assert exact_counterpart(spec) == SoftmaxSpec()
    assert isinstance(build_attention(spec, head_dim=4, num_heads=2), EluLinearAttention)
    with pytest.raises(SpecError, match=r"^elu_linear\.chunk_size: must be an integer in "):
        spec_from_dict({"name": "elu_linear", "chunk_size": 0})
    with pytest.raises(ValueError, match="'elu_linear' registered twice"):
        with registered(EluLinearSpec, EluLinearAttention):
            pass


# ---------------------------------------------------------------------------- the contract


class TestEluLinearContract(AttentionContract):
    @pytest.fixture(params=list(EluLinearSpec.contract_examples()))
    def spec(self, request) -> AttentionSpec:
        return EluLinearSpec.contract_examples()[request.param]


# ---------------------------------------------------------------------------- demo-attention


@pytest.mark.parametrize("causal", [False, True])
def test_demo_attention_compares_it_with_softmax(causal):
    from pipeline.demo import attention_errors, format_rows

    rows = attention_errors(batch=1, heads=2, length=48, head_dim=16, causal=causal)
    mine = [row for row in rows if row.variant == "elu_linear"]
    assert len(mine) == 1 and mine[0].reference == "softmax"
    assert 0 < mine[0].rel_error < math.inf
    assert rows[-1] is mine[0]  # after the built-in variants (default demo_order)
    assert "elu_linear" in format_rows(rows)


# ---------------------------------------------------------------------------- bench attention


def bench_args(*argv: str) -> argparse.Namespace:
    from pipeline import bench

    parser = argparse.ArgumentParser()
    bench.configure(parser)
    return parser.parse_args(list(argv))


def test_bench_lists_it_by_default():
    assert bench_args().variants[-1] == "elu_linear"


@pytest.mark.parametrize("causal", [False, True])
def test_bench_attention_measures_it(tmp_path, causal):
    from pipeline import bench

    out = tmp_path / "bench.json"
    args = bench_args("--lengths", "16,32", "--heads", "1", "--head-dim", "8", "--repeats", "1",
                      "--warmup", "0", "--variants", "softmax,elu_linear", "--out", str(out),
                      *(["--causal"] if causal else []))
    assert bench.main(args) == 0
    records = json.loads(out.read_text())
    mine = [r for r in records if r["variant"] == "elu_linear"]
    assert [r["n"] for r in mine] == [16, 32]
    for r in mine:
        assert r["label"] == "elu_linear" and r["params"] == {"chunk_size": 64}
        assert r["causal"] is causal and r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0
        assert 0 < r["rel_error"] < math.inf  # against softmax, its exact counterpart
        assert r["speedup_vs_sdpa"] > 0


# ---------------------------------------------------------------------------- training


def register_in_worker() -> None:
    """Ray's worker_process_setup_hook: registers the toy variant in every Ray worker process
    (a built-in variant registers when `heat.attention` is imported; this one lives in a test)."""
    from heat.attention.registry import add

    if "elu_linear" not in REGISTRY:
        add(EluLinearSpec, EluLinearAttention)


@pytest.mark.slow
def test_a_tiny_translation_model_trains_and_evaluates_with_it(tmp_path):
    """The pipeline's one entry, `train_and_evaluate`: Ray Train + DeepSpeed training, the
    evaluate stage's Ray tasks, sacrebleu and MLflow, with elu_linear at every site."""
    from pathlib import Path

    import ray
    from mlflow import MlflowClient

    from pipeline.config import Variant
    from pipeline.job import train_and_evaluate
    from toy_tasks import create_mlflow_runs, toy_job, write_translation

    write_translation(tmp_path / "data", {"train": 1500, "validation": 100, "test": 100})
    run_ids = create_mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts",
                                 ["softmax"])
    job = toy_job(tmp_path, "translation", run_ids, max_steps=150, val_every=50)
    attention = {site: {"name": "elu_linear"} for site in ("encoder_self", "decoder_self",
                                                            "cross")}
    job = dataclasses.replace(job, variants=[Variant.parse("elu_linear", attention,
                                                           "translation")],
                              mlflow_run_ids={"elu_linear": run_ids["softmax"]})
    tests = str(Path(__file__).parent)
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={
        "env_vars": {"PYTHONPATH": tests},
        "worker_process_setup_hook": f"{__name__}.register_in_worker"})
    try:
        result = train_and_evaluate(job)["elu_linear"]
    finally:
        ray.shutdown()
    assert result["steps"] == 150
    assert result["resolved_attention"]["cross"]["name"] == "elu_linear"
    assert result["best_val_loss"] < 2.5  # untrained: about ln(vocabulary) = 3.8
    # Scored by sacrebleu (150 steps are too few for this weak approximation to translate well:
    # BLEU about 1 here; learning shows in the validation loss above).
    assert 0 <= result["bleu"] <= 100 and result["bleu_signature"].startswith("nrefs:1|")
    assert len(Path(result["hypotheses_uri"]).read_text().splitlines()) == 100
    run = MlflowClient(job.tracking_uri).get_run(run_ids["softmax"])
    assert run.data.metrics["test/bleu"] == pytest.approx(result["bleu"])
