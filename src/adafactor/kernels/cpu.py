"""The group step on CPU: ``cpu.c``, built on first use with the C compiler at hand and loaded
with ``ctypes``. A build takes about a second; it is cached on disk (``ADAFACTOR_CACHE_DIR``,
else ``$XDG_CACHE_HOME/adafactor`` or ``~/.cache/adafactor``) under a key of the source, the
compiler and the machine, so later processes load it at once. Building is said once through
``logging`` (logger ``adafactor``), with the time it took.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ..options import Hyperparameters
from .plan import Geometry, Plan, c_header
from .plan import flags as plan_flags
from .plan import numbers as plan_numbers

log = logging.getLogger("adafactor")

DEVICE_TYPE = "cpu"
GEOMETRY = Geometry(rows=512, cols=4096)
"""Tiles of whole rows (up to ``MAX_COLS`` in cpu.c): a core streams through each row, where
narrower tiles would jump to another page every few KiB, out of the prefetcher's reach."""
SOURCE = Path(__file__).with_name("cpu.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared", "-std=gnu11")
"""-fno-math-errno: sqrtf needs no errno (the kernels never read it), and so vectorizes."""


def compiler() -> str | None:
    """The C compiler to build with (``CC``, else cc, gcc or clang), or ``None``."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cache_dir() -> Path:
    if os.environ.get("ADAFACTOR_CACHE_DIR"):
        return Path(os.environ["ADAFACTOR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adafactor"


def _machine() -> str:
    """What a ``-march=native`` build depends on: the CPU's model and instruction sets."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor() + platform.machine()


@functools.cache
def library() -> ctypes.CDLL:
    """``cpu.c`` built and loaded (once per process).

    Raises:
        RuntimeError: no C compiler, or the build failed (its output in the message).
    """
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")
    source = c_header() + SOURCE.read_text()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([source, cc, version, *FLAGS, _machine()]).encode())
    directory = _cache_dir()
    path = directory / f"adafactor_cpu_{key.hexdigest()[:16]}.so"
    if not path.exists():
        path = _build(cc, source, directory, path)
    return _declare(ctypes.CDLL(str(path)))


def _build(cc: str, source: str, directory: Path, path: Path) -> Path:
    """Compile ``source`` to ``path`` (atomically: processes may build at once), or to a
    temporary directory where ``directory`` is not writable."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=directory))
    except OSError:
        work = Path(tempfile.mkdtemp())
        path = work / path.name
    log.info("adafactor: building the CPU kernels with %s (once; cached in %s)", cc, path.parent)
    start = time.perf_counter()
    (work / "adafactor_cpu.c").write_text(source)
    built = work / path.name
    done = subprocess.run(
        [cc, *FLAGS, "-o", str(built), str(work / "adafactor_cpu.c"), "-lm"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the CPU kernels failed:\n{done.stderr[-4000:]}")
    os.replace(built, path)
    shutil.rmtree(work, ignore_errors=True) if work != path.parent else None
    log.info("adafactor: built the CPU kernels in %.1f s", time.perf_counter() - start)
    return path


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.adafactor_sums.argtypes = [p, i64, p, i64, p, p, p, i32]
    lib.adafactor_update_sums.argtypes = [p, i64, p, i64, p, p, p, p, i32]
    lib.adafactor_apply.argtypes = [p, i64, p, i64, p, p, p, p, p, p, i32]
    for function in (lib.adafactor_sums, lib.adafactor_update_sums, lib.adafactor_apply):
        function.restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether the CPU kernels are built or can be (a C compiler is at hand)."""
    return compiler() is not None


class Buffers(NamedTuple):
    """What the CPU kernels keep for one step: the sums, and the tiles' partial sums."""

    sums: Tensor
    scratch: Tensor
    tile_sums: Tensor


class Numbers(NamedTuple):
    """A group's options as the kernels read them, and the seed of stochastic rounding."""

    numbers: Tensor  # float64, HP order
    flags: Tensor  # int64, Flag order
    seed: Tensor  # int64, one number


def make_buffers(plan: Plan) -> Buffers:
    """Fresh buffers for one step of ``plan`` (every entry is written before it is read)."""
    return Buffers(
        torch.empty(plan.sums_numel, dtype=torch.float32),
        torch.empty(plan.scratch_numel, dtype=torch.float32),
        torch.empty(max(plan.tiles.shape[0], 1) * 4, dtype=torch.float64),
    )


def numbers(hp: Hyperparameters, device: torch.device) -> Numbers:
    """``hp`` for the kernels; a seed is drawn from torch's generator only for stochastic
    rounding (as the eager step draws its noise only then)."""
    del device  # always the CPU
    seed = (
        torch.randint(0, 2**62, (1,))
        if hp.stochastic_rounding
        else torch.zeros(1, dtype=torch.int64)
    )
    return Numbers(
        torch.tensor(plan_numbers(hp), dtype=torch.float64),
        torch.tensor(plan_flags(hp), dtype=torch.int64),
        seed,
    )


def sums_of(buffers: Buffers) -> Tensor:
    """The sums that pass between the phases."""
    return buffers.sums


PARALLEL_NUMEL = 1 << 17
"""A group of fewer elements steps on one thread: waking threads would cost more."""


def _threads(plan: Plan) -> int:
    return torch.get_num_threads() if plan.numel >= PARALLEL_NUMEL else 1


def _tables(plan: Plan) -> tuple[int, int, int, int]:
    return (
        plan.descriptors.data_ptr(),
        plan.descriptors.shape[0],
        plan.tiles.data_ptr(),
        plan.tiles.shape[0],
    )


def _check(status: int) -> None:
    if status != 0:  # only before anything changed: a kernel allocates first
        raise MemoryError("adafactor: the CPU kernels could not allocate their buffers")


def sums(plan: Plan, buffers: Buffers) -> None:
    """Phase 1 for every tensor of the plan, into ``buffers.sums``."""
    status = library().adafactor_sums(
        *_tables(plan),
        buffers.sums.data_ptr(),
        buffers.scratch.data_ptr(),
        buffers.tile_sums.data_ptr(),
        _threads(plan),
    )
    _check(status)


def update_sums(plan: Plan, buffers: Buffers, options: Numbers) -> None:
    """Phase 2, from complete sums: R_t, C_t, then Σ U_t² and the non-finite counts."""
    status = library().adafactor_update_sums(
        *_tables(plan),
        buffers.sums.data_ptr(),
        buffers.tile_sums.data_ptr(),
        options.numbers.data_ptr(),
        options.flags.data_ptr(),
        _threads(plan),
    )
    _check(status)


def apply(plan: Plan, buffers: Buffers, options: Numbers) -> None:
    """Phase 3, from complete sums: the update of every tensor, its state and counters."""
    scalars = torch.empty(plan.scalars_numel, dtype=torch.float64)
    status = library().adafactor_apply(
        *_tables(plan),
        buffers.sums.data_ptr(),
        scalars.data_ptr(),
        plan.scalar_offsets.data_ptr(),
        options.numbers.data_ptr(),
        options.flags.data_ptr(),
        options.seed.data_ptr(),
        _threads(plan),
    )
    _check(status)
