"""Checks that need a CUDA GPU, run by hand where one is lent (CI has none).

    PYTHONPATH=src python scripts/gpu_check.py [--out DIR]

1. The compiled step (``fused=True``, Triton kernels) matches the eager step on CUDA, for
   factored and unfactored tensors, with and without momentum, through a NaN gradient.
2. A compiled step makes no host-device sync (``torch.cuda.set_sync_debug_mode("error")``).
3. A learning-rate schedule recompiles nothing.
4. Median step time, side by side and interleaved, of this Adafactor (eager and fused),
   ``torch.optim.Adafactor(foreach=True)`` and ``torch.optim.AdamW(fused=True)`` on the
   T5-small-like and GPT-2-small-like parameter sets, fp32 and bf16 (CUDA events); then the
   same with each whole step captured in a CUDA graph and replayed.

Prints a table and writes ``gpu_check.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from adafactor import Adafactor
from adafactor.model_shapes import MODELS


def check_fused_matches_eager() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(320, 256), (48,), (4, 128, 160), (1000, 3)]
    for options in ({}, {"beta1": 0.9}, {"beta1": 0.9, "momentum_of": "gradient"}):
        params = [torch.randn(s, device="cuda", generator=gen) for s in shapes]
        grads = [[torch.randn(s, device="cuda", generator=gen) for s in shapes] for _ in range(4)]
        grads[2][0][3, 5] = float("nan")
        runs = []
        for fused in (False, True):
            ps = [torch.nn.Parameter(p.clone()) for p in params]
            opt = Adafactor(ps, fused=fused, weight_decay=0.01, **options)
            for step_grads in grads:
                for p, g in zip(ps, step_grads):
                    p.grad = g.clone()
                opt.step()
            runs.append((ps, opt))
        (eager, _), (compiled, opt) = runs
        for p, q in zip(eager, compiled):
            torch.testing.assert_close(q.detach(), p.detach(), rtol=1e-5, atol=1e-7)
        assert int(opt.state[compiled[0]]["nonfinite_skips"]) == 1, options
    print("fused matches eager on CUDA: ok")


def check_no_sync_and_no_recompile() -> None:
    ps = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in [(512, 256), (256,)]]
    opt = Adafactor(ps, fused=True, beta1=0.9, diagnostics=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (t + 1))
    graphs = []
    for step in range(5):
        for p in ps:
            p.grad = torch.randn_like(p)
        torch.cuda.synchronize()
        if step >= 2:
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        schedule.step()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1:] == graphs[:1] * 4, graphs
    print(f"no host sync in a compiled CUDA step, no recompile under a schedule: ok {graphs}")


CANDIDATES = {
    "adafactor (eager)": lambda ps: Adafactor(ps, fused=False),
    "adafactor (fused)": lambda ps: Adafactor(ps, fused=True),
    "torch Adafactor (foreach)": lambda ps: torch.optim.Adafactor(ps, foreach=True),
    "AdamW (fused)": lambda ps: torch.optim.AdamW(ps, fused=True),
}


def time_steps(set_name: str, dtype: torch.dtype, rounds: int, steps: int) -> dict[str, float]:
    shapes = [t.shape for t in MODELS[set_name]().values()]
    cases = {}
    for name, make in CANDIDATES.items():
        ps = [torch.nn.Parameter(torch.randn(s, device="cuda", dtype=dtype)) for s in shapes]
        for p in ps:
            p.grad = torch.randn_like(p)
        opt = make(ps)
        for _ in range(3):
            opt.step()
        cases[name] = opt
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):  # interleaved: each round steps every candidate
        for name, opt in cases.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(steps):
                opt.step()
            end.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(end) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def time_graphed(set_name: str, dtype: torch.dtype, replays: int) -> dict[str, float | str]:
    """Median step time when the whole step is captured once in a CUDA graph and replayed:
    what remains once the host's per-tensor overhead is gone (needs a step with no host sync;
    options are baked into the graph at capture)."""
    shapes = [t.shape for t in MODELS[set_name]().values()]
    makers = {
        "adafactor (eager), CUDA graph": lambda ps: Adafactor(ps, fused=False),
        "adafactor (fused), CUDA graph": lambda ps: Adafactor(ps, fused=True),
        "torch Adafactor (foreach), CUDA graph": lambda ps: torch.optim.Adafactor(ps, foreach=True),
        "AdamW (fused, capturable), CUDA graph": lambda ps: torch.optim.AdamW(
            ps, fused=True, capturable=True
        ),
    }
    medians: dict[str, float | str] = {}
    for name, make in makers.items():
        ps = [torch.nn.Parameter(torch.randn(s, device="cuda", dtype=dtype)) for s in shapes]
        for p in ps:
            p.grad = torch.randn_like(p)
        opt = make(ps)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    opt.step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                opt.step()
        except Exception as error:  # a peer that cannot be captured is reported, not fatal
            medians[name] = f"not capturable: {type(error).__name__}"
            continue
        times = []
        for _ in range(replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        medians[name] = statistics.median(times)
    return medians


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    print(torch.__version__, torch.cuda.get_device_name())
    check_fused_matches_eager()
    check_no_sync_and_no_recompile()
    results = []
    for set_name in MODELS:
        for dtype in (torch.float32, torch.bfloat16):
            medians = time_steps(set_name, dtype, args.rounds, args.steps)
            adamw = medians["AdamW (fused)"]
            for name, ms in medians.items():
                row = {"set": set_name, "dtype": str(dtype), "candidate": name, "ms": ms}
                row["x_adamw_fused"] = ms / adamw
                results.append(row)
                print(f"{set_name:10} {dtype!s:15} {name:26} {ms:8.3f} ms  {ms / adamw:5.2f}×")
    for set_name in MODELS:
        for dtype in (torch.float32, torch.bfloat16):
            for name, value in time_graphed(set_name, dtype, 20).items():
                results.append(
                    {"set": set_name, "dtype": str(dtype), "candidate": name, "ms": value}
                )
                shown = f"{value:8.3f} ms" if isinstance(value, float) else value
                print(f"{set_name:10} {dtype!s:15} {name:38} {shown}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name()}
    (out / "gpu_check.json").write_text(json.dumps({"info": info, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
