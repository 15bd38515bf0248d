"""The fused CPU kernels are built by the run's driver while the data stages run, so that the
training workers find them in the cache (each rank compiled them at its first step before)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pipeline.config import load_config, packaged_config
from pipeline.run import _variants_calling_cpu_kernels

BUILD = """
import json, sys
from heat.attention import cpu_kernels
path = cpu_kernels._library_path()
before = path.exists()
thread = cpu_kernels.build_in_background()
started = thread is not None
if thread is not None:
    thread.join(timeout=240)
again = cpu_kernels.build_in_background()
print(json.dumps({"before": before, "started": started, "built": path.exists(),
                  "again": again is not None, "loads": cpu_kernels.unavailable_reason() is None}))
"""


def _build(tmp_path, **env: str) -> dict[str, bool]:
    done = subprocess.run([sys.executable, "-c", BUILD], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HEAT_KERNEL_CACHE": str(tmp_path),
                                            **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_background_build_fills_the_cache_once_and_the_library_loads(tmp_path):
    assert _build(tmp_path) == {"before": False, "started": True, "built": True,
                                "again": False, "loads": True}
    # HEAT_CPU_KERNELS=0: nothing is built
    assert _build(tmp_path / "off", HEAT_CPU_KERNELS="0")["started"] is False


def test_the_smoke_config_builds_for_heat_and_hadamard_and_not_for_softmax_alone():
    assert _variants_calling_cpu_kernels(load_config(packaged_config("smoke"))) == {
        "translation": ["hadamard", "heat"], "classification": ["hadamard", "heat"]}
    only = load_config(packaged_config("smoke"), ["tasks.translation.variants=[softmax,nystrom]",
                                                  "tasks.classification=null"])
    assert _variants_calling_cpu_kernels(only) == {}
