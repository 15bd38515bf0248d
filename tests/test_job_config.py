"""A config read inside a Ray job (Ray's job supervisor sets RAY_JOB_CONFIG_JSON_ENV_VAR for the
entrypoint): the job's cluster whatever `ray.address` says, and no path that would vanish with
the job's temporary working directory (`pipeline.config.job`)."""

from __future__ import annotations

import pytest

from heat.validation import ConfigError
from pipeline.config import load_config, packaged_config
from pipeline.config.job import JOB_ENV


@pytest.fixture
def in_job(monkeypatch):
    monkeypatch.setenv(JOB_ENV, '{"runtime_env": {}}')
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def smoke(*overrides: str):
    return load_config(packaged_config("smoke"), list(overrides))


def test_outside_a_job_nothing_changes(monkeypatch, tmp_path):
    monkeypatch.delenv(JOB_ENV, raising=False)
    config = smoke(f"storage.root={tmp_path}")
    assert (config.ray.address, config.ray.num_cpus) == ("local", 2)
    assert smoke().storage.root.endswith("/runs")  # relative is fine on one's own machine


def test_inside_a_job_the_pipeline_joins_the_jobs_cluster(in_job, tmp_path):
    config = smoke(f"storage.root={tmp_path}")
    assert (config.ray.address, config.ray.num_cpus) == ("auto", None)
    assert smoke(f"storage.root={tmp_path}", "ray.address=auto").ray.address == "auto"


@pytest.mark.parametrize(("overrides", "key", "says"), [
    ((), "storage.root", "'runs' is relative"),
    (("storage.root=data/runs",), "storage.root", "'data/runs' is relative"),
    (("storage.root=file://runs",), "storage.root", "is relative"),
    (("storage.root={tmp}", "tracking.uri=sqlite:///mlflow.db"), "tracking.uri",
     "use a tracking server"),
    (("storage.root={tmp}", "tracking.uri=mlruns"), "tracking.uri", "is relative"),
    (("storage.root={tmp}", "tracking.artifact_location=artifacts"),
     "tracking.artifact_location", "is relative"),
    (("storage.root={tmp}", "ray.address=ray://10.0.0.1:10001"), "ray.address",
     "names another cluster"),
])
def test_inside_a_job_paths_that_vanish_with_the_job_are_refused(in_job, tmp_path, overrides,
                                                                   key, says):
    with pytest.raises(ConfigError) as error:
        smoke(*(o.format(tmp=tmp_path) for o in overrides))
    assert error.value.field == key and says in str(error.value)
    assert "deleted when the job ends" in str(error.value) or key == "ray.address"


def test_inside_a_job_absolute_paths_uris_and_servers_are_accepted(in_job, tmp_path, monkeypatch):
    smoke(f"storage.root={tmp_path}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    smoke("storage.root=s3://bucket/heat", "tracking.uri=http://127.0.0.1:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///relative.db")
    with pytest.raises(ConfigError, match="^tracking.uri: 'sqlite:///relative.db' is relative"):
        smoke(f"storage.root={tmp_path}")
