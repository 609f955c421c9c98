#!/usr/bin/env python3
"""Median eager step (``fused=False``) on the T5-small-like parameters, of whichever
``adafactor`` is imported: run it under two checkouts' ``PYTHONPATH`` in turn to compare them on
one machine (docs/benchmarks.md, "Latest run").

Usage::

    git archive 8864c5e src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python scripts/eager_step_time.py fp32 2 7
    PYTHONPATH=src python scripts/eager_step_time.py fp32 2 7      # dtype, threads, steps
    PYTHONPATH=src python scripts/eager_step_time.py bf16 1 3 profile   # and torch's profile
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from adafactor import Adafactor
from adafactor.model_shapes import t5_small_like


def main(dtype_name: str, threads: int, steps: int, profile: bool) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    params = [
        torch.nn.Parameter((torch.randn(t.shape) * 0.02).to(dtype))
        for t in t5_small_like().values()
    ]
    for p in params:
        p.grad = (torch.randn(p.shape) * 1e-3).to(dtype)
    opt = Adafactor(params, fused=False)
    for _ in range(2):
        opt.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - start)
    print(f"{statistics.median(times) * 1e3:.1f} ms")
    if profile:
        with torch.profiler.profile() as prof:
            for _ in range(steps):
                opt.step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:] == ["profile"])
