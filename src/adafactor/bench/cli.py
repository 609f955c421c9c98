"""``adafactor bench`` / ``python -m adafactor.bench``: the options, their defaults, and the
run from the copy bandwidth to the files (results.json, table.md, chart.png)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .candidates import CANDIDATES, DEVICES, candidates_for
from .chart import chart
from .child import child_main
from .machine import check_device, machine_info
from .report import floors_table, markdown_table
from .runner import Plan, add_run_options, run_cases
from .sets import DEFAULT_SETS, DTYPES, NAMED_SETS, QUICK_SETS, set_info
from .summary import rows_from_runs
from .timing import copy_bandwidth
from .training_cli import main as training_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adafactor bench",
        description="Benchmark this Adafactor against torch, transformers, timm, "
        "pytorch_optimizer (and, on CUDA, adafactor8bit) Adafactors and AdamW: step time, "
        "state, peak transient memory, bandwidth floor, on the CPU or a CUDA GPU. Each case "
        "runs in its own subprocess, round-robin. With --training: whole training steps "
        "instead (adafactor bench --training --help).",
    )
    parser.add_argument(
        "--sets",
        nargs="+",
        metavar="SET",
        help=f"parameter sets: {', '.join(NAMED_SETS)} or NxM "
        f"(default: {' '.join(DEFAULT_SETS)}; with --quick: {' '.join(QUICK_SETS)})",
    )
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, help="default: fp32 bf16")
    parser.add_argument(
        "--candidates",
        nargs="+",
        choices=list(CANDIDATES),
        metavar="NAME",
        help=f"default: all that run on the device ({', '.join(CANDIDATES)}; "
        f"{', '.join(k for k in CANDIDATES if 'cpu' not in CANDIDATES[k].devices)}: CUDA only)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where parameters, gradients and the step live (default: %(default)s)",
    )
    add_run_options(parser)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    parser.add_argument(
        "--out", default="bench", metavar="DIR", help="output directory (default: %(default)s)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a CI-sized run: a 256x128 matrix, fp32, 1 repeat, 3 steps (explicit options win)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The options with their defaults (``--quick``'s, where given) resolved.

    Raises:
        ValueError: a candidate that does not run on ``--device``.
    """
    quick = args.quick
    keys = args.candidates or candidates_for(args.device)
    for key in keys:
        if args.device not in CANDIDATES[key].devices:
            raise ValueError(
                f"{key} runs only with --device {' or '.join(CANDIDATES[key].devices)}"
            )
    return Plan(
        sets=args.sets or list(QUICK_SETS if quick else DEFAULT_SETS),
        dtypes=args.dtypes or (["fp32"] if quick else list(DTYPES)),
        candidates=keys,
        repeats=args.repeats or (1 if quick else 3),
        steps=args.steps or (3 if quick else 5),
        warmup=args.warmup or (1 if quick else 2),
        threads=args.threads,
        device=args.device,
        timeout=args.timeout,
    )


def write_outputs(out: Path, report: dict[str, Any], where: str) -> tuple[str, str]:
    """Write results.json, table.md and chart.png under ``out``; return the two tables."""
    rows, sets = report["results"], report["sets"]
    floors = floors_table(sets, report["config"]["dtypes"], report["copy_bandwidth_bytes_per_s"])
    table = markdown_table(rows)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "table.md").write_text(floors + "\n\n" + table + "\n")
    chart(rows, out / "chart.png", where)
    return floors, table


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; write results.json, table.md and chart.png under
    ``--out``. With ``--training`` anywhere in ``argv``, the training benchmark instead
    (``training_cli``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--training" in argv:
        argv.remove("--training")
        return training_main(argv)
    args = build_parser().parse_args(argv)
    if args.child:
        return child_main(args.child)
    try:
        plan = plan_from_args(args)
        sets = {name: set_info(name) for name in plan.sets}
        check_device(plan.device)
    except ValueError as error:
        print(f"adafactor bench: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if plan.threads:  # the bandwidth is measured with the children's thread count
        torch.set_num_threads(plan.threads)
    machine = machine_info(plan.device)
    where = f"CUDA ({machine['gpu']})" if plan.device == "cuda" else "CPU"
    load_start = os.getloadavg()
    bandwidth = copy_bandwidth(plan.device)
    print(
        f"{where} copy bandwidth {bandwidth / 1e9:.1f} GB/s; load {load_start[0]:.2f}; "
        f"{len(plan.cases())} cases × {plan.repeats} repeats",
        flush=True,
    )
    rows = rows_from_runs(run_cases(plan), sets, bandwidth)
    load_end = os.getloadavg()
    command = "python -m adafactor.bench " + " ".join(argv)
    report = {
        "command": command.strip(),
        "machine": machine,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "config": plan.config(),
        "sets": sets,
        "results": rows,
    }
    floors, table = write_outputs(out, report, where)
    print(
        f"\n{where} copy bandwidth {bandwidth / 1e9:.1f} GB/s; load average "
        f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end"
    )
    print(floors + "\n\n" + table)
    print(f"\nWrote {out / 'results.json'}, {out / 'table.md'}, {out / 'chart.png'}")
    return 0
