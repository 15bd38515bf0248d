"""The pipeline's own local Ray instance (`pipeline.run.ray_session`): its workers' niceness."""

import os

import pytest
import ray

from pipeline.config.sections import RayConfig
from pipeline.run import ray_session

pytestmark = pytest.mark.slow


@ray.remote(num_cpus=1)
def niceness() -> int:
    return os.nice(0)


def test_local_workers_run_at_the_configured_niceness():
    """Ray's default worker niceness is 15 (any other process preempts training); the local
    instance's workers run at `ray.worker_niceness`, 0 unless set. A non-default value shows
    the setting reaches the raylet (0 alone could be the environment's)."""
    assert not ray.is_initialized()
    assert RayConfig().worker_niceness == 0
    with ray_session(RayConfig(num_cpus=1, worker_niceness=7)):
        assert ray.get(niceness.remote()) == 7 + os.nice(0)
    assert not ray.is_initialized()
