"""Scheduling the cases: every candidate × parameter set × dtype runs in a subprocess of its
own, so that its memory is its own and one candidate's allocations cannot warm the allocator
for the next. The cases run round-robin (repetition 1 of every case, then repetition 2, ...),
so that a change of machine load hits every candidate alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import candidates
from .child import spawn

CaseKey = tuple[str, str, str]  # set, dtype, candidate


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of how each case runs, the same for every benchmark: subprocess runs,
    timed and untimed steps, torch threads."""
    parser.add_argument("--repeats", type=int, help="subprocess runs per case (default 3)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default 5)")
    parser.add_argument(
        "--warmup", type=int, help="untimed steps per run, first included (default 2)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads in each child (default: torch's own)"
    )


@dataclass(frozen=True)
class Plan:
    """What a run measures, every default resolved."""

    sets: list[str]
    dtypes: list[str]
    candidates: list[str]
    repeats: int
    steps: int
    warmup: int
    threads: int | None
    device: str
    timeout: float

    def cases(self) -> list[CaseKey]:
        return [(s, d, k) for s in self.sets for d in self.dtypes for k in self.candidates]

    def config(self) -> dict[str, Any]:
        """The plan as results.json records it."""
        return {key: value for key, value in asdict(self).items() if key != "timeout"}


def child_env() -> dict[str, str]:
    """The children's environment: this one, with this package's source first on the path."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cases(plan: Plan) -> dict[CaseKey, list[dict[str, Any]]]:
    """Every run of every case, round-robin; a case that failed or is not installed is not
    run again."""
    runs: dict[CaseKey, list[dict[str, Any]]] = {case: [] for case in plan.cases()}
    cache = tempfile.mkdtemp(prefix="adafactor-bench-inductor-")
    env = child_env()
    try:
        for repeat in range(plan.repeats):
            for case, case_runs in runs.items():
                if case_runs and case_runs[-1]["status"] != "ok":
                    continue  # an error or a missing package will not go away
                if not candidates.installed(candidates.CANDIDATES[case[2]]):
                    case_runs.append({"status": "not installed", "error": "not installed"})
                    continue
                # Each case compiles into caches of its own (Inductor's, Triton's, our C
                # kernels'): cold in repeat 1, warm after.
                own = os.path.join(cache, "-".join(case))
                case_env = {
                    **env,
                    "TORCHINDUCTOR_CACHE_DIR": os.path.join(own, "inductor"),
                    "TRITON_CACHE_DIR": os.path.join(own, "triton"),
                    "ADAFACTOR_CACHE_DIR": os.path.join(own, "adafactor"),
                }
                case_runs.append(run_once(plan, case, case_runs, case_env))
                print_progress(repeat, plan.repeats, case, case_runs[-1])
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return runs


def run_once(
    plan: Plan, case: CaseKey, earlier: list[dict[str, Any]], env: dict[str, str]
) -> dict[str, Any]:
    """One run of a case in its own subprocess; memory is measured until a run succeeds."""
    set_name, dtype, key = case
    spec = {
        "set": set_name,
        "dtype": dtype,
        "candidate": key,
        "device": plan.device,
        "warmup": plan.warmup,
        "steps": plan.steps,
        "seed": 0,
        "threads": plan.threads,
        "measure_memory": not any(r["status"] == "ok" for r in earlier),
    }
    load = os.getloadavg()[0]
    return {**spawn(spec, env, plan.timeout), "load": load}


def print_progress(repeat: int, repeats: int, case: CaseKey, result: dict[str, Any]) -> None:
    set_name, dtype, key = case
    summary = (
        f"{statistics.median(result['step_ms']):9.1f} ms"
        if result["status"] == "ok"
        else f"{result['status']}: {result['error']}"
    )
    label = candidates.CANDIDATES[key].label
    print(f"[{repeat + 1}/{repeats}] {set_name:>10} {dtype} {label:<32} {summary}", flush=True)
