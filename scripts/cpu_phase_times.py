#!/usr/bin/env python3
"""Time the C group kernels phase by phase on one 4096×4096 parameter, beside a ``copy_`` of the
same size in the same process (the figures of "Where the time goes" in docs/benchmarks.md).

Usage::

    python scripts/cpu_phase_times.py fp32 2     # dtype (fp32 or bf16), threads
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch

from adafactor import Adafactor
from adafactor.kernels import cpu

N = M = 4096
STEPS = 7
PASSES = {"sums": 2, "update_sums": 1, "apply": 3}
"""Full-size tensors each phase reads or writes: (G, X), G, (G, X read, X written)."""


def timed(name: str, times: dict[str, list[float]]) -> Callable[..., None]:
    """The backend's phase ``name``, recording how long each call takes."""
    phase = getattr(cpu, name)

    def call(*args: object) -> None:
        start = time.perf_counter()
        phase(*args)
        times.setdefault(name, []).append(time.perf_counter() - start)

    return call


def main(dtype_name: str, threads: int) -> None:
    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    p = torch.nn.Parameter(torch.randn(N, M).to(dtype))
    p.grad = (torch.randn(N, M) * 1e-3).to(dtype)
    opt = Adafactor([p], fused=True)
    opt.step()  # the build, the plan and the state, outside the timing
    times: dict[str, list[float]] = {}
    for name in PASSES:
        setattr(cpu, name, timed(name, times))
    src, dst = torch.empty(N * M), torch.empty(N * M)
    steps, copies = [], []
    for _ in range(STEPS):
        start = time.perf_counter()
        opt.step()
        steps.append(time.perf_counter() - start)
        start = time.perf_counter()
        dst.copy_(src)
        copies.append(time.perf_counter() - start)
    copy = statistics.median(copies)
    print(f"copy {copy * 1e3:.1f} ms = {2 * N * M * 4 / copy / 1e9:.1f} GB/s (float32, r + w)")
    print(f"step {statistics.median(steps) * 1e3:.1f} ms ({dtype_name}, {threads} threads)")
    for name, passes in PASSES.items():
        median = statistics.median(times[name])
        rate = passes * N * M * p.element_size() / median / 1e9
        print(f"{name}: {median * 1e3:.2f} ms, {rate:.1f} GB/s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fp32", int(sys.argv[2]) if len(sys.argv) > 2 else 1)
