"""The Python time of a group step, the kernels themselves stubbed out (a backend whose calls
do nothing): what the host spends per step before and between launches, the cost the GPU step
cannot hide. Per parameter set, the median over steps of ``opt.step()`` with new gradients each
step (as after ``zero_grad()``), and of the hooks' time per backward pass with
``step_in_backward=True`` (one call per tensor).

    python scripts/host_time.py                    # t5-small gpt2-small demo-char 30x64² 300x64²
    python scripts/host_time.py t5-small 300x64²   # any sets of adafactor.bench, or Nx(64²)
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import types

import torch

import adafactor.kernels
from adafactor import Adafactor
from adafactor.bench.sets import set_shapes
from adafactor.kernels import cpu

SETS = ("t5-small", "gpt2-small", "demo-char", "30x64²", "300x64²")
STEPS = 30


def stub() -> types.SimpleNamespace:
    """A backend with the CPU one's geometry whose kernel calls do nothing."""

    def nothing(*_: object) -> None:
        return None

    return types.SimpleNamespace(
        DEVICE_TYPE="cpu",
        GEOMETRY=cpu.GEOMETRY,
        make_buffers=nothing,
        numbers=nothing,
        sums=nothing,
        update_sums=nothing,
        apply=nothing,
        sums_of=nothing,
    )


def shapes(name: str) -> list[tuple[int, ...]]:
    if name.endswith("x64²"):
        return [(64, 64)] * int(name[: -len("x64²")])
    return set_shapes(name)


def ordinary(params: list[torch.nn.Parameter]) -> float:
    """Median seconds of ``opt.step()``."""
    opt = Adafactor(params)
    times = []
    for k in range(STEPS + 3):
        for p in params:
            p.grad = torch.zeros_like(p)
        start = time.perf_counter()
        opt.step()
        if k >= 3:  # the first steps build state and plans
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_backward(params: list[torch.nn.Parameter]) -> float:
    """Median seconds per step of the hooks' per-tensor steps (called as the hooks call them,
    one tensor at a time), the gradients' memory given back outside the timing as in
    ``ordinary``."""
    opt = Adafactor(params, step_in_backward=True)
    hooks = opt._in_backward
    assert hooks is not None
    times = []
    for k in range(STEPS + 3):
        for p in params:
            p.grad = torch.zeros_like(p)
        held = [p.grad for p in params]  # freed after the timing, as zero_grad frees them
        start = time.perf_counter()
        for p in params:
            hooks.step_now([p])
        if k >= 3:
            times.append(time.perf_counter() - start)
        del held
    return statistics.median(times)


def main(names: list[str]) -> None:
    adafactor.kernels._backend = lambda device_type: stub()  # type: ignore[assignment]
    gc.disable()  # a collection in a timed step would be the collector's time, not ours
    print("| set | tensors | step() | per tensor | in backward (hooks) | per tensor |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        params = [torch.nn.Parameter(torch.empty(s)) for s in shapes(name)]
        a, b = ordinary(params), in_backward(params)
        n = len(params)
        print(
            f"| {name} | {n} | {a * 1e3:.3f} ms | {a / n * 1e6:.1f} µs "
            f"| {b * 1e3:.3f} ms | {b / n * 1e6:.1f} µs |"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or list(SETS))
