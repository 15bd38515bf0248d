"""Settings that cannot run, found when the config loads: before prepare, before Ray starts,
before anything is written (`tests/bad_input.py`).

Each used to be found only once training started (a fused HEAT kernel that does not exist here,
70 s in, after prepare and tokenize) or never (a variant named at a site it cannot serve trained
plain softmax under its own name, with a worker log line to say so).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bad_input import (
    assert_rejected,
    environment,
    heat_pipeline,
    in_process,
    tiny_config,
    write_yaml,
)

LIMIT_S = 20


def variants(**specs) -> dict:
    return {"variants": specs}


def train(**changes) -> dict:
    def apply(config: dict) -> dict:
        config["tasks"]["translation"]["train"].update(changes)
        return config
    return apply


def classification(config: dict) -> dict:
    """The tiny config's task as a classification task on the same text."""
    task = config["tasks"].pop("translation")
    corpus = Path(task["data"]["files"]["train"])
    rows = [line for line in corpus.read_text().splitlines()]
    labelled = corpus.with_name("labelled.jsonl")
    labelled.write_text("".join(
        f'{{"text": "{row.split(chr(34))[5]}", "label": {i % 2}}}\n' for i, row in enumerate(rows)))
    task["data"] = {"task": "classification", "source": "local", "num_labels": 2,
                    "files": {"train": str(labelled)}, "validation_fraction": 0.2,
                    "test_fraction": 0.2}
    task["model"].pop("num_decoder_layers")
    config["tasks"]["classification"] = task
    return config


FUSED = {"name": "heat", "rank": 4, "implementation": "fused"}

# id -> (top-level changes, a function changing the config further, environment, named)
CASES = {
    "fused_heat_without_cpu_kernels": (
        variants(heat=FUSED), None, {"HEAT_CPU_KERNELS": "0"},
        ["variants.heat.implementation", "C++ CPU kernels", "HEAT_CPU_KERNELS=0"]),
    "fused_heat_without_cpu_kernels_in_classification": (
        variants(heat=FUSED), classification, {"HEAT_CPU_KERNELS": "0"},
        ["variants.heat.implementation", "classification"]),
    "fused_heat_at_causal_decoder_self_attention_on_cuda": (
        variants(heat=FUSED), train(use_gpu=True), {},
        ["variants.heat.implementation", "at decoder_self", "no causal kernel on CUDA"]),
    "linformer_named_only_at_decoder_self_attention": (
        variants(lin={"decoder_self": {"name": "linformer", "max_length": 16, "rank": 8}}), None, {},
        ["variants.lin.decoder_self", "linformer cannot serve decoder_self", "causal"]),
    "nystrom_named_at_cross_attention": (
        variants(ny={"encoder_self": {"name": "nystrom"}, "cross": {"name": "nystrom"}}), None,
        {}, ["variants.ny.cross", "nystrom cannot serve cross"]),
    "fp16_on_cpu": (
        {}, train(precision="fp16"), {}, ["tasks.translation.train.precision", "GPU"]),
    "more_workers_than_the_local_cpus": (
        {}, train(num_workers=2), {}, ["tasks.translation.train.cpus_per_worker", "num_cpus"]),
    "gpu_workers_on_a_machine_without_gpus": (
        {}, train(use_gpu=True), {}, ["tasks.translation.train.use_gpu", "CUDA devices"]),
    "linformer_shorter_than_the_model": (
        variants(lin={"name": "linformer", "max_length": 8, "rank": 4}), None, {},
        ["variants.lin", "max_length"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_impossible_setting_fails_before_any_work(tmp_path, case):
    top, change, env, named = CASES[case]
    config = tiny_config(tmp_path, **top)
    config = change(config) if change else config
    path = write_yaml(tmp_path / "impossible.yaml", config)
    outcome = in_process("run", str(path), cwd=tmp_path, env=environment(**env))
    assert_rejected(outcome, *named, within_s=LIMIT_S)
    assert not (tmp_path / "runs").exists(), "nothing may be written before the checks pass"


def test_a_variant_written_as_one_spec_keeps_its_documented_decoder_fallback(tmp_path):
    """`{name: nystrom}` for every site is allowed: the model uses softmax at the decoder sites
    nystrom cannot serve (heat.sites.resolve_sites); only a site the config names must serve."""
    from pipeline.config import load_config

    config = tiny_config(tmp_path, variants={"ny": {"name": "nystrom", "landmarks": 4}})
    loaded = load_config(write_yaml(tmp_path / "ok.yaml", config))
    assert "ny" in [variant.name for variant in loaded.tasks["translation"].variants]


def test_impossible_settings_leave_a_finished_run_untouched(finished_run):
    before = finished_run.snapshot()
    for case in ("fused_heat_without_cpu_kernels", "linformer_named_only_at_decoder_self_"
                 "attention"):
        top, change, env, named = CASES[case]
        config = tiny_config(finished_run.folder, **top)
        path = write_yaml(finished_run.folder / f"{case}.yaml", config)
        outcome = heat_pipeline("run", str(path), "--run-name", "finished", "--resume",
                                cwd=finished_run.folder, env=environment(**env))
        assert_rejected(outcome, *named, within_s=LIMIT_S)
    after = finished_run.snapshot()
    assert after["files"].keys() == before["files"].keys()
    finished_run.assert_untouched(before)
