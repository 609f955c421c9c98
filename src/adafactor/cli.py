"""The ``adafactor`` command line: ``adafactor demo``, ``adafactor reproduce``, ..."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from .experiments.demo import run_demo

    run_demo(steps=args.steps, seed=args.seed)
    return 0


def _memory(args: argparse.Namespace) -> int:
    from .memory import memory_table
    from .model_shapes import MODELS

    print(memory_table(MODELS[args.model]().values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adafactor",
        description="Adafactor (Shazeer & Stern, 2018) for PyTorch: demos, reproduction, tools.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="train a small character language model on the shipped KJV text with Adafactor "
        "and with Adam; print losses and optimizer memory (about a minute)",
    )
    demo.add_argument("--steps", type=int, default=300, help="training steps per optimizer")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    from .model_shapes import MODELS

    memory = commands.add_parser(
        "memory", help="optimizer-state memory of Adafactor vs Adam for a known model's shapes"
    )
    memory.add_argument("--model", choices=sorted(MODELS), default="t5-small")
    memory.set_defaults(func=_memory)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``adafactor`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
