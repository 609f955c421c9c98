"""The group step on CPU: ``cpu.c``, built on first use with the C compiler at hand and loaded
with ``ctypes``.

A build takes about a second. It is cached on disk (``ADAFACTOR_CACHE_DIR``, else
``$XDG_CACHE_HOME/adafactor`` or ``~/.cache/adafactor``; where that cannot be written,
``adafactor-<uid>`` in the temporary directory) under a key of the source, the flags and the
machine, with the library's sha256 recorded beside it. Later processes load a cached build
whose bytes match that record at once, without a compiler; any other file is built again,
never loaded. Building is said once through ``logging`` (logger ``adafactor``), with the time
it took. A build or load that fails raises ``KernelBuildError``, naming the cause and the
file, and leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ..options import Hyperparameters
from .errors import KernelBuildError
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
OPENMP = "-fopenmp"
COMPILERS = ("cc", "gcc", "clang")
"""Looked for on ``PATH``, in this order, where ``CC`` is unset or names nothing runnable."""
BUILD_TIMEOUT_S = 120.0
"""A build takes about a second; a compiler still running after this is stuck (a lock, a hung
mount) and is killed, with everything it started."""
OUTPUT_TAIL = 2000
"""How much of a failed compiler's output a message quotes (its end: where the error is)."""


def compiler() -> str | None:
    """The C compiler to build with, as a command line: ``CC`` (which may carry arguments, as
    in ``CC="ccache gcc"``) if it names a program on ``PATH``, else the first of cc, gcc and
    clang found there; ``None`` if there is none. A ``CC`` that names nothing runnable is
    logged as a warning and passed over."""
    cc = os.environ.get("CC", "").strip()
    if cc:
        problem = _cc_problem(cc)
        if problem is None:
            return cc
        log.warning("adafactor: %s; looking for %s instead", problem, ", ".join(COMPILERS))
    return next((name for name in COMPILERS if shutil.which(name)), None)


def _cc_problem(cc: str) -> str | None:
    """Why the command line ``cc`` cannot be run, or None."""
    try:
        argv = shlex.split(cc)
    except ValueError as error:
        return f"CC={cc!r} cannot be parsed ({error})"
    if not argv or shutil.which(argv[0]) is None:
        return f"CC={cc!r} not found"
    return None


def _no_compiler() -> str:
    cc = os.environ.get("CC", "").strip()
    said = (_cc_problem(cc) or f"CC={cc!r}") if cc else "CC is unset"
    return f"no C compiler found ({said}, and none of {', '.join(COMPILERS)} is on PATH)"


def _cache_dir() -> Path:
    if os.environ.get("ADAFACTOR_CACHE_DIR"):
        return Path(os.environ["ADAFACTOR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adafactor"


def _spare_dir() -> Path | None:
    """The per-user cache in the temporary directory, for where the cache directory cannot be
    written (None where users have no ids to tell them apart)."""
    if not hasattr(os, "getuid"):
        return None
    return Path(tempfile.gettempdir()) / f"adafactor-{os.getuid()}"


def _private(directory: Path) -> bool:
    """Whether ``directory`` is a directory of this user's that no one else may write: in a
    temporary directory shared by all users, anyone could plant a library for us to load."""
    try:
        info = directory.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def _machine() -> str:
    """What a ``-march=native`` build depends on: the CPU's model and instruction sets."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(_CPU_LINES)]
        return platform.machine() + "".join(dict.fromkeys(lines))
    except OSError:
        return platform.processor() + platform.machine()


_CPU_LINES = ("model name", "flags", "Features", "CPU implementer", "CPU part")
"""The lines of /proc/cpuinfo that name the CPU (x86: the first two; Arm: the others)."""


def _key(source: str) -> str:
    # Not the compiler (nor whether OpenMP was at hand: a build without it is cached under the
    # same key). Any compiler's build of this source with these flags computes the same step,
    # to rounding (the tests hold each to the eager step), and a key naming the compiler would
    # need one at hand to find a cached build. To build with another compiler, delete the file.
    return hashlib.sha256("\0".join([source, *FLAGS, _machine()]).encode()).hexdigest()[:16]


def _record(path: Path) -> Path:
    """Where the sha256 of the library at ``path`` is recorded (``sha256sum -c`` reads it)."""
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mismatch(path: Path) -> str | None:
    """Why the file at ``path`` is not to be loaded (anything but the bytes its record names:
    empty, cut short by a crash, garbage, another build), or None. A library is never mapped
    unchecked: a truncated one kills the process with a bus error."""
    try:
        recorded = _record(path).read_text().split()
    except OSError as error:
        return f"{path} has no readable checksum record ({error})"
    try:
        actual = _sha256(path)
    except OSError as error:
        return f"{path} cannot be read ({error})"
    if recorded[:1] != [actual]:
        return f"{path} does not match its checksum record (a cut-short or altered file)"
    return None


@functools.cache
def library() -> ctypes.CDLL:
    """``cpu.c`` built and loaded, once per process: a cached build if it matches its checksum
    record (no compiler needed), else one built now (about a second) and cached.

    Raises:
        KernelBuildError: no cached build and none can be made (no compiler, a failed, crashed
            or stuck build), or the library does not load (e.g. a cache on a ``noexec``
            mount); the cause and the file in the message.
    """
    source = c_header() + SOURCE.read_text()
    name = f"adafactor_cpu_{_key(source)}.so"
    cache, spare = _cache_dir(), _spare_dir()
    places = [cache, *([spare] if spare is not None and _private(spare) else [])]
    mismatched = []
    for directory in places:
        path = directory / name
        if os.path.exists(path):
            problem = _mismatch(path)
            if problem is None:
                return _load(path)
            mismatched.append(problem)
    for problem in mismatched:
        log.warning("adafactor: %s: building it again", problem)
    cc = compiler()
    if cc is None:
        raise KernelBuildError(f"{_no_compiler()}, and no usable build at {cache / name}")
    with _workspace(cache, spare) as (work, home):
        if home is None:
            # Loaded before the workspace goes: a library stays mapped once its file is gone.
            return _load(_compile(cc, source, work, "for this process only"))
        path = home / name
        _place(_compile(cc, source, work, f"into {path}"), path)
    return _load(path)


@contextlib.contextmanager
def _workspace(cache: Path, spare: Path | None) -> Iterator[tuple[Path, Path | None]]:
    """A new directory to build in, removed afterwards whatever happens, and where to cache the
    build: ``cache``, else (said once in the log) ``spare``, else nowhere."""
    reasons = []
    for home in (cache, spare):
        if home is None:
            continue
        try:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            if home == spare and not _private(home):
                raise PermissionError(f"{home} is not a directory of this user's alone")
            # In the cache directory, so that the library's last move is a rename within it.
            work = Path(tempfile.mkdtemp(prefix=".build-", dir=home))
            break
        except OSError as error:
            reasons.append(str(error))
    else:
        home = None
        try:
            work = Path(tempfile.mkdtemp(prefix="adafactor-build-"))
        except OSError as error:
            reasons.append(str(error))
            raise KernelBuildError(
                "no directory to build the CPU kernels in: " + "; ".join(reasons)
            ) from error
    if home != cache:
        instead = f"caching them in {home}" if home else f"building them in {work} for now"
        log.warning("adafactor: cannot write the CPU kernels' cache (%s): %s", reasons[0], instead)
    try:
        yield work, home
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _compile(cc: str, source: str, work: Path, target: str) -> Path:
    """``source`` built in ``work`` with ``cc``: with OpenMP, else (a compiler that refuses
    ``-fopenmp``, such as macOS's clang) single-threaded. ``target`` says where to, for
    messages."""
    log.info("adafactor: building the CPU kernels with %s %s (once)", cc, target)
    start = time.perf_counter()
    (work / "adafactor_cpu.c").write_text(source)
    built = work / "adafactor_cpu.so"
    # Relative names: nothing of the build's directory can end up in the library, so that
    # processes building at once write the same bytes.
    argv = [*shlex.split(cc), *FLAGS, "-o", built.name, "adafactor_cpu.c", "-lm"]
    done = _run(argv, work, cc, target)
    if done.returncode > 0:
        refused = done
        done = _run([a for a in argv if a != OPENMP], work, cc, target)
        if done.returncode == 0:
            said = (refused.stderr.strip() or refused.stdout.strip() or "no output").splitlines()
            log.warning(
                "adafactor: %s cannot build with %s (%s): the CPU kernels are built without "
                "OpenMP, single-threaded, %s",
                cc,
                OPENMP,
                said[-1],
                target,
            )
    if done.returncode != 0:
        also = " (with -fopenmp and without)" if done.returncode > 0 else ""
        raise KernelBuildError(
            f"building the CPU kernels failed: `{cc}` {_outcome(done)}{also}, building {target}"
            + _output(done)
        )
    if not built.is_file() or built.stat().st_size == 0:
        raise KernelBuildError(
            f"building the CPU kernels failed: `{cc}` exited with status 0 but wrote no "
            f"library, building {target}" + _output(done)
        )
    log.info("adafactor: built the CPU kernels in %.1f s", time.perf_counter() - start)
    return built


def _run(argv: list[str], work: Path, cc: str, target: str) -> subprocess.CompletedProcess[str]:
    """The compiler run in ``work``, its temporaries there too (``TMPDIR``). Past
    ``BUILD_TIMEOUT_S``, or when this process is interrupted, it is killed with everything it
    started (its own session), so that nothing goes on writing into ``work``."""
    try:
        process = subprocess.Popen(
            argv,
            cwd=work,
            env={**os.environ, "TMPDIR": str(work)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as error:  # not executable, a bad interpreter line
        raise KernelBuildError(
            f"building the CPU kernels failed: cannot run `{cc}` ({error}), building {target}"
        ) from error
    with process:
        try:
            stdout, stderr = process.communicate(timeout=BUILD_TIMEOUT_S)
        except BaseException as error:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if isinstance(error, subprocess.TimeoutExpired):
                raise KernelBuildError(
                    f"building the CPU kernels failed: `{cc}` did not finish within "
                    f"{BUILD_TIMEOUT_S:g} s and was killed, building {target}"
                ) from None
            raise
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def _outcome(done: subprocess.CompletedProcess[str]) -> str:
    if done.returncode >= 0:
        return f"exited with status {done.returncode}"
    try:
        return f"was killed by {signal.Signals(-done.returncode).name}"
    except ValueError:  # a signal without a name here
        return f"was killed by signal {-done.returncode}"


def _output(done: subprocess.CompletedProcess[str]) -> str:
    """What the compiler said: the end of its stderr, else of its stdout."""
    if done.stderr.strip():
        return f"; its stderr ends:\n{_tail(done.stderr)}"
    if done.stdout.strip():
        return f"; no stderr, its stdout ends:\n{_tail(done.stdout)}"
    return "; it printed nothing"


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= OUTPUT_TAIL else "…" + text[-OUTPUT_TAIL:]


def _place(built: Path, path: Path) -> None:
    """``built`` moved to ``path``, its sha256 recorded beside it: each written through to disk
    and renamed into place, so that a reader sees a whole file or none (processes may build
    at once; the last rename wins, with the same bytes), the library first, so that a
    record never names what is not there yet. A crash between the two leaves a mismatch,
    which is built again."""
    digest = _sha256(built)
    record = built.with_name("record")
    record.write_text(f"{digest}  {path.name}\n")
    for written in (built, record):
        with open(written, "rb") as f:
            os.fsync(f.fileno())
    os.replace(built, path)
    os.replace(record, _record(path))


def _load(path: Path) -> ctypes.CDLL:
    try:
        return _declare(ctypes.CDLL(str(path)))
    except (OSError, AttributeError) as error:  # a noexec mount; a library of other symbols
        raise KernelBuildError(f"loading the CPU kernels failed: {path}: {error}") from error


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.adafactor_sums.argtypes = [p, i64, p, i64, p, p, p, i32]
    lib.adafactor_update_sums.argtypes = [p, i64, p, i64, p, p, p, p, i32]
    lib.adafactor_apply.argtypes = [p, i64, p, i64, p, p, p, p, p, p, i32]
    for function in (lib.adafactor_sums, lib.adafactor_update_sums, lib.adafactor_apply):
        function.restype = ctypes.c_int
    return lib


class Buffers(NamedTuple):
    """What the CPU kernels keep for one step: the sums, and the tiles' partial sums."""

    sums: Tensor
    scratch: Tensor
    tile_sums: Tensor


class Numbers(NamedTuple):
    """A group's options as the kernels read them, and the seed of stochastic rounding's bits
    (``rounding_seed``: with each tensor's stream and step, as ``equations.rounding_noise``)."""

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
    """``hp`` for the kernels, and the seed of stochastic rounding's bits."""
    del device  # always the CPU
    seed = torch.tensor([hp.rounding_seed or 0], dtype=torch.int64)
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
