"""`heat-pipeline check`: a config and its data sources validated, the plan printed, nothing
started or written; a bad config is one `heat-pipeline: config error: <key>: ...` line and exit
code 2 (`tests/bad_input.py`'s assertion). In-process (`bad_input.in_process`) but for one real
process; no Ray starts, nothing trains."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest
from bad_input import (
    assert_rejected,
    environment,
    heat_pipeline,
    in_process,
    tiny_config,
    write_corpus,
    write_yaml,
)

# Imported before any test redirects stderr: Ray binds its log handlers to the sys.stderr of
# the moment it is imported (see tests/test_cli_pipeline.py).
import pipeline.check
import pipeline.run
import pipeline.services
from pipeline.config import load_config
from pipeline.stages import STAGES, StageContext

VARIANTS = ("softmax", "linformer", "nystrom", "hadamard", "heat", "taylor")


def storage_state(root: Path) -> dict[str, Any] | None:
    """Every file under the storage root (size, mtime), or None when there is no root."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def check(folder: Path, *args: str):
    return in_process("check", *args, cwd=folder, env=environment())


def tiny(folder: Path, **data: Any) -> Path:
    """`bad_input.tiny_config` with its task's data section changed by `data`."""
    config = tiny_config(folder)
    config["tasks"]["translation"]["data"].update(data)
    return write_yaml(folder / "tiny.yaml", config)


# ---------------------------------------------------------------------------------------------
# The plan


def test_check_smoke_prints_the_plan_and_writes_nothing(tmp_path):
    outcome = check(tmp_path, "smoke")
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stdout + outcome.stderr
    out = outcome.stdout
    assert "task translation: translation" in out and "task classification: classification" in out
    for variant in VARIANTS:
        assert f"\n    {variant}\n" in out, variant
    nystrom = out[out.index("\n    nystrom\n"):out.index("\n    hadamard\n")]
    assert "decoder_self: softmax (fallback from nystrom)" in nystrom
    assert "cross: softmax (fallback from nystrom)" in nystrom
    assert out.count("    prepare: will run -> ") == 2 and out.count("    tokenize: will run") == 2
    assert out.count("    train: will run (a stage of the run") == 2
    assert "fit the local instance's 2 CPUs" in out
    assert out.rstrip().endswith("check: ok (2 tasks, 6 variants)")
    assert storage_state(tmp_path / "runs") is None


def shared_stages(config_file: Path, monkeypatch, vocab_size: int) -> None:
    """prepare and tokenize of the config's task run through the orchestrator's own code
    (`run_shared_stages`, so keyed and marked as a run does it) with stand-ins for the work."""
    monkeypatch.setattr(type(STAGES[0]), "run", lambda self, context, uri: {"rows": {}})
    monkeypatch.setattr(type(STAGES[1]), "run",
                        lambda self, context, uri: {"vocab_size": vocab_size})
    config = load_config(str(config_file))
    context = StageContext(config, config.tasks["translation"], "", tracker=None, cpus=1)
    pipeline.run.run_shared_stages(context, [])


def test_check_finds_the_stages_a_run_cached(tmp_path, monkeypatch):
    config = tiny(tmp_path)
    shared_stages(config, monkeypatch, vocab_size=40)
    before = storage_state(tmp_path / "runs")
    outcome = check(tmp_path, str(config), "--run-name", "later")
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    assert "    prepare: cached -> " in outcome.stdout
    assert "    tokenize: cached -> " in outcome.stdout
    assert "vocab_size 48, trained: 40 pieces (cached)" in outcome.stdout
    assert f"    train: will run -> {tmp_path}/runs/train/later/translation-" in outcome.stdout
    assert outcome.stdout.rstrip().endswith("check: ok (1 tasks, 1 variants)")
    assert storage_state(tmp_path / "runs") == before


def test_a_cached_vocabulary_too_small_for_the_model_exits_2(tmp_path, monkeypatch):
    config = tiny(tmp_path)
    shared_stages(config, monkeypatch, vocab_size=2)  # the model's eos_id 2 does not fit
    before = storage_state(tmp_path / "runs")
    assert_rejected(check(tmp_path, str(config)), "tasks.translation.tokenizer.vocab_size",
                    "2 pieces")
    assert storage_state(tmp_path / "runs") == before


def test_a_remote_cluster_is_checked_at_run_time(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.services, "probe_ray", lambda address, timeout=0: None)
    outcome = check(tmp_path, str(tiny(tmp_path)), "ray={address: auto}")
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    assert "ray.address: auto (a Ray head answers)" in outcome.stdout
    assert "its resources are checked at run time" in outcome.stdout


HUB = {"source": "hub", "files": {}, "hub_id": "wmt/wmt14", "hub_config": "fr-en"}


def offline_hub(folder: Path, monkeypatch) -> None:
    """HF_HUB_OFFLINE with empty caches in `folder` (the constants are read at import)."""
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(folder / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", folder / "datasets")


def test_an_offline_hub_set_must_be_in_the_cache(tmp_path, monkeypatch):
    offline_hub(tmp_path, monkeypatch)
    config = tiny(tmp_path, **HUB)
    assert_rejected(check(tmp_path, str(config)), "tasks.translation.data.hub_id",
                    "HF_HUB_OFFLINE")
    (tmp_path / "hub" / "datasets--wmt--wmt14").mkdir(parents=True)
    outcome = check(tmp_path, str(config))
    assert outcome.returncode == 0, outcome.stderr[-3000:]
    assert "hub wmt/wmt14 (config fr-en): offline, in the HuggingFace cache" in outcome.stdout


# ---------------------------------------------------------------------------------------------
# Broken configs: exit 2, one line naming the key or file, nothing written


def _missing_file(folder: Path) -> tuple[list[str], tuple[str, ...]]:
    return ([f"tasks.translation.data.files.train={folder / 'missing.jsonl'}"],
            ("tasks.translation.data.files.train", "missing.jsonl"))


def _plain_text_named_gz(folder: Path) -> tuple[list[str], tuple[str, ...]]:
    fake = folder / "train.jsonl.gz"
    fake.write_bytes(write_corpus(folder / "plain.jsonl").read_bytes())
    return ([f"tasks.translation.data.files.train={fake}"],
            ("tasks.translation.data.files.train", "train.jsonl.gz", "not a gzip file"))


def _truncated_gz(folder: Path) -> tuple[list[str], tuple[str, ...]]:
    whole = gzip.compress(write_corpus(folder / "plain.jsonl").read_bytes())
    cut = folder / "train.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    return ([f"tasks.translation.data.files.train={cut}"],
            ("tasks.translation.data.files.train", "damaged gzip file"))


def _damaged_parquet(folder: Path) -> tuple[list[str], tuple[str, ...]]:
    fake = folder / "train.parquet"
    fake.write_bytes(b"PAR1 this is not a parquet file")
    return ([f"tasks.translation.data.files.train={fake}"],
            ("tasks.translation.data.files.train", "train.parquet", "Parquet"))


def _unknown_format(folder: Path) -> tuple[list[str], tuple[str, ...]]:
    csv = folder / "train.csv"
    csv.write_text("en,fr\nalpha,ALPHA\n")
    return [f"tasks.translation.data.files.train={csv}"], ("tasks.translation.data.format",)


BROKEN = {
    "missing local file": _missing_file,
    "plain text named .gz": _plain_text_named_gz,
    "truncated gzip": _truncated_gz,
    "damaged parquet": _damaged_parquet,
    "unknown format": _unknown_format,
    "bad key": lambda folder: (["tasks.translation.train.max_step=3"],
                               ("tasks.translation.train.max_step", "unknown key")),
    "workers do not fit the CPUs": lambda folder: (
        ["tasks.translation.train.num_workers=2", "tasks.translation.train.cpus_per_worker=1"],
        ("tasks.translation.train.cpus_per_worker", "ray.num_cpus=2")),
    "unknown variant": lambda folder: (["tasks.translation.variants=[softmax, nope]"],
                                       ("tasks.translation.variants", "'nope'")),
    "vocabulary without room for the special pieces": lambda folder: (
        ["tasks.translation.tokenizer.vocab_size=4"], ("tasks.translation.tokenizer.vocab_size",)),
    "unreachable tracking server": lambda folder: (["tracking.uri=http://127.0.0.1:1"],
                                                   ("tracking.uri", "http://127.0.0.1:1")),
    "unreachable Ray head": lambda folder: (["ray={address: 'ray://127.0.0.1:1'}"],
                                            ("ray.address", "127.0.0.1:1")),
    "storage root is a file": lambda folder: ([f"storage.root={folder / 'tiny.yaml'}"],
                                              ("storage.root", "tiny.yaml")),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_config_exits_2_naming_the_key(tmp_path, case):
    config = tiny(tmp_path)
    overrides, named = BROKEN[case](tmp_path)
    outcome = check(tmp_path, str(config), *overrides)
    assert_rejected(outcome, *named, within_s=20)
    assert outcome.stdout == ""  # no part of the plan
    assert [line for line in outcome.stderr.splitlines() if line.strip()] == [outcome.error_line]
    assert storage_state(tmp_path / "runs") is None


@pytest.mark.parametrize(("workers", "cpus", "total", "cluster_fails", "local_fails"), [
    (2, 0.5, 2, False, False),   # one CPU left for Ray Data
    (2, 1.0, 2, True, True),     # the workers take every CPU: the reads never start
    (2, 1.0, 2.5, True, True),   # half a CPU left
    (2, 2.0, 2, False, True),    # do not fit: a cluster's autoscaler adds nodes, a local Ray no
])
def test_the_cpus_left_for_ray_data(workers, cpus, total, cluster_fails, local_fails):
    """The arithmetic the train stage applies to a cluster and `check` to a local instance."""
    from heat.validation import ConfigError
    from pipeline.config import TrainConfig
    from pipeline.stages.train import check_cpus_left_for_data

    train = TrainConfig(num_workers=workers, cpus_per_worker=cpus)
    for autoscaled, fails in ((True, cluster_fails), (False, local_fails)):
        if not fails:
            check_cpus_left_for_data(train, total, autoscaled=autoscaled)
            continue
        with pytest.raises(ConfigError, match="less than one of the cluster's") as error:
            check_cpus_left_for_data(train, total, autoscaled=autoscaled)
        assert error.value.field == "train.cpus_per_worker"


def test_a_real_process_exits_2_without_a_traceback(tmp_path):
    config = tiny(tmp_path)
    outcome = heat_pipeline("check", str(config), "tracking.uri=http://127.0.0.1:1",
                            cwd=tmp_path, timeout=120)
    assert_rejected(outcome, "tracking.uri", within_s=120)
    assert outcome.stdout == ""
    assert storage_state(tmp_path / "runs") is None
