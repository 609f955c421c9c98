#!/usr/bin/env python3
"""What only a GPU shows of the Triton group kernels, for ``scripts/gpu_check.sh``: per kernel
and parameter set, the GPU time of each launch and the bandwidth it reaches (bytes the launch
must move over its time, beside a device-to-device copy's), the registers and spills of every
variant loaded, the programs per launch and longest chains the plan asks for, and the host's
time per ``step()``.

Usage::

    python scripts/gpu_probe.py --out DIR            # on a CUDA GPU
    python scripts/gpu_probe.py --out DIR --dry-run  # on CPU, interpreted, small: proves it runs

Everything goes to ``DIR/probe.json`` and a readable ``DIR/probe.txt``; a section that fails
says so and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("--out", required=True, type=Path)
PARSER.add_argument("--dry-run", action="store_true", help="interpreted, on CPU, tiny sets")
PARSER.add_argument("--steps", type=int, default=5, help="timed steps per set")
ARGS = PARSER.parse_args()
if ARGS.dry_run:
    os.environ["TRITON_INTERPRET"] = "1"
else:
    os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402

import adafactor.kernels  # noqa: E402
from adafactor import Adafactor  # noqa: E402
from adafactor.kernels import triton as kernels  # noqa: E402
from adafactor.kernels.plan import Field  # noqa: E402
from adafactor.model_shapes import gpt2_small_like, t5_small_like  # noqa: E402

DEVICE = torch.device("cpu" if ARGS.dry_run else "cuda")
SETS: dict[str, list[tuple[int, ...]]] = {
    "t5-small": [tuple(p.shape) for p in t5_small_like().values()],
    "gpt2-small": [tuple(p.shape) for p in gpt2_small_like().values()],
    "4096x4096": [(4096, 4096)],
    "128256x4096": [(128256, 4096)],
}
if ARGS.dry_run:
    SETS = {"small": [(96, 64), (64,), (3, 40, 36)], "odd": [(37, 29), (45,)]}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
REPORT: dict[str, Any] = {"device": str(DEVICE), "sections": {}}
LINES: list[str] = []


def say(line: str) -> None:
    print(line, flush=True)
    LINES.append(line)


def section(name: str):
    """Run the decorated section now, recording its result or why it could not run."""

    def run(fn):
        start = time.perf_counter()
        try:
            REPORT["sections"][name] = {"ok": True, "result": fn()}
        except Exception as error:  # a probe that fails must not stop the others
            REPORT["sections"][name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            say(f"!! {name} could not run: {type(error).__name__}: {error}")
            traceback.print_exc()
        say(f"-- {name}: {time.perf_counter() - start:.1f} s")
        return fn

    return run


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def optimizer(shapes, dtype, **options):
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(s, device=DEVICE, generator=gen).to(dtype)) for s in shapes
    ]
    for p in params:
        p.grad = torch.randn(p.shape, device=DEVICE, generator=gen).to(dtype)
    if ARGS.dry_run:  # the interpreted kernels as the CPU's (as tests/helpers.py)
        import types

        names = ("GEOMETRY", "make_buffers", "numbers", "sums", "update_sums", "apply", "sums_of")
        backend = types.SimpleNamespace(
            DEVICE_TYPE="cpu", **{n: getattr(kernels, n) for n in names}
        )
        adafactor.kernels._backend = lambda device_type: backend
        options["fused"] = None
    else:
        options["fused"] = True
    return params, Adafactor(params, **options)


ELEMENT = {0: 4, 1: 2, 2: 2, 3: 8}


def traffic(plan) -> dict[str, float]:
    """Bytes each tile kernel must move (each element read or written once) for ``plan``,
    without momentum: sums_tiles reads X (and G, factored), update_sums_tiles G (and V̂,
    full), apply_tiles G, X and writes X (and V̂, full)."""
    d = plan.host_descriptors
    out: dict[str, float] = defaultdict(float)
    for i in range(d.shape[0]):
        numel = int(d[i, Field.A] * d[i, Field.N] * d[i, Field.B] * d[i, Field.M] * d[i, Field.C])
        x, g = ELEMENT[int(d[i, Field.PARAM_DTYPE])], ELEMENT[int(d[i, Field.GRAD_DTYPE])]
        factored = bool(d[i, Field.FACTORED])
        out["sums_tiles"] += numel * (x + (g if factored else 0))
        out["update_sums_tiles"] += numel * (g + (0 if factored else 4))
        out["apply_tiles"] += numel * (g + 2 * x + (0 if factored else 8))
    return dict(out)


@section("versions")
def versions():
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}
    if DEVICE.type == "cuda":
        props = torch.cuda.get_device_properties(DEVICE)
        info.update(
            name=props.name, sms=props.multi_processor_count, sm=f"{props.major}{props.minor}"
        )
    say(f"versions: {info}")
    return info


@section("copy_bandwidth")
def copy_bandwidth():
    n = (1 << 28) if DEVICE.type == "cuda" else (1 << 20)
    src, dst = torch.empty(n, device=DEVICE), torch.empty(n, device=DEVICE)
    times = []
    for _ in range(7):
        sync()
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        times.append(time.perf_counter() - start)
    rate = 2 * n * 4 / statistics.median(times) / 1e9
    say(f"device-to-device copy: {rate:.0f} GB/s (read + write)")
    return rate


@section("kernels")
def per_kernel():
    """Per set and dtype: each launch's GPU time (CUDA events around it), bytes over time for
    the tile kernels, programs per launch and longest chains; the host's time per step."""
    results = {}
    launch = kernels._launch
    for set_name, shapes in SETS.items():
        for dtype_name, dtype in DTYPES.items():
            params, opt = optimizer(shapes, dtype)
            opt.step()  # state, plan, compile
            sync()
            (cache,) = opt._plans.values()
            plan = cache.plan
            events: dict[str, list[float]] = defaultdict(list)
            pending: list[tuple[str, Any, Any]] = []

            def timed(kernel, grid, *args, events=events, pending=pending, **constants):
                if DEVICE.type == "cuda":
                    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
                    start.record()
                    launch(kernel, grid, *args, **constants)
                    end.record()
                    pending.append((kernel.__name__, start, end))
                else:
                    t = time.perf_counter()
                    launch(kernel, grid, *args, **constants)
                    events[kernel.__name__].append((time.perf_counter() - t) * 1e3)

            kernels._launch = timed
            host = []
            try:
                for _ in range(ARGS.steps):
                    sync()
                    t = time.perf_counter()
                    opt.step()
                    host.append((time.perf_counter() - t) * 1e3)
                sync()
            finally:
                kernels._launch = launch
            for name, start, end in pending:
                events[name].append(start.elapsed_time(end))
            per_step = {k: sum(v) / ARGS.steps for k, v in events.items()}  # ms, all launches
            moved = traffic(plan)
            rates = {k: moved[k] / (per_step[k] * 1e-3) / 1e9 for k in moved if per_step.get(k)}
            entry = {
                "tensors": len(shapes),
                "numel": plan.numel,
                "ms_per_step": per_step,
                "gpu_ms": sum(per_step.values()),
                "host_ms": statistics.median(host),
                "GB_per_s": rates,
                "programs": kernels.programs(plan),
                "longest_chains": kernels.longest_chains(plan),
                "access": [int(a) for a in plan.tensors_access],
            }
            results[f"{set_name}/{dtype_name}"] = entry
            say(
                f"{set_name} {dtype_name}: {len(shapes)} tensors, {plan.numel / 1e6:.1f} M: "
                f"kernels {entry['gpu_ms']:.3f} ms, host {entry['host_ms']:.3f} ms per step"
            )
            for name, ms in per_step.items():
                rate = f", {rates[name]:.0f} GB/s" if name in rates else ""
                progs = entry["programs"][name]
                chain = entry["longest_chains"][name]
                say(f"    {name:18s} {ms:8.3f} ms{rate}  programs {progs}  longest chain {chain}")
            del params, opt
            sync()
    return results


@section("registers")
def registers():
    """Registers, spills and warps of every variant of every kernel Triton has loaded."""
    found = []
    for kernel in kernels.KERNELS:
        for caches in getattr(kernel, "device_caches", {}).values():
            for compiled in caches[0].values():
                compiled._init_handles()
                found.append(
                    {
                        "kernel": kernel.__name__,
                        "n_regs": getattr(compiled, "n_regs", None),
                        "n_spills": getattr(compiled, "n_spills", None),
                        "num_warps": compiled.metadata.num_warps,
                        "shared": compiled.metadata.shared,
                    }
                )
    for f in found:
        say(
            f"    {f['kernel']:18s} regs {f['n_regs']}  spills {f['n_spills']}  "
            f"warps {f['num_warps']}  shared {f['shared']} B"
        )
    tile_names = {k.__name__ for k in kernels.TILE_KERNELS}
    worst = max((f["n_regs"] or 0 for f in found if f["kernel"] in tile_names), default=0)
    spills = sum(f["n_spills"] or 0 for f in found)
    say(f"tile kernels: at most {worst} registers (predicted ≤ 128); spills in all: {spills} (0)")
    return found


@section("subnormal_ratio")
def subnormal_ratio():
    """An unused embedding row beside rows of |G| ~ 1e5: R_i/R̄ is subnormal. Flushed to 0 the
    tensor would be skipped as non-finite; the eager step updates it."""
    results = {}
    for fused in (False, True):
        gen = torch.Generator(device=DEVICE).manual_seed(1)
        p = torch.nn.Parameter(torch.randn(256, 64, device=DEVICE, generator=gen))
        g = torch.randn(256, 64, device=DEVICE, generator=gen) * 1e5
        g[17] = 0.0
        opt = Adafactor([p], fused=fused if DEVICE.type == "cuda" else None)
        p.grad = g
        opt.step()
        results["fused" if fused else "eager"] = int(opt.state[p]["nonfinite_skips"])
    say(f"unused row beside |G| ~ 1e5: skips eager {results['eager']}, fused {results['fused']}")
    return results


REPORT["ok"] = all(s["ok"] for s in REPORT["sections"].values())
ARGS.out.mkdir(parents=True, exist_ok=True)
(ARGS.out / "probe.json").write_text(json.dumps(REPORT, indent=1, default=str))
(ARGS.out / "probe.txt").write_text("\n".join(LINES) + "\n")
sys.exit(0 if REPORT["ok"] else 1)
