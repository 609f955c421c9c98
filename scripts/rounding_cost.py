#!/usr/bin/env python3
"""What each way of writing a 16-bit parameter costs: bfloat16 parameter sets stepped by the
fused (C) step with ``rounding="nearest"``, ``"stochastic"`` and ``"compensated"`` in turn,
in one process, one step each per round, so that the machine's load shifts all three alike;
the median over rounds of each one's time divided by nearest's in the same round (the figures
of "16-bit parameters: what each rounding costs" in docs/benchmarks.md).

Usage::

    python scripts/rounding_cost.py                      # t5-small gpt2-small 4096x4096, 15 rounds
    python scripts/rounding_cost.py 4096x4096 --rounds 31
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from adafactor import Adafactor
from adafactor.bench.sets import set_shapes

ROUNDINGS = ("nearest", "stochastic", "compensated")


def measure(name: str, rounds: int) -> dict[str, list[float]]:
    """Per rounding, its step time divided by nearest's, one value per round."""
    gen = torch.Generator().manual_seed(0)
    shapes = set_shapes(name)
    grads = [torch.randn(s, generator=gen).bfloat16() for s in shapes]
    steppers = {}
    for rounding in ROUNDINGS:
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).bfloat16()) for s in shapes]
        opt = Adafactor(params, fused=True, rounding=rounding)
        steppers[rounding] = (params, opt)

    def step(rounding: str) -> float:
        params, opt = steppers[rounding]
        for p, g in zip(params, grads):
            p.grad = g
        start = time.perf_counter()
        opt.step()
        return time.perf_counter() - start

    for rounding in ROUNDINGS:  # build, first steps
        step(rounding), step(rounding)
    ratios: dict[str, list[float]] = {r: [] for r in ROUNDINGS}
    for i in range(rounds):
        order = ROUNDINGS[i % 3 :] + ROUNDINGS[: i % 3]  # each goes first as often
        times = {r: step(r) for r in order}
        for r in ROUNDINGS:
            ratios[r].append(times[r] / times["nearest"])
    ratios["nearest_ms"] = [1e3 * step("nearest") for _ in range(3)]
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="*", default=["t5-small", "gpt2-small", "4096x4096"])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print("| set | nearest ms | stochastic / nearest | compensated / nearest |")
    print("|---|---:|---:|---:|")
    for name in args.sets:
        r = measure(name, args.rounds)
        print(
            f"| {name} | {statistics.median(r['nearest_ms']):.1f} "
            f"| {statistics.median(r['stochastic']):.2f}× "
            f"| {statistics.median(r['compensated']):.2f}× |"
        )


if __name__ == "__main__":
    main()
