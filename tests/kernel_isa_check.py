"""Run by tests/test_kernel_isa.py in its own process: builds the fused CPU kernels with the
compiler flags given on the command line (in place of `cpu_kernels.FLAGS`' -march and vector
width), runs HEAT (every input norm and key shift the configs use, causal and not, forward and
backward) and exact hadamard on fixed inputs, and prints one JSON object of SHA-1s of the bits."""

from __future__ import annotations

import hashlib
import json
import sys

import torch

import heat.attention.cpu_kernels as cpu_kernels
from heat.attention import HadamardSpec, HeatSpec, build_attention

SPECS = {
    "heat": HeatSpec(rank=12),
    "heat_rms": HeatSpec(rank=12, input_norm="rms"),
    "heat_rms_shift": HeatSpec(rank=12, input_norm="rms", key_shift="midrange"),
    "hadamard_rms": HadamardSpec(input_norm="rms"),
}


def digest(*tensors: torch.Tensor) -> str:
    sha = hashlib.sha1()
    for tensor in tensors:
        sha.update(tensor.detach().contiguous().numpy().tobytes())
    return sha.hexdigest()


def main(flags: list[str]) -> dict[str, str]:
    cpu_kernels.FLAGS = [f for f in cpu_kernels.FLAGS
                         if not f.startswith(("-march", "-mprefer-vector-width"))] + flags
    if (reason := cpu_kernels.unavailable_reason()) is not None:
        raise SystemExit(f"kernels unavailable: {reason}")
    torch.set_num_threads(1)
    batch, heads, length, dim = 3, 2, 37, 21  # dim 21: one full 16-lane pass and a tail
    out = {}
    for name, spec in SPECS.items():
        attention = build_attention(spec, head_dim=dim, num_heads=heads)
        for causal in (False, True):
            if causal and getattr(spec, "key_shift", "none") != "none":
                continue  # the shift serves non-causal sites only
            generator = torch.Generator().manual_seed(1)
            q, k, v = (torch.randn(batch, heads, length, dim, generator=generator) * scale
                       for scale in (1.7, 1.3, 1.0))
            q, k, v = (t.requires_grad_() for t in (q, k, v))
            output = attention(q, k, v, causal=causal)
            output.square().sum().backward()
            out[f"{name}{'_causal' if causal else ''}"] = digest(output, q.grad, k.grad, v.grad)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
