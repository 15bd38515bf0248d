"""pipeline.config.tune and pipeline.search.space: search configs validate before any work, every
grid point is a variant that fits the task, and the Tune pieces follow the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from heat.attention import HeatSpec
from heat.validation import ConfigError
from pipeline.config import CONFIG_DIR
from pipeline.config.tune import load_tune_config, trial_variant
from pipeline.search import space

SEARCHES = sorted(p.name for p in CONFIG_DIR.glob("tune_*.yaml"))


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    """The paper search configs name hub data sets; the hub check is not under test here."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def write(tmp_path: Path, tune: dict, **top) -> str:
    raw = {"name": "search", "base": "smoke", "storage": {"root": str(tmp_path / "runs")},
           "tasks": {"classification": None}, "tune": tune, **top}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_the_shipped_search_configs():
    assert SEARCHES == ["tune_heat_rank.yaml", "tune_smoke.yaml", "tune_taylor_order.yaml"]


@pytest.mark.parametrize("name", SEARCHES)
def test_every_shipped_search_config_validates(name):
    config = load_tune_config(str(CONFIG_DIR / name))
    assert config.name == Path(name).stem
    searched = {s.variant for s in config.tune.searches.values()}
    assert {"heat", "taylor"} & searched
    counterparts = {"heat": "hadamard", "taylor": "softmax"}
    assert all(counterparts[v] in searched for v in searched & set(counterparts))


def test_tune_smoke_searches_heat_rank_and_taylor_order_on_the_builtin_corpus():
    config = load_tune_config(str(CONFIG_DIR / "tune_smoke.yaml"))
    assert list(config.pipeline.tasks) == ["translation"]
    searches = config.tune.searches
    assert searches["heat_rank"].grid == {"rank": [16, 8, 2]}
    assert searches["taylor_order"].grid["order"] == [2, 1]
    assert [space.trial_count(s) for s in searches.values()] == [3, 2, 1, 1]
    assert config.pipeline.tasks["translation"].data.source == "builtin"


def test_a_grid_point_sets_the_parameter_at_every_site_that_has_it():
    config = load_tune_config(str(CONFIG_DIR / "tune_smoke.yaml"))
    task = config.pipeline.tasks["translation"]
    variant = trial_variant(task, "heat", {"rank": 4, "basis": "taylor"})
    sites = variant.attention
    assert all(isinstance(s, HeatSpec) and s.rank == 4 and s.basis == "taylor"
               for s in (sites.encoder_self, sites.decoder_self, sites.cross))


@pytest.mark.parametrize("tune, key, message", [
    ({"searches": {"s": {"task": "nope", "variant": "heat"}}},
     "tune.searches.s.task", "unknown task 'nope'"),
    ({"searches": {"s": {"task": "translation", "variant": "heat", "grid": {"order": [2]}}}},
     "tune.searches.s.grid.order", "has no parameter 'order'"),
    ({"searches": {"s": {"task": "translation", "variant": "heat", "grid": {"rank": [0]}}}},
     "tune.searches.s.grid", "rank"),
    ({"searches": {"s": {"task": "translation", "variant": "heat", "grid": {"seed": [1]}}}},
     "tune.searches.s.grid.seed", "not an attention parameter"),
    ({"searches": {"s": {"task": "translation", "variant": "heat", "lr": {"uniform": [1, 2]}}}},
     "tune.searches.s.lr", "loguniform"),
    ({"searches": {"s": {"task": "translation", "variant": "heat", "grid": {"rank": [4, 4]}}}},
     "tune.searches.s.grid.rank", "distinct"),
    ({"searches": {}}, "tune.searches", "at least one search"),
    ({"searches": {"s": {"task": "translation", "variant": "heat"}}, "bogus": 1},
     "tune.bogus", "unknown key"),
    ({"searches": {"s": {"task": "translation", "variant": "heat"}},
      "scheduler": {"reduction_factor": 1}}, "tune.scheduler.reduction_factor", ">= 2"),
])
def test_bad_searches_name_the_key(tmp_path, tune, key, message):
    with pytest.raises(ConfigError) as caught:
        load_tune_config(write(tmp_path, tune))
    assert caught.value.field == key
    assert message in str(caught.value)


def test_asha_needs_checkpoints_to_compare_at(tmp_path):
    path = write(tmp_path, {"searches": {"s": {"task": "translation", "variant": "heat"}}},
                 defaults={"train": {"checkpoint_every": 0}})
    with pytest.raises(ConfigError, match="checkpoint_every") as caught:
        load_tune_config(path)
    assert caught.value.field == "tasks.translation.train.checkpoint_every"


def test_a_search_takes_its_seeds_from_its_searches_not_from_the_pipeline_key(tmp_path):
    path = write(tmp_path, {"searches": {"s": {"task": "translation", "variant": "heat"}}})
    with pytest.raises(ConfigError, match="once per seed of its own") as caught:
        load_tune_config(path, ["seeds=[0, 1]"])
    assert caught.value.field == "seeds"


def test_a_missing_base_and_a_missing_tune_section_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="packaged config") as caught:
        load_tune_config(write(tmp_path, {"searches": {}}, base="nowhere"))
    assert caught.value.field == "base"
    plain = tmp_path / "plain.yaml"
    plain.write_text("base: smoke\n")
    with pytest.raises(ConfigError) as caught:
        load_tune_config(str(plain))
    assert caught.value.field == "tune"


def test_overrides_reach_the_tune_section(tmp_path):
    config = load_tune_config(str(CONFIG_DIR / "tune_smoke.yaml"),
                              ["tune.searches.heat_rank.grid.rank=[8]",
                               "tune.searches.heat_rank.seeds=[0,1,2]"])
    assert space.trial_count(config.tune.searches["heat_rank"]) == 3


def test_param_space_grid_and_optuna():
    from ray import tune

    config = load_tune_config(str(CONFIG_DIR / "tune_taylor_order.yaml"))
    grid = space.param_space(config.tune.searches["taylor_order"])
    assert grid["order"] == tune.grid_search([2, 1])
    assert grid["seed"] == tune.grid_search([0, 1, 2])
    assert space.trial_count(config.tune.searches["taylor_order"]) == 18
    sampled = space.param_space(config.tune.searches["taylor_lr"])
    assert isinstance(sampled["lr"], tune.search.sample.Float)
    assert space.search_algorithm(config.tune.searches["taylor_lr"], 0) is not None


def test_concurrency_never_takes_the_cpu_ray_data_needs():
    config = load_tune_config(str(CONFIG_DIR / "tune_smoke.yaml"))
    task = config.pipeline.tasks["translation"]  # 2 workers x 0.5 CPU
    assert space.concurrency(config.tune, task, {"CPU": 2.0}) == 1
    assert space.concurrency(config.tune, task, {"CPU": 8.0}) == 4
    capped = load_tune_config(str(CONFIG_DIR / "tune_smoke.yaml"),
                              ["tune.max_concurrent_trials=2"])
    assert space.concurrency(capped.tune, task, {"CPU": 8.0}) == 2
    assert space.concurrency(capped.tune, task, {"CPU": 1.0}) == 1


def test_asha_scheduler_from_the_config():
    config = load_tune_config(str(CONFIG_DIR / "tune_smoke.yaml"))
    task = config.pipeline.tasks["translation"]
    scheduler = space.scheduler(config.tune, config.tune.searches["taylor_order"], task)
    assert scheduler._time_attr == "step" and scheduler.metric == "val_loss"
    milestones = [milestone for milestone, _ in scheduler._brackets[0]._rungs]
    assert scheduler._max_t == 400 and min(milestones) == 100  # rungs at 100 and 200 steps
    from ray.tune.schedulers import FIFOScheduler

    rank_sweep = space.scheduler(config.tune, config.tune.searches["heat_rank"], task)
    assert isinstance(rank_sweep, FIFOScheduler)  # every rank of the curve runs to the end


def test_asha_grace_period_must_leave_room_to_compare(tmp_path):
    path = write(tmp_path, {"searches": {"s": {"task": "translation", "variant": "heat"}},
                            "scheduler": {"grace_period": 400}})
    with pytest.raises(ConfigError, match="below train.max_steps") as caught:
        load_tune_config(path)
    assert caught.value.field == "tune.searches.s.scheduler.grace_period"


def test_optuna_searches_the_learning_rate_over_our_space(tmp_path):
    """The Optuna path of a search config drives a real Tuner: every trial gets a learning rate
    from the log-uniform range and the grid's choices (a stand-in objective; the trials of
    `tune_smoke` cover training itself)."""
    import ray
    from ray import tune

    config = load_tune_config(str(CONFIG_DIR / "tune_taylor_order.yaml"),
                              ["tune.searches.taylor_lr.num_samples=4"])
    search = config.tune.searches["taylor_lr"]

    def objective(params):
        tune.report({space.METRIC: abs(params["lr"] - 1e-3) * 1000})

    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        grid = tune.Tuner(
            objective, param_space=space.param_space(search),
            tune_config=tune.TuneConfig(search_alg=space.search_algorithm(search, 0),
                                        num_samples=search.num_samples,
                                        max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    assert len(grid) == 4 and not grid.errors
    for result in grid:
        assert 1e-4 <= result.config["lr"] <= 3e-3 and result.config["order"] == 2
