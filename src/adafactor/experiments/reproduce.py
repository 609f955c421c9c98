"""``adafactor reproduce``: run the paper's configurations under one or more seeds, resumably,
and write the report.

The output directory holds ``data/`` (per vocabulary size, the tokenizer and the encoded
corpus), ``runs/seed<N>/`` (one JSON and one CSV per finished run), and the report:
``results.md``, ``results.csv``, ``results.json`` and the plots. A run whose JSON is there,
made with the same configuration, scale, seed and code (``configs.run_key``), is not run again.
Runs go to ``jobs`` processes, each on one thread; every run is deterministic under its seed,
whichever process runs it.
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

from .configs import FULL, QUICK, RUNS, SEARCH, Scale, regime_runs, run_key
from .dataset import prepare_data
from .plots import write_plots
from .report import write_report
from .runner import RunResult, load_result, run_and_save, seed_directory

Task = tuple[str, int]
"""A run name and a seed."""


@dataclass
class Reproduction:
    """What ``reproduce`` did: the results by run name (one per seed, in seed order), the
    runs that failed (with their error) and the report's files."""

    results: dict[str, list[RunResult]]
    failures: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def select_runs(
    full: bool = False,
    names: Sequence[str] | None = None,
    search: bool = False,
    regimes: Sequence[str] = (),
) -> list[str]:
    """The run names to do: those of ``--full``, ``--search``, each ``--regime`` and ``names``
    (checked) together, or the quick set when none is asked for."""
    unknown = [n for n in names or () if n not in RUNS]
    if unknown:
        raise ValueError(f"unknown run(s) {unknown}; known runs: {', '.join(RUNS)}")
    chosen = [
        *(FULL if full else ()),
        *(SEARCH if search else ()),
        *(name for regime in regimes for name in regime_runs(regime)),
        *(names or ()),
    ]
    return list(dict.fromkeys(chosen or QUICK))


def _put(progress_queue: Any, steps: int) -> None:
    """Report steps from a worker process (a module-level function: it must pickle)."""
    progress_queue.put(steps)


def _in_parallel(
    todo: Sequence[Task],
    scale: Scale,
    data_paths: dict[str, Path],
    runs_dir: Path,
    jobs: int,
    bar: tqdm,
    finished: Callable[[Task, RunResult | BaseException], None],
) -> None:
    """Run ``todo`` on ``jobs`` spawned processes, reporting their steps to ``bar``."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=context) as pool:
        progress_queue = manager.Queue()
        futures: dict[Future[RunResult], Task] = {
            pool.submit(
                run_and_save,
                RUNS[name],
                RUNS[name].at_scale(scale),
                seed,
                data_paths[name],
                runs_dir,
                partial(_put, progress_queue),
            ): (name, seed)
            for name, seed in todo
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


def _serially(
    todo: Sequence[Task],
    scale: Scale,
    data_paths: dict[str, Path],
    runs_dir: Path,
    bar: tqdm,
    finished: Callable[[Task, RunResult | BaseException], None],
) -> None:
    """Run ``todo`` one after the other in this process, restoring its thread count."""
    threads = torch.get_num_threads()
    try:
        for name, seed in todo:
            config = RUNS[name]
            try:
                result: RunResult | BaseException = run_and_save(
                    config, config.at_scale(scale), seed, data_paths[name], runs_dir, bar.update
                )
            except Exception as error:  # reported; the other runs go on
                result = error
            finished((name, seed), result)
    finally:
        torch.set_num_threads(threads)


def _prepare(runs: Sequence[str], scale: Scale, out: Path) -> dict[str, Path]:
    """The encoded data of each run: one tokenizer and corpus per vocabulary size."""
    paths: dict[int, Path] = {}
    for name in runs:
        vocab = RUNS[name].at_scale(scale).vocab_size
        if vocab not in paths:
            paths[vocab] = prepare_data(RUNS[name].at_scale(scale), out / "data" / f"vocab{vocab}")
    return {name: paths[RUNS[name].at_scale(scale).vocab_size] for name in runs}


def _label(task: Task, seeds: Sequence[int]) -> str:
    """A task as printed: the seed only when there are several."""
    name, seed = task
    return name if len(seeds) == 1 else f"{name} (seed {seed})"


def reproduce(
    out: Path,
    runs: Sequence[str],
    scale: Scale,
    seeds: Sequence[int] = (0,),
    jobs: int = 2,
    print_fn: Callable[[str], None] = tqdm.write,
) -> Reproduction:
    """Do the ``runs`` × ``seeds`` not yet finished in ``out``, then write the report of all.

    A run that diverges is a result. A run that fails with an error is recorded in
    ``failures`` (the others go on) and left out of the report.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if not seeds:
        raise ValueError("at least one seed is needed")
    runs_dir = out / "runs"
    print_fn(f"Tokenizer and encoded corpus in {out / 'data'} (trained on first use)")
    data_paths = _prepare(runs, scale, out)
    tasks = [(name, seed) for seed in seeds for name in runs]
    done: dict[Task, RunResult] = {}
    for name, seed in tasks:
        key = run_key(RUNS[name], RUNS[name].at_scale(scale), seed)
        saved = load_result(name, key, seed_directory(runs_dir, seed))
        if saved is not None:
            done[name, seed] = saved
    todo = [task for task in tasks if task not in done]
    stale = [t for t in todo if (seed_directory(runs_dir, t[1]) / f"{t[0]}.json").exists()]
    if done:
        print_fn(f"{len(done)} run(s) already finished in {runs_dir}; not re-run")
    if stale:
        print_fn(f"{len(stale)} run(s) in {runs_dir} were made by other code or settings; re-run")
    outcome = Reproduction(results={})

    def finished(task: Task, result: RunResult | BaseException) -> None:
        label = _label(task, seeds)
        if isinstance(result, BaseException):
            outcome.failures[label] = f"{type(result).__name__}: {result}"
            print_fn(f"{label}: FAILED ({outcome.failures[label]})")
            return
        done[task] = result
        if result.diverged:
            status = f"diverged at step {result.diverged_at}"
        else:
            status = f"dev loss {result.dev_loss:.3f}, BLEU {result.bleu:.2f}"
        print_fn(f"{label}: {status} ({result.seconds:.0f} s)")

    total = sum(RUNS[name].at_scale(scale).steps for name, _ in todo)
    with tqdm(total=total, unit="step", desc=f"{len(todo)} runs") as bar:
        if jobs == 1 or len(todo) <= 1:
            _serially(todo, scale, data_paths, runs_dir, bar, finished)
        else:
            _in_parallel(todo, scale, data_paths, runs_dir, jobs, bar, finished)

    for name in RUNS:
        trials = [done[name, seed] for seed in seeds if (name, seed) in done]
        if name in runs and trials:
            outcome.results[name] = trials
    missing = [_label(t, seeds) for t in tasks if t not in done]
    outcome.files = write_report(outcome.results, scale, seeds, out, missing)
    outcome.files += write_plots(outcome.results, out)
    return outcome
