"""``adafactor reproduce``: run the paper's configurations, resumably, and write the report.

The output directory holds ``data/`` (the tokenizer and the encoded corpus), ``runs/`` (one
JSON and one CSV per finished run), and the report: ``results.md``, ``results.csv``,
``results.json``, ``loss.png`` and ``update_rms.png``. A run whose JSON is there, made with
the same configuration, scale and seed, is not run again. Runs go to ``jobs`` processes, each
on one thread; every run is deterministic under its seed, whichever process runs it.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .configs import QUICK, RUNS, Scale, run_key
from .dataset import prepare_data
from .plots import write_plots
from .report import write_report
from .runner import RunResult, load_result, run_and_save


@dataclass
class Reproduction:
    """What ``reproduce`` did: the results by run name, the runs that failed (with their
    error) and the report's files."""

    results: dict[str, RunResult]
    failures: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def select_runs(full: bool, names: Sequence[str] | None = None) -> list[str]:
    """The run names to do: ``names`` if given (checked), else all of them or the quick set."""
    if names:
        unknown = [n for n in names if n not in RUNS]
        if unknown:
            raise ValueError(f"unknown run(s) {unknown}; known runs: {', '.join(RUNS)}")
        return list(names)
    return list(RUNS) if full else list(QUICK)


def _put(progress_queue: Any, steps: int) -> None:
    progress_queue.put(steps)


def _in_parallel(
    todo: Sequence[str],
    scale: Scale,
    seed: int,
    data_path: Path,
    runs_dir: Path,
    jobs: int,
    bar: tqdm,
    finished: Callable[[str, RunResult | BaseException], None],
) -> None:
    """Run ``todo`` on ``jobs`` spawned processes, reporting their steps to ``bar``."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=context) as pool:
        progress_queue = manager.Queue()
        futures: dict[Future[RunResult], str] = {
            pool.submit(
                run_and_save,
                RUNS[name],
                scale,
                seed,
                data_path,
                runs_dir,
                partial(_put, progress_queue),
            ): name
            for name in todo
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5)
            try:
                while True:
                    bar.update(progress_queue.get_nowait())
            except queue_module.Empty:
                pass
            for future in done:
                error = future.exception()
                finished(futures[future], error if error is not None else future.result())


def reproduce(
    out: Path,
    runs: Sequence[str],
    scale: Scale,
    seed: int = 0,
    jobs: int = 2,
    print_fn: Callable[[str], None] = tqdm.write,
) -> Reproduction:
    """Do the ``runs`` not yet finished in ``out``, then write the report of all of them.

    A run that diverges is a result. A run that fails with an error is recorded in
    ``failures`` (the others go on) and left out of the report.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    runs_dir = out / "runs"
    print_fn(f"Tokenizer and encoded corpus in {out / 'data'} (trained on first use)")
    data_path = prepare_data(scale, out / "data")
    outcome = Reproduction(results={})
    for name in runs:
        saved = load_result(name, run_key(RUNS[name], scale, seed), runs_dir)
        if saved is not None:
            outcome.results[name] = saved
    todo = [name for name in runs if name not in outcome.results]
    if outcome.results:
        print_fn(f"{len(outcome.results)} run(s) already finished in {runs_dir}; not re-run")

    def finished(name: str, result: RunResult | BaseException) -> None:
        if isinstance(result, BaseException):
            outcome.failures[name] = f"{type(result).__name__}: {result}"
            print_fn(f"{name}: FAILED ({outcome.failures[name]})")
            return
        outcome.results[name] = result
        if result.diverged:
            status = f"diverged at step {result.diverged_at}"
        else:
            status = f"dev loss {result.dev_loss:.3f}, BLEU {result.bleu:.2f}"
        print_fn(f"{name}: {status} ({result.seconds:.0f} s)")

    with tqdm(total=len(todo) * scale.steps, unit="step", desc=f"{len(todo)} runs") as bar:
        if jobs == 1 or len(todo) <= 1:
            threads = torch.get_num_threads()
            try:
                for name in todo:
                    try:
                        result = run_and_save(
                            RUNS[name], scale, seed, data_path, runs_dir, bar.update
                        )
                    except Exception as error:  # noqa: BLE001  (reported, the other runs go on)
                        result = error
                    finished(name, result)
            finally:
                torch.set_num_threads(threads)
        else:
            _in_parallel(todo, scale, seed, data_path, runs_dir, jobs, bar, finished)

    ordered = {name: outcome.results[name] for name in RUNS if name in outcome.results}
    outcome.results = ordered
    missing = [name for name in runs if name not in ordered]
    outcome.files = write_report(ordered, scale, seed, out, missing) + write_plots(ordered, out)
    return outcome
