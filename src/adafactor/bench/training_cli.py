"""``adafactor bench --training`` / ``python -m adafactor.bench --training``: whole training
steps (forward, backward, ``step()``, ``zero_grad()``) of AdamW (fused),
``torch.optim.Adafactor``, this Adafactor and this Adafactor with ``step_in_backward=True``,
each model × dtype × optimizer in a subprocess of its own, round-robin (``runner``'s way):
peak memory, time per step, and the targets of the step inside the backward pass
(``training_report``). Writes results.json, table.md and chart.png (peak training memory)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .chart import training_chart
from .child import child_main, spawn
from .machine import check_device, machine_info
from .runner import add_run_options, child_env
from .sets import DTYPES
from .training import CANDIDATES, DEFAULT_MODELS, MODELS, QUICK_MODELS, run_training_child
from .training_report import (
    CaseKey,
    aggregate,
    in_turn_table,
    markdown_table,
    models_table,
    summarize,
    targets,
    targets_table,
)


@dataclass(frozen=True)
class TrainingPlan:
    """What a run measures, every default resolved."""

    models: list[str]
    dtypes: list[str]
    candidates: list[str]
    repeats: int
    steps: int
    warmup: int
    threads: int | None
    device: str
    timeout: float
    breakdown: bool

    def cases(self) -> list[CaseKey]:
        return [(m, d, k) for m in self.models for d in self.dtypes for k in self.candidates]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adafactor bench --training",
        description="Benchmark whole training steps (forward, backward, step, zero_grad) of "
        "AdamW (fused), torch.optim.Adafactor, this Adafactor and this Adafactor with "
        "step_in_backward=True: peak memory (live tensor bytes; on CUDA "
        "max_memory_allocated), peak RSS, median step time. Each case runs in its own "
        "subprocess, round-robin. Models are built from configs (nothing is downloaded).",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        metavar="MODEL",
        help=f"{', '.join(MODELS)} (default: {' '.join(DEFAULT_MODELS)}; with --quick: "
        f"{' '.join(QUICK_MODELS)})",
    )
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, help="default: fp32 bf16")
    parser.add_argument(
        "--candidates",
        nargs="+",
        choices=list(CANDIDATES),
        metavar="NAME",
        help=f"default: all ({', '.join(CANDIDATES)})",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    add_run_options(parser)
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also record the live bytes at the peak by what torch's memory profiler takes "
        "them for (CPU; one more, slow step per case)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")
    parser.add_argument(
        "--out",
        default="bench-training",
        metavar="DIR",
        help="output directory (default: %(default)s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a CI-sized run: gpt2-tiny, fp32, 1 repeat, 2 timed steps after 1 (explicit "
        "options win)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def plan_from_args(args: argparse.Namespace) -> TrainingPlan:
    """The options with their defaults (``--quick``'s, where given) resolved."""
    quick = args.quick
    return TrainingPlan(
        models=args.models or list(QUICK_MODELS if quick else DEFAULT_MODELS),
        dtypes=args.dtypes or (["fp32"] if quick else list(DTYPES)),
        candidates=args.candidates or list(CANDIDATES),
        repeats=args.repeats or (1 if quick else 3),
        steps=args.steps or (2 if quick else 5),
        warmup=args.warmup or (1 if quick else 2),
        threads=args.threads,
        device=args.device,
        timeout=args.timeout,
        breakdown=args.breakdown,
    )


def run_cases(plan: TrainingPlan) -> dict[CaseKey, list[dict[str, Any]]]:
    """Every run of every case, round-robin (repeat 1 of every case, then repeat 2, ...), so
    that a change of machine load hits every case alike; a failed case is not run again.
    Memory is measured in the first run of a case."""
    runs: dict[CaseKey, list[dict[str, Any]]] = {case: [] for case in plan.cases()}
    env = child_env()
    for repeat in range(plan.repeats):
        for (model, dtype, key), case_runs in runs.items():
            if case_runs and case_runs[-1]["status"] != "ok":
                continue
            spec = {
                "model": model,
                "dtype": dtype,
                "candidate": key,
                "device": plan.device,
                "warmup": plan.warmup,
                "steps": plan.steps,
                "threads": plan.threads,
                "seed": 0,
                "measure_memory": not case_runs,
                "breakdown": plan.breakdown,
            }
            load = os.getloadavg()[0]
            result = {**spawn(spec, env, plan.timeout, ("--training",)), "load": load}
            case_runs.append(result)
            _progress(repeat, plan.repeats, (model, dtype, key), result)
    return runs


def _progress(repeat: int, repeats: int, case: CaseKey, result: dict[str, Any]) -> None:
    model, dtype, key = case
    if result["status"] == "ok":
        ms = statistics.median(result["step_ms"])
        peak, in_backward = result["peak_bytes"], result["in_backward_ms"]
        summary = f"{ms:10.1f} ms" + (f"  peak {peak / 2**20:9.1f} MiB" if peak else "")
        if in_backward:
            summary += f"  in backward {statistics.median(in_backward):10.1f} ms"
    else:
        summary = f"{result['status']}: {result['error']}"
    label = CANDIDATES[key]
    print(f"[{repeat + 1}/{repeats}] {model:>10} {dtype} {label:<28} {summary}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the training benchmark; print the tables; write results.json, table.md and
    chart.png under ``--out``."""
    args = build_parser().parse_args(argv)
    if args.child:
        return child_main(args.child, run_training_child)
    plan = plan_from_args(args)
    try:
        check_device(plan.device)
    except ValueError as error:
        print(f"adafactor bench --training: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info(plan.device)
    where = f"CUDA ({machine['gpu']})" if plan.device == "cuda" else "CPU"
    load_start = os.getloadavg()
    print(f"{where}; load {load_start[0]:.2f}; {len(plan.cases())} cases × {plan.repeats} repeats")
    rows = summarize([aggregate(case, runs) for case, runs in run_cases(plan).items()])
    judged = targets(rows)
    load_end = os.getloadavg()
    command = "python -m adafactor.bench --training " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    report = {
        "command": command.strip(),
        "machine": machine,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "config": {k: v for k, v in asdict(plan).items() if k != "timeout"},
        "results": rows,
        "targets": judged,
    }
    tables = "\n\n".join(
        (models_table(rows), markdown_table(rows), in_turn_table(rows), targets_table(judged))
    )
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "table.md").write_text(tables + "\n")
    training_chart(rows, out / "chart.png", where)
    print(f"\nload average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end\n")
    print(tables)
    print(f"\nWrote {out / 'results.json'}, {out / 'table.md'}, {out / 'chart.png'}")
    return 0
