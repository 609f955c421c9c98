"""The Python time of a group step, the kernels themselves stubbed out (a backend whose calls
do nothing): what the host spends per step before and between launches, the cost the GPU step
cannot hide. Per parameter set, the median over steps of ``opt.step()`` with new gradients each
step (as after ``zero_grad()``), and of the hooks' time per backward pass with
``step_in_backward=True`` (one call per tensor).

The gradients are new tensors each step, their memory untouched, as a GPU's gradients leave
the host's caches (the "step()" column); the "zeroed" column writes zeros into them first,
as a CPU backward pass writes its gradients: up to hundreds of MB that push the optimizer's
Python objects out of the host's caches, so that every attribute read waits for memory.
"floor" is ``Floor``'s step, timed in turn with ours on the same gradients: torch's wrapper
of ``step()`` and one read of every gradient's pointer, the least any such step does.

With ``--real`` the C kernels run, not stubbed, on parameters of 2×2, one per tensor of the
set: their work is negligible, and what is timed is the host's side of the whole step, the
kernels' numbers, buffers and calls included.

    python scripts/host_time.py                    # t5-small gpt2-small demo-char 30x64² 300x64²
    python scripts/host_time.py t5-small 300x64²   # any sets of adafactor.bench, or Nx(64²)
    python scripts/host_time.py --real 30x64² 300x64²
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import types
from collections.abc import Callable

import torch
from torch import Tensor

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


class Floor(torch.optim.Optimizer):
    """The least a group step that launches kernels on new gradients does in Python: torch's
    own wrapper of ``step()`` (its profiler range and hooks, which every ``torch.optim``
    optimizer pays), and reading every gradient's pointer for the kernels' table."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            [p.grad.data_ptr() for p in group["params"]]


def ordinary(
    params: list[torch.nn.Parameter], fill: Callable[[Tensor], Tensor]
) -> tuple[float, float, float]:
    """Median seconds of ``step()`` of ``Floor``, of ours, and of ours with a new ``lr`` each
    step (as a scheduler writes it), in turn on the same gradients, made by ``fill`` each
    step."""
    floor, ours, scheduled = Floor(params), Adafactor(params), Adafactor(params, lr=1e-3)
    times: list[list[float]] = [[], [], []]
    for k in range(STEPS + 3):
        for p in params:
            p.grad = fill(p)
        scheduled.param_groups[0]["lr"] = 1e-3 / (k + 1)
        for opt, kept in zip((floor, ours, scheduled), times):
            start = time.perf_counter()
            opt.step()
            if k >= 3:  # the first steps build state and plans
                kept.append(time.perf_counter() - start)
    floor_s, ours_s, scheduled_s = map(statistics.median, times)
    return floor_s, ours_s, scheduled_s


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
            p.grad = torch.empty_like(p)
        held = [p.grad for p in params]  # freed after the timing, as zero_grad frees them
        start = time.perf_counter()
        for p in params:
            hooks.step_now([p])
        if k >= 3:
            times.append(time.perf_counter() - start)
        del held
    return statistics.median(times)


def main(argv: list[str]) -> None:
    real = "--real" in argv
    names = [a for a in argv if a != "--real"] or list(SETS)
    if not real:
        backend = stub()
        adafactor.kernels._backend = lambda device_type: backend  # type: ignore[assignment]
    gc.disable()  # a collection in a timed step would be the collector's time, not ours
    print(
        "| set | tensors | step() | per tensor | floor | × floor | new lr each step | zeroed "
        "| × floor | in backward (hooks) | per tensor |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        sizes = [(2, 2) if real else s for s in shapes(name)]
        params = [torch.nn.Parameter(torch.zeros(s)) for s in sizes]
        floor, a, lr = ordinary(params, torch.empty_like)
        zeroed_floor, z, _ = ordinary(params, torch.zeros_like)
        b = in_backward(params)
        n = len(params)
        print(
            f"| {name} | {n} | {a * 1e3:.3f} ms | {a / n * 1e6:.2f} µs | {floor * 1e3:.3f} ms "
            f"| {a / floor:.1f}× | {lr * 1e3:.3f} ms | {z * 1e3:.3f} ms | {z / zeroed_floor:.1f}× "
            f"| {b * 1e3:.3f} ms | {b / n * 1e6:.1f} µs |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
