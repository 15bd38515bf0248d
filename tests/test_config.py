"""pipeline.config: the shipped configs validate; layout, defaults, variants, tracking resolution,
and errors that name the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from heat.attention import HeatSpec, SoftmaxSpec, TaylorSpec
from heat.models import AttentionSites
from heat.validation import ConfigError
from pipeline.config import CONFIG_DIR, build_config, load_config, packaged_config

SHIPPED = sorted(p.name for p in CONFIG_DIR.glob("*.yaml")
                 if not p.name.startswith(("tune_", "ablation_")))
"""The pipeline configs of the paper's tasks; `tune_*.yaml` are search configs
(tests/test_tune_config.py), `ablation_*.yaml` pipeline configs of one experiment each."""
ABLATIONS = sorted(p.name for p in CONFIG_DIR.glob("ablation_*.yaml"))


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    """The paper configs name hub data sets; this machine cannot reach the hub, and the check
    that it can is not what these tests are about (tests/test_data_* cover it)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def small_config(tmp_path: Path, **changes) -> dict:
    """A one-task config on a local JSONL corpus (translation), as a mapping."""
    corpus = tmp_path / "train.jsonl"
    if not corpus.exists():
        corpus.write_text("".join(
            f'{{"translation": {{"en": "sentence {i}", "fr": "phrase {i}"}}}}\n' for i in range(50)
        ))
    raw = {
        "name": "small",
        "storage": {"root": str(tmp_path / "runs")},
        "ray": {"address": "local", "num_cpus": 2},
        "variants": {"softmax": {"name": "softmax"}, "heat": {"name": "heat", "rank": 4}},
        "tasks": {"translation": {
            "data": {"task": "translation", "source": "local", "files": {"train": str(corpus)}},
            "tokenizer": {"vocab_size": 40},
            "model": {"d_model": 32, "num_heads": 2, "num_encoder_layers": 1,
                      "num_decoder_layers": 1, "ffn_dim": 64, "max_length": 32},
            "train": {"num_workers": 1, "max_steps": 10, "warmup_steps": 1,
                      "tokens_per_batch": 256},
        }},
    }
    raw.update(changes)
    return raw


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_validates(name):
    config = load_config(str(CONFIG_DIR / name))
    assert config.name == Path(name).stem
    assert {v.name for task in config.tasks.values() for v in task.variants} == {
        "softmax", "linformer", "nystrom", "hadamard", "heat", "taylor"}


def test_the_site_ablation_puts_heat_and_hadamard_at_one_site_at_a_time():
    assert ABLATIONS == ["ablation_sites.yaml"]
    config = load_config(str(CONFIG_DIR / "ablation_sites.yaml"))
    (task,) = config.tasks.values()
    sites = {v.name: v.attention for v in task.variants}
    for name in ("heat", "hadamard"):
        for site in ("encoder_self", "decoder_self", "cross"):
            short = {"encoder_self": "enc", "decoder_self": "dec", "cross": "cross"}[site]
            chosen = {s: getattr(sites[f"{name}_{short}"], s).name
                      for s in ("encoder_self", "decoder_self", "cross")}
            assert chosen == {s: name if s == site else "softmax" for s in chosen}, chosen


def test_the_six_configs_exist():
    assert SHIPPED == sorted(f"{n}.yaml" for n in (
        "smoke", "wmt14_en_fr", "iwslt15_en_vi", "imdb", "yelp_polarity", "glue_sst2"))


def test_smoke_has_both_tasks_and_runs_locally():
    config = load_config(packaged_config("smoke"))
    assert {t.kind for t in config.tasks.values()} == {"translation", "classification"}
    assert config.ray.address == "local"
    assert all(t.data.source == "builtin" for t in config.tasks.values())


def test_resolved_config_rebuilds_to_the_same_config():
    config = load_config(packaged_config("smoke"))
    assert build_config(config.to_dict()).to_dict() == config.to_dict()


def test_seeds_repeat_every_task_at_each_seed_and_round_trip():
    config = load_config(packaged_config("smoke"), ["seeds=[3, 1]"])
    task = config.tasks["translation"]
    assert [(seed, t.train.seed) for seed, t in config.seeded(task)] == [(3, 3), (1, 1)]
    assert [t.train.max_steps for _, t in config.seeded(task)] == [task.train.max_steps] * 2
    assert build_config(config.to_dict()).seeds == (3, 1)
    plain = load_config(packaged_config("smoke"))
    assert plain.seeds is None and "seeds" not in plain.to_dict()
    assert plain.seeded(task) == [(None, task)]


def test_defaults_merge_under_tasks_and_overrides_apply(tmp_path):
    config = load_config(packaged_config("smoke"), [
        "defaults.train.max_steps=77", "tasks.translation.model.d_model=32",
    ])
    translation, classification = config.tasks["translation"], config.tasks["classification"]
    assert translation.train.max_steps == 77
    assert classification.train.max_steps == 300  # the task's own key wins over defaults
    assert translation.model.d_model == 32 and classification.model.d_model == 64
    assert translation.train.num_workers == classification.train.num_workers == 2


def test_one_spec_means_every_site_and_classification_takes_encoder_self(tmp_path):
    raw = small_config(tmp_path, variants={
        "heat": {"name": "heat", "rank": 4},
        "mixed": {"encoder_self": {"name": "linformer", "rank": 8, "max_length": 32},
                  "decoder_self": {"name": "taylor", "order": 2}},
    })
    task = build_config(raw).tasks["translation"]
    heat, mixed = task.variants  # parsed once, into typed specs
    assert heat.attention == AttentionSites(**{site: HeatSpec(rank=4)
                                               for site in ("encoder_self", "decoder_self", "cross")})
    assert mixed.attention.decoder_self == TaylorSpec(order=2)
    assert mixed.attention.cross == SoftmaxSpec()  # a missing site is softmax (AttentionSites)


def test_classification_variants_are_single_specs(tmp_path):
    corpus = tmp_path / "cls.jsonl"
    corpus.write_text("".join(f'{{"text": "review {i}", "label": {i % 2}}}\n' for i in range(40)))
    raw = small_config(tmp_path, variants={
        "heat": {"name": "heat", "rank": 4},
        "sites": {"encoder_self": {"name": "taylor", "order": 2}},
    })
    raw["tasks"] = {"sentiment": {**raw["tasks"]["translation"], "data": {
        "task": "classification", "source": "local", "files": {"train": str(corpus)}}}}
    task = build_config(raw).tasks["sentiment"]
    assert [v.attention for v in task.variants] == [HeatSpec(rank=4), TaylorSpec(order=2)]


def test_a_null_task_is_disabled():
    config = load_config(packaged_config("smoke"), ["tasks.classification=null"])
    assert list(config.tasks) == ["translation"]
    with pytest.raises(ConfigError, match="tasks: every task is disabled"):
        load_config(packaged_config("smoke"), ["tasks.classification=null",
                                               "tasks.translation=null"])


def test_task_can_select_a_subset_of_variants(tmp_path):
    raw = small_config(tmp_path)
    raw["tasks"]["translation"]["variants"] = ["heat"]
    assert [v.name for v in build_config(raw).tasks["translation"].variants] == ["heat"]


def test_storage_and_tracking_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = small_config(tmp_path, storage={"root": "out"})
    config = build_config(raw)
    assert config.storage.root == str(tmp_path / "out")
    assert config.tracking.uri == f"sqlite:///{tmp_path}/out/mlflow.db"
    assert config.tracking.artifact_location == f"{tmp_path}/out/mlartifacts"
    assert config.tracking.experiment == "small"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    served = build_config(raw).tracking
    assert served.uri == "http://127.0.0.1:5000" and served.artifact_location is None
    remote = build_config(small_config(tmp_path, storage={"root": "s3://bucket/heat"}))
    assert remote.storage.root == "s3://bucket/heat"


def test_packaged_config_works_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Path(packaged_config("smoke")).is_file()
    with pytest.raises(ConfigError, match="nope.yaml not found"):
        packaged_config("nope")


# ---------------------------------------------------------------------------------------------
# Errors: each names the key, the value and what is allowed


def bad(tmp_path: Path, edit) -> str:
    raw = small_config(tmp_path)
    edit(raw)
    with pytest.raises(ConfigError) as error:
        build_config(raw)
    return str(error.value)


def task_of(raw: dict) -> dict:
    return raw["tasks"]["translation"]


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda r: r.update(bogus=1),
     "bogus: unknown key; allowed keys: name, description, storage"),
    (lambda r: task_of(r)["train"].update(max_stpes=1),
     "tasks.translation.train.max_stpes: unknown key; allowed keys: num_workers"),
    (lambda r: task_of(r)["train"].update(max_steps="ten"),
     "tasks.translation.train.max_steps: must be an integer, got 'ten'"),
    (lambda r: task_of(r)["train"].update(lr=-1),
     "tasks.translation.train.lr: must be a number in (0.0, 1.0], got -1"),
    (lambda r: r["variants"].update(heat={"name": "heet"}),
     "variants.heat.name: unknown variant 'heet'; allowed: hadamard, heat, linformer, nystrom, "
     "softmax, taylor"),
    (lambda r: r["variants"].update(heat={"name": "heat", "rank": 99}),
     "variants.heat.rank: must be an integer in [1, 16], got 99"),
    (lambda r: r["variants"].update(x={"cross": {"name": "taylor", "order": 3}}),
     "variants.x.cross.order: odd order 3 can make attention normalisers zero or negative"),
    (lambda r: r["variants"].update(x={"name": "heat", "rnak": 4}),
     "variants.x.rnak: unknown parameter for variant 'heat'; allowed: rank, basis"),
    (lambda r: r["variants"].update(lin={"name": "linformer", "rank": 8, "max_length": 16}),
     "variants.lin.encoder_self.max_length: linformer max_length=16 is smaller than the model's "
     "max_length=32"),
    (lambda r: r["variants"].update(x={"encoder": {"name": "heat"}}),
     "variants.x.encoder: unknown attention site; a variant is one spec"),
    (lambda r: task_of(r).update(variants=["heat", "taylor"]),
     "tasks.translation.variants: unknown variant 'taylor'; defined in variants: softmax, heat"),
    (lambda r: task_of(r)["data"]["files"].update(train="/no/such/file.jsonl"),
     "tasks.translation.data.files.train: file not found: /no/such/file.jsonl"),
    (lambda r: task_of(r).update(tokenizer="no_such_spec"),
     "tasks.translation.tokenizer: no tokenizer spec 'no_such_spec'"),
    (lambda r: task_of(r).update(tokenizer={"vocab_size": 2}),
     "tasks.translation.tokenizer.vocab_size: must be an integer >= 5, got 2"),
    (lambda r: task_of(r)["train"].update(tokens_per_batch=40),
     "tasks.translation.train.tokens_per_batch: must be >= 64 (2 x model.max_length=32)"),
    (lambda r: task_of(r)["train"].update(tokens_per_batch=20, batch_tokens="max"),
     "tasks.translation.train.tokens_per_batch: must be >= 32 (1 x model.max_length=32)"),
    (lambda r: task_of(r)["train"].update(batch_tokens="fairseq"),
     "tasks.translation.train.batch_tokens: must be one of"),
    (lambda r: task_of(r)["train"].update(num_workers=2),
     "tasks.translation.train.cpus_per_worker: 2 workers x cpus_per_worker=1.0 need 2 CPUs plus "
     "one for Ray Data, but the local Ray instance has ray.num_cpus=2; use at most 0.5"),
    (lambda r: r.update(ray={"address": "auto", "num_cpus": 2}),
     "ray.num_cpus: only applies to address local"),
    (lambda r: r.update(ray={"address": "auto", "worker_niceness": 15}),
     "ray.worker_niceness: only applies to address local"),
    (lambda r: r.update(ray={"address": "local", "worker_niceness": 20}),
     "ray.worker_niceness: must be an integer in [0, 19], got 20"),
    (lambda r: r.update(tracking={"uri": "mlruns"}),
     "tracking.uri: must be an MLflow tracking URI starting with one of sqlite:///"),
    (lambda r: r.update(storage={"root": "s3://bucket/x"}),
     "tracking.uri: is required when storage.root is remote (s3://bucket/x)"),
    (lambda r: r.update(tasks={}), "tasks: must be a non-empty mapping"),
    (lambda r: r.update(name="has space"), "name: must be a name matching"),
    (lambda r: r.update(seeds=[0, 0]), "seeds: must be a non-empty list of distinct non-negative "
                                       "integers (train.seed of each repetition), got [0, 0]"),
    (lambda r: r.update(seeds=[]), "seeds: must be a non-empty list"),
    (lambda r: r.update(seeds=[1, -2]), "seeds: must be a non-empty list"),
    (lambda r: r.update(seeds=3), "seeds: must be a non-empty list"),
    (lambda r: r.update(seeds=[True]), "seeds: must be a non-empty list"),
])
def test_bad_configs_name_key_value_and_allowed(tmp_path, edit, expected):
    assert bad(tmp_path, edit).startswith(expected)


@pytest.mark.parametrize(("content", "expected"), [
    ("", "is empty: no rows to read"),
    ("not json\n{broken\n", "none of the first 2 rows matches the translation schema; expected "
                            '{"translation": {"en": <text>, "fr": <text>}}'),
    ('{"text": "a review", "label": 1}\n', "none of the first 1 rows matches the translation"),
])
def test_unreadable_corpora_fail_before_any_work(tmp_path, content, expected):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text(content)
    message = bad(tmp_path, lambda r: task_of(r)["data"]["files"].update(train=str(corpus)))
    assert message.startswith("tasks.translation.data.files.train: ")
    assert expected in message


def test_missing_config_file_and_bad_override():
    with pytest.raises(ConfigError, match="config: file not found: /no/such.yaml"):
        load_config("/no/such.yaml")
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config(packaged_config("smoke"), ["defaults.train.max_steps"])


def test_config_yaml_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="must hold a mapping at the top level"):
        load_config(str(path))
