"""What produced a run: a fingerprint of the code and the libraries behind its numbers.

A finished run is reused only when its key matches (``configs.run_key``), and the key holds
this fingerprint: a changed optimizer, model, data pipeline or training loop re-runs the runs
it would have produced differently, instead of silently reusing old ones. Modules that only
read finished runs (the verdicts, tables, plots, the driver and the command line) are left
out, so that changing a verdict rule or a plot does not throw runs away.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[1]
"""The ``adafactor`` package that is imported, whichever checkout it lies in."""
NOT_IN_RUNS = frozenset({"cli.py", "__main__.py", "bench.py", "bench", "experiments"})
"""What no run imports at the top of the package: the command-line tools (``experiments/`` is
named module by module below)."""
TRAINING_MODULES = (
    "corpus.py",
    "dataset.py",
    "diagnostics.py",
    "evaluation.py",
    "model.py",
    "runner.py",
    "tokenizer.py",
)
"""The modules of ``experiments/`` that a run's numbers depend on."""
LIBRARIES = ("torch", "sentencepiece", "sacrebleu")


def _library_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def _run_sources() -> list[Path]:
    """Every module of the optimizer (all of the package, subpackages too, but the command-line
    tools and ``experiments/``: a new module is included without being named) and the
    training modules."""
    core = [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.relative_to(PACKAGE).parts[0] not in NOT_IN_RUNS
    ]
    return core + [PACKAGE / "experiments" / name for name in TRAINING_MODULES]


@cache
def _source_digest(extra: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for path in _run_sources():
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    for text in extra:
        digest.update(text.encode() + b"\0")
    return digest.hexdigest()


def code_fingerprint(*functions: Callable[..., Any]) -> dict[str, str]:
    """The sha256 of the sources a run depends on (and of ``functions``, defined elsewhere)
    and the versions of the libraries that compute its numbers."""
    extra = tuple(inspect.getsource(f) for f in functions)
    return {
        "source sha256": _source_digest(extra),
        **{name: _library_version(name) for name in LIBRARIES},
    }
