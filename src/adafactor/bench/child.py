"""The subprocess that measures one case: one candidate on one parameter set in one dtype, on
one device; and the parent's side of it (``spawn``).

What a child measures, after building the parameters and gradients (seeded random values, on
the device):

* ``first_step_s``: the first ``step()`` until its work is done (allocates the state; for
  ``fused`` it compiles the kernels: the compile cost is ``first_step_s`` minus the median
  step);
* ``step_ms``: each timed ``step()`` after the warm-up steps (``timing.call_ms``: CPU
  operators are synchronous; on CUDA, events around the step and one synchronize after it).
  A graphed candidate's warm-up runs on a side stream, then one step is captured in a CUDA
  graph and the timed steps are its replays (``graph``);
* ``state_bytes``: bytes of the tensors in ``optimizer.state``;
* ``peak_transient_bytes``: in one extra, untimed step, the most memory the step holds
  allocated beyond what existed when it started (``transient``); for a graphed candidate, the
  capture's peak. ``peak_rss_delta_bytes`` is the kernel's cross-check (CPU only).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch

from ..memory import optimizer_state_bytes
from . import graph
from .candidates import CANDIDATES, Candidate, make_optimizer
from .sets import TORCH_DTYPES, set_shapes
from .timing import call_ms, synchronize, wall_s
from .transient import cuda_peak, profiled_peak, rss_peak_delta

CHILD_MARKER = "ADAFACTOR_BENCH_RESULT "


class Warm(NamedTuple):
    step: Callable[[], object]  # what the timed steps call
    first_step_s: float
    capture_peak_bytes: int | None  # a graphed step's transient memory, taken at capture


def build_params(set_name: str, dtype: str, device: str, seed: int) -> list[torch.nn.Parameter]:
    """The set's parameters, N(0, 0.02), with gradients, N(0, 1e-3), on ``device``.

    Drawn in float32 on the CPU from one seeded generator, so every device and dtype starts
    from the same values."""
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in set_shapes(set_name):
        p = torch.empty(shape, dtype=torch.float32).normal_(0.0, 0.02, generator=generator)
        g = torch.empty(shape, dtype=torch.float32).normal_(0.0, 1e-3, generator=generator)
        param = torch.nn.Parameter(p.to(device, TORCH_DTYPES[dtype]))
        param.grad = g.to(device, TORCH_DTYPES[dtype])
        params.append(param)
    return params


def warm_up(
    optimizer: torch.optim.Optimizer, candidate: Candidate, warmup: int, device: str
) -> Warm:
    """Time the first step, run the rest of the ``warmup`` steps (first included) and, for a
    graphed candidate, capture the step."""
    count = max(warmup, graph.WARMUP_STEPS) if candidate.graphed else warmup
    with graph.side_stream() if candidate.graphed else nullcontext():
        first_step_s = wall_s(optimizer.step, device)
        for _ in range(max(count - 1, 0)):
            optimizer.step()
    if not candidate.graphed:
        return Warm(optimizer.step, first_step_s, None)
    replay, peak = graph.capture(optimizer.step)
    return Warm(replay, first_step_s, peak)


def transient(warm: Warm, device: str) -> tuple[int, int | None]:
    """Peak transient bytes of one more step, and the RSS cross-check (CPU only)."""
    if warm.capture_peak_bytes is not None:
        return warm.capture_peak_bytes, None
    if device == "cuda":
        return cuda_peak(warm.step), None
    rss_delta = rss_peak_delta(warm.step)
    return profiled_peak(warm.step), rss_delta


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the set, step the candidate, measure; returns the measurements."""
    device = spec.get("device", "cpu")
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    params = build_params(spec["set"], spec["dtype"], device, spec.get("seed", 0))
    optimizer = make_optimizer(spec["candidate"], params)
    warm = warm_up(optimizer, CANDIDATES[spec["candidate"]], spec["warmup"], device)
    synchronize(device)
    step_ms = [call_ms(warm.step, device) for _ in range(spec["steps"])]
    peak = rss_delta = None
    if spec.get("measure_memory", True):
        peak, rss_delta = transient(warm, device)
    return {
        "first_step_s": warm.first_step_s,
        "step_ms": step_ms,
        "state_bytes": optimizer_state_bytes(optimizer),
        "peak_transient_bytes": peak,
        "peak_rss_delta_bytes": rss_delta,
        "params_finite": all(bool(torch.isfinite(p).all()) for p in params),
        "threads": torch.get_num_threads(),
    }


def child_main(spec_json: str, run: Callable[[dict[str, Any]], dict[str, Any]] = run_child) -> int:
    """Run one case (``run(spec)``) and print its result as one marked JSON line, whatever
    happens."""
    spec = json.loads(spec_json)
    try:
        result = {"status": "ok", **run(spec)}
    except ImportError as error:
        result = {"status": "not installed", "error": f"{type(error).__name__}: {error}"}
    except Exception as error:
        message = str(error).strip().splitlines()
        result = {
            "status": "error",
            "error": f"{type(error).__name__}: {message[0] if message else ''}",
        }
    print(CHILD_MARKER + json.dumps(result), flush=True)
    return 0


def spawn(
    spec: dict[str, Any], env: dict[str, str], timeout: float, bench: Sequence[str] = ()
) -> dict[str, Any]:
    """Run one case in a fresh ``python -m adafactor.bench [bench] --child`` and return its
    result (``bench``: the flag of another benchmark than the step's, e.g. ``--training``)."""
    command = [sys.executable, "-m", "adafactor.bench", *bench, "--child", json.dumps(spec)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(CHILD_MARKER):
            return json.loads(line[len(CHILD_MARKER) :])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "error", "error": f"exit code {done.returncode}: {tail}"}
