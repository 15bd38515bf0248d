"""The fused CPU kernels give the same bits whatever vector width they are compiled for.

The library is built with -march=native on each machine (`cpu_kernels.FLAGS`); a sum split by
the target's vector width (an `omp simd reduction`) rounded differently with AVX2 and with
AVX-512, and HEAT's trained scores moved from one machine to the next while softmax's and
hadamard's did not. Two builds of one machine stand in for two machines: native, and 128-bit
SSE vectors with FMA kept (contraction stays the same; only the vector width changes)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from heat.attention.cpu_kernels import _cpu_signature

CHECK = Path(__file__).parent / "kernel_isa_check.py"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or
                    not {"avx2", "fma"} <= set(_cpu_signature().split()),
                    reason="needs an x86-64 CPU with AVX2 and FMA to build both widths")
def test_heat_and_hadamard_kernels_give_the_same_bits_at_every_vector_width(tmp_path):
    results = []
    for flags in (["-march=native", "-mprefer-vector-width=512"], ["-march=x86-64-v2", "-mfma"]):
        done = subprocess.run([sys.executable, str(CHECK), *flags], capture_output=True,
                              text=True, timeout=300,
                              env={**os.environ,
                                   "HEAT_KERNEL_CACHE": str(tmp_path / flags[0][7:])})
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    native, sse = results
    assert set(native) == {"heat", "heat_causal", "heat_rms", "heat_rms_causal",
                           "heat_rms_shift", "hadamard_rms", "hadamard_rms_causal"}
    assert native == sse
