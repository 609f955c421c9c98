"""The ``adafactor`` command line: ``adafactor demo``, ``adafactor reproduce``, ..."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from .experiments.demo import run_demo

    run_demo(steps=args.steps, seed=args.seed)
    return 0


def _precision(args: argparse.Namespace) -> int:
    from .experiments.precision import (
        REGIMES,
        SCALES,
        format_report,
        run_precision,
        write_precision,
    )

    unknown = [r for r in args.regime or () if r not in REGIMES]
    if unknown:
        print(
            f"adafactor precision: unknown regime(s) {', '.join(unknown)}; "
            f"known: {', '.join(REGIMES)}",
            file=sys.stderr,
        )
        return 2
    out = _output_directory(args.out)
    if isinstance(out, str):
        print(f"adafactor precision: {out}", file=sys.stderr)
        return 2
    seeds = range(args.seed, args.seed + args.seeds)
    results = run_precision(args.regime or tuple(REGIMES), seeds, SCALES[args.scale], args.jobs)
    print()
    print(format_report(results), end="")
    print("Wrote " + ", ".join(str(path) for path in write_precision(results, out)))
    return 1 if results.failures else 0


def _output_directory(text: str) -> Path | str:
    """The output directory, created if need be, or why it cannot be used."""
    out = Path(text)
    if out.exists() and not out.is_dir():
        return f"--out {text!r} is a file, not a directory"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot create the output directory {text!r}: {error.strerror or error}"
    if not os.access(out, os.W_OK | os.X_OK):
        return f"the output directory {text!r} is not writable"
    return out


def _reproduce(args: argparse.Namespace) -> int:
    try:
        from .experiments.claims import judge_claims
        from .experiments.configs import SCALES
        from .experiments.reproduce import reproduce, select_runs
    except ModuleNotFoundError as error:
        print(
            f"adafactor reproduce needs {error.name!r}, one of the 'experiments' extra's "
            "packages: pip install 'adafactor[experiments]'",
            file=sys.stderr,
        )
        return 1

    try:
        runs = select_runs(args.full, args.runs, args.search, args.regime or ())
    except ValueError as error:
        print(f"adafactor reproduce: {error}", file=sys.stderr)
        return 2
    out = _output_directory(args.out)
    if isinstance(out, str):
        print(f"adafactor reproduce: {out}", file=sys.stderr)
        return 2
    seeds = range(args.seed, args.seed + args.seeds)
    outcome = reproduce(out, runs, SCALES[args.scale], seeds, args.jobs)
    print()
    for judgement in judge_claims(outcome.results):
        print(
            f"{judgement.claim.key} ({judgement.regime.title}): {judgement.verdict.status}: "
            f"{judgement.claim.text}"
        )
    print("\nWrote " + ", ".join(str(path) for path in outcome.files))
    if outcome.failures:
        print(
            f"adafactor reproduce: {len(outcome.failures)} run(s) failed: "
            + "; ".join(f"{name}: {error}" for name, error in outcome.failures.items()),
            file=sys.stderr,
        )
        return 1
    return 0


def _int_at_least(lowest: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``lowest``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


MEMORY_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _memory(args: argparse.Namespace) -> int:
    import torch

    from .memory import memory_table, training_table
    from .model_shapes import model_parameters

    try:
        params = model_parameters(args.model)
    except ValueError as error:
        print(f"adafactor memory: {error}", file=sys.stderr)
        return 2
    if args.dtype:
        dtype = getattr(torch, MEMORY_DTYPES[args.dtype])
        params = [torch.empty(p.shape, dtype=dtype, device="meta") for p in params]
    dtypes = ", ".join(sorted({str(p.dtype).removeprefix("torch.") for p in params}))
    print(memory_table(params))
    print(
        f"\nWhole training ({dtypes} parameters): parameters, gradients and optimizer state. "
        "Not counted: activations (they grow with the batch, and are the same in every mode) "
        "and autograd's buffers (a tied weight holds its earlier gradient contributions until "
        "the last one arrives, in every mode).\n"
    )
    print(training_table(params))
    return 0


DEMO_TIME = "about 30 seconds"
QUICK_TIME = "about 4 minutes on 2 cores"
FULL_TIME = "about 40 minutes on 2 cores"
PRECISION_TIME = "about 6 minutes on 2 cores"
"""Measured wall times on 2 idle cores (docs/reproduction.md has the measurements)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adafactor",
        description="Adafactor (Shazeer & Stern, 2018) for PyTorch: demos, reproduction, tools.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="train a small character language model on the shipped KJV text with Adafactor "
        f"and with Adam; print losses and optimizer memory ({DEMO_TIME})",
    )
    demo.add_argument(
        "--steps", type=_positive_int, default=300, help="training steps per optimizer"
    )
    demo.add_argument("--seed", type=_nonnegative_int, default=0)
    demo.set_defaults(func=_demo)

    reproduce = commands.add_parser(
        "reproduce",
        help="reproduce the paper's experiments (Tables 2 and 3, Figure 1) on a miniature "
        f"English-Chichewa Transformer: a quick set ({QUICK_TIME}) or --full ({FULL_TIME} a "
        "seed); writes a results table with verdicts and plots",
    )
    reproduce.add_argument(
        "--full", action="store_true", help=f"all runs of Tables 2 and 3 ({FULL_TIME} a seed)"
    )
    reproduce.add_argument(
        "--search",
        action="store_true",
        help="the screen of the search for the instability of Sections 5-7: beta1 = 0 with "
        "and without warm-up in each regime of the search (see docs/reproduction.md)",
    )
    reproduce.add_argument(
        "--regime",
        action="append",
        metavar="NAME",
        help="the runs of claims C3-C6 and their controls in this regime of the search "
        "(lr3e-3, stress, lr3e-2, long, vocab8k); may be given more than once",
    )
    reproduce.add_argument(
        "--runs", nargs="+", metavar="NAME", help="these runs too (see results.md for names)"
    )
    reproduce.add_argument(
        "--seed", type=_nonnegative_int, default=0, help="the first seed (default: %(default)s)"
    )
    reproduce.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run every run under N seeds, --seed onwards; figures become mean ± standard "
        "deviation and the verdicts are decided seed by seed (default: %(default)s)",
    )
    reproduce.add_argument(
        "--out",
        default="reproduction",
        metavar="DIR",
        help="output directory; finished runs found there are not re-run (default: %(default)s)",
    )
    reproduce.add_argument(
        "--jobs",
        type=_positive_int,
        default=2,
        metavar="N",
        help="runs in parallel, one thread each (default: %(default)s)",
    )
    reproduce.add_argument(
        "--scale",
        choices=("laptop", "tiny"),
        default="laptop",
        help="laptop: the reproduction; tiny: a seconds-long smoke test (default: %(default)s)",
    )
    reproduce.set_defaults(func=_reproduce)

    precision = commands.add_parser(
        "precision",
        help="bfloat16 parameters rounded to nearest, stochastically or compensated against "
        "float32 parameters on the demo's model, in three learning-rate regimes, with verdicts "
        f"(docs/precision.md; {PRECISION_TIME})",
    )
    precision.add_argument(
        "--regime",
        action="append",
        metavar="NAME",
        help="only this regime (relative, cosine, finetune); may be given more than once",
    )
    precision.add_argument(
        "--seed", type=_nonnegative_int, default=0, help="the first seed (default: %(default)s)"
    )
    precision.add_argument(
        "--seeds",
        type=_int_at_least(2),
        default=3,
        metavar="N",
        help="seeds --seed onwards; the verdicts need float32's spread over them "
        "(default: %(default)s)",
    )
    precision.add_argument(
        "--out",
        default="precision",
        metavar="DIR",
        help="where precision.md, precision.json and precision.png go (default: %(default)s)",
    )
    precision.add_argument(
        "--jobs",
        type=_positive_int,
        default=2,
        metavar="N",
        help="runs in parallel, one thread each (default: %(default)s)",
    )
    precision.add_argument(
        "--scale",
        choices=("cpu", "tiny"),
        default="cpu",
        help="cpu: the experiment; tiny: a seconds-long smoke test (default: %(default)s)",
    )
    precision.set_defaults(func=_precision)

    from .model_shapes import MODELS

    memory = commands.add_parser(
        "memory",
        help="optimizer-state memory of Adafactor (momentum off/on, bf16 momentum) vs "
        "Adam/AdamW for a model's shapes, and whole-training memory (parameters, gradients, "
        "state; activations excluded) of AdamW, Adafactor and Adafactor with step_in_backward, "
        "built on the meta device (nothing is downloaded)",
    )
    memory.add_argument(
        "--model",
        default="t5-small",
        metavar="MODEL",
        help=f"one of {', '.join(sorted(MODELS))}; a transformers config class with its "
        "defaults (T5Config, GPT2Config, LlamaConfig, ...); or module:callable returning an "
        "nn.Module or tensors (default: t5-small)",
    )
    memory.add_argument(
        "--dtype",
        choices=list(MEMORY_DTYPES),
        help="the parameters' dtype, and so their gradients' and AdamW's m and v (Adafactor's "
        "statistics are float32 whatever it is); default: the model's own (float32 for the "
        "named models and config classes)",
    )
    memory.set_defaults(func=_memory)

    # Listed for --help; its own parser (adafactor.bench) takes the arguments, see main().
    commands.add_parser(
        "bench",
        add_help=False,
        help="benchmark step time, state and transient memory against peer Adafactors and "
        "AdamW, each in its own process (see adafactor bench --help)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``adafactor`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
