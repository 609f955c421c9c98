"""The CPU kernels' build and load, by fault injection: no compiler, failing, crashing, stuck
and OpenMP-less compilers, ``CC`` with arguments or naming nothing, a library that does not
load (as on a ``noexec`` mount), bad cached files, unwritable caches, processes building at
once, and ``torch.compile`` tracing the step.

Every test starts from an empty cache (``ADAFACTOR_CACHE_DIR``) and temporary directory
(``TMPDIR``) of its own, with the kernels' memo reset, and checks what a user would see: the
step's result (bit for bit the eager step's where it falls back to it; to ``rtol=1e-5`` where
the kernels run), one warning per process where it falls back, no second compiler run, the
``fused=True`` error, and what is left on disk. One real build, made once, serves the tests
about loading: their "compiler" is a script that copies it.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch._dynamo  # now: importing it makes a directory in TMPDIR, which the tests watch

import adafactor
import adafactor.kernels
from adafactor import Adafactor
from adafactor.kernels import cpu
from adafactor.kernels.errors import KernelBuildError, KernelBuildWarning

STEPS = 3


class Built(NamedTuple):
    """The library of one real build: where it is, its file name (the cache key's), sha256."""

    path: Path
    name: str
    digest: str


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One real build of the CPU kernels, for every test here that needs a working library."""
    directory = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAFACTOR_CACHE_DIR", str(directory))
        adafactor.kernels.reset()
        try:
            cpu.library()
        except KernelBuildError as error:
            pytest.skip(f"the CPU kernels cannot be built here: {error}")
        finally:
            adafactor.kernels.reset()
    (path,) = directory.glob("*.so")
    return Built(path, path.name, hashlib.sha256(path.read_bytes()).hexdigest())


class Place(NamedTuple):
    """A test's own cache and temporary directories, a directory for its scripts, and a count
    of the compiler runs in it."""

    cache: Path
    tmp: Path
    bin: Path
    runs: list[list[str]]

    def left(self) -> tuple[list[str], list[str]]:
        """What is in the cache and the temporary directory (relative paths)."""
        return tuple(
            sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []
            for d in (self.cache, self.tmp)
        )


@pytest.fixture(autouse=True)
def place(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Place:
    """An empty cache and temporary directory for the test, ``CC`` unset, compiler runs
    counted, and the kernels' memo reset before and after."""
    here = Place(tmp_path / "cache", tmp_path / "tmp", tmp_path / "bin", [])
    here.tmp.mkdir()
    here.bin.mkdir()
    monkeypatch.setenv("ADAFACTOR_CACHE_DIR", str(here.cache))
    monkeypatch.setenv("TMPDIR", str(here.tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    monkeypatch.delenv("CC", raising=False)
    run = cpu._run

    def counted(argv, *args, **kwargs):
        here.runs.append(argv)
        return run(argv, *args, **kwargs)

    monkeypatch.setattr(cpu, "_run", counted)
    adafactor.kernels.reset()
    yield here
    adafactor.kernels.reset()


def script(place: Place, name: str, body: str) -> Path:
    """An executable shell script in the test's ``bin`` directory."""
    path = place.bin / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def copying_compiler(place: Place, built: Built, name: str = "fakecc") -> Path:
    """A "compiler" that writes the real build where ``-o`` says, at once."""
    return script(
        place,
        name,
        f"""\
        while [ $# -gt 0 ]; do
            if [ "$1" = -o ]; then exec /bin/cp '{built.path}' "$2"; fi
            shift
        done
        exit 1
        """,
    )


def cache_built(place: Place, built: Built, directory: Path | None = None) -> Path:
    """The real build and its record, copied into ``directory`` (the cache)."""
    directory = directory or place.cache
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(built.path, directory / built.name)
    shutil.copy(cpu._record(built.path), directory)
    return directory / built.name


class Trained(NamedTuple):
    params: list[torch.Tensor]
    warned: list[list[warnings.WarningMessage]]  # KernelBuildWarnings, per step
    runs: list[int]  # compiler runs so far, after each step


def train(place: Place, fused: bool | None, steps: int = STEPS) -> Trained:
    """``steps`` steps of a small group (a matrix, a vector, a 3-D tensor) under ``fused``."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(37, 29), (7,), (3, 8, 6)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    opt = Adafactor(params, beta1=0.9, weight_decay=0.01, fused=fused)
    warned, runs = [], []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt.step()
        warned.append([w for w in caught if issubclass(w.category, KernelBuildWarning)])
        runs.append(len(place.runs))
    return Trained(params, warned, runs)


def assert_kernels_ran(place: Place) -> None:
    """A run that steps with the CPU kernels: no warning, no compiler run after the first
    step, the eager step's results."""
    run = train(place, None)
    assert [len(w) for w in run.warned] == [0] * STEPS
    assert run.runs == [run.runs[0]] * STEPS
    assert adafactor.kernels._outcomes["cpu"] is cpu
    for p, q in zip(run.params, train(place, False).params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def assert_falls_back(place: Place, *why: str) -> None:
    """A run that steps eagerly: one warning saying why (each of ``why``) and what it costs,
    bit for bit the eager step's results, no compiler run after the first step, and
    ``fused=True`` refused with the same cause."""
    run = train(place, None)
    assert [len(w) for w in run.warned] == [1] + [0] * (STEPS - 1)
    message = str(run.warned[0][0].message)
    assert issubclass(run.warned[0][0].category, RuntimeWarning)
    assert "cannot be built, stepping eagerly" in message
    assert adafactor.kernels.EAGER_COST in message
    for part in why:
        assert part in message, (part, message)
    assert run.runs == [run.runs[0]] * STEPS
    for p, q in zip(run.params, train(place, False).params):
        assert torch.equal(p, q)
    with pytest.raises(KernelBuildError) as raised:
        train(place, True, steps=1)
    assert str(raised.value).startswith("fused=True: ")
    for part in why:
        assert part in str(raised.value)
    assert len(place.runs) == run.runs[0]
    # Another optimizer in the same process: no second warning, no second try.
    assert train(place, None, steps=1).warned == [[]]
    assert len(place.runs) == run.runs[0]


def target(place: Place, built: Built) -> str:
    return str(place.cache / built.name)


def cached(built: Built) -> tuple[list[str], list[str]]:
    """What the cache and the temporary directory hold after a good build: the library and
    its record, nothing else."""
    return [built.name, built.name + ".sha256"], []


# No compiler, and a compiler named by CC


def test_no_compiler_and_no_cached_build_steps_eagerly(monkeypatch, place, built):
    monkeypatch.setenv("PATH", str(place.bin))
    assert_falls_back(
        place,
        "no C compiler found (CC is unset, and none of cc, gcc, clang is on PATH)",
        target(place, built),
    )
    assert place.left() == ([], [])


def test_a_cached_build_loads_without_a_compiler(monkeypatch, place, built, caplog):
    caplog.set_level(logging.INFO, logger="adafactor")
    monkeypatch.setenv("PATH", str(place.bin))
    cache_built(place, built)
    assert_kernels_ran(place)
    assert place.runs == [] and caplog.records == []
    assert place.left() == cached(built)


def test_cc_may_carry_arguments(monkeypatch, place, built):
    # CC="ccache gcc": a launcher, then the compiler it runs.
    monkeypatch.setenv("PATH", str(place.bin))
    launcher = script(place, "launcher", f'echo "$@" >> {place.bin}/launched\nexec "$@"\n')
    monkeypatch.setenv("CC", f"{launcher} {copying_compiler(place, built)}")
    assert_kernels_ran(place)
    assert (place.bin / "launched").read_text().split()[0].endswith("fakecc")
    assert len(place.runs) == 1
    assert place.left() == cached(built)


@pytest.mark.parametrize("found", [True, False], ids=["cc-on-path", "no-compiler"])
def test_a_cc_naming_nothing_is_said_and_passed_over(monkeypatch, place, built, caplog, found):
    monkeypatch.setenv("PATH", str(place.bin))
    monkeypatch.setenv("CC", "no-such-compiler -O1")
    if found:
        copying_compiler(place, built, name="cc")
        assert_kernels_ran(place)
        assert len(place.runs) == 1
        assert place.left() == cached(built)
    else:
        assert_falls_back(
            place,
            "no C compiler found (CC='no-such-compiler -O1' not found, and none of cc, gcc, "
            "clang is on PATH)",
        )
        assert place.left() == ([], [])
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == [
        "adafactor: CC='no-such-compiler -O1' not found; looking for cc, gcc, clang instead"
    ]


# Compilers that fail

FAILING = {
    # name: (script body, or an absolute path for CC; the runs; what the message says)
    "bin-false": ("/bin/false", 2, ["`/bin/false` exited with status 1", "it printed nothing"]),
    "stderr": (
        "echo 'cc1: error: this compiler is broken' >&2\necho noise\nexit 1\n",
        2,
        ["exited with status 1 (with -fopenmp and without)", "its stderr ends:\ncc1: error: this"],
    ),
    "stdout-only": (
        "echo 'license expired'\nexit 3\n",
        2,
        ["exited with status 3", "no stderr, its stdout ends:\nlicense expired"],
    ),
    "no-library": ("exit 0\n", 1, ["exited with status 0 but wrote no library"]),
    "crash": ("kill -SEGV $$\n", 1, ["was killed by SIGSEGV"]),
    "bad-interpreter": ("", 1, ["cannot run `", "No such file or directory"]),
}


@pytest.mark.parametrize("kind", FAILING)
def test_a_failing_compiler_steps_eagerly(monkeypatch, place, built, kind):
    body, runs, says = FAILING[kind]
    if body.startswith("/"):
        cc = body
    else:
        cc = str(script(place, "cc", body))
        if kind == "bad-interpreter":
            (place.bin / "cc").write_text("#!/no/such/interpreter\n")
    monkeypatch.setenv("CC", cc)
    assert_falls_back(place, "building the CPU kernels failed", *says, target(place, built))
    assert len(place.runs) == runs  # once with -fopenmp and once without, where it exits > 0
    assert place.left() == ([], [])  # the build's directory is gone; nothing was cached


def assert_gone(pid_file: Path) -> None:
    """The process whose id ``pid_file`` holds has ended (a zombie if no one reaps it)."""
    stat = Path(f"/proc/{int(pid_file.read_text())}/stat")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if stat.read_text().split(") ")[1][0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.01)
    raise AssertionError(f"{stat} is still running")


def test_a_stuck_compiler_is_killed_with_what_it_started(monkeypatch, place, built):
    monkeypatch.setattr(cpu, "BUILD_TIMEOUT_S", 2.0)
    cc = script(
        place,
        "cc",
        f"""\
        /bin/sleep 60 &
        echo $! > {place.bin}/child
        echo partial > "$TMPDIR/cc0001.o"
        /bin/sleep 60
        """,
    )
    monkeypatch.setenv("CC", str(cc))
    start = time.perf_counter()
    assert_falls_back(place, "did not finish within 2 s and was killed", target(place, built))
    assert time.perf_counter() - start < 30
    assert len(place.runs) == 1  # a stuck compiler is not tried again without -fopenmp
    assert place.left() == ([], [])  # its temporary file went with the build's directory
    assert_gone(place.bin / "child")  # as cc1 would be, under a killed gcc


def test_an_interrupted_build_leaves_nothing_and_is_tried_again(monkeypatch, place, built):
    # Ctrl-C while the first step waits for the compiler: the compiler goes, and so does its
    # directory; nothing is remembered, so the next step builds.
    pid_file = place.bin / "pid"
    cc = script(
        place,
        "cc",
        f"""\
        echo $$ > {pid_file}.new
        /bin/mv {pid_file}.new {pid_file}
        exec /bin/sleep 60
        """,
    )
    monkeypatch.setenv("CC", str(cc))

    def interrupted(process: subprocess.Popen, timeout: float | None = None) -> None:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(subprocess.Popen, "communicate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(place, None, steps=1)
    assert_gone(pid_file)
    assert place.left() == ([], [])
    assert "cpu" not in adafactor.kernels._outcomes
    monkeypatch.setenv("CC", str(copying_compiler(place, built)))
    assert_kernels_ran(place)


def test_anything_else_that_goes_wrong_falls_back(monkeypatch, place):
    def broken() -> str:
        raise ValueError("something unforeseen")

    monkeypatch.setattr(cpu, "_machine", broken)
    assert_falls_back(place, "setting up the CPU kernels failed: ValueError: something unforeseen")


def test_a_compiler_without_openmp_builds_single_threaded(monkeypatch, place, built, caplog):
    # As macOS's clang: "-fopenmp" refused. cpu.c guards OpenMP with #ifdef _OPENMP.
    real = shutil.which("gcc") or shutil.which("cc")
    if real is None:
        pytest.skip("needs gcc or cc")
    caplog.set_level(logging.INFO, logger="adafactor")
    cc = script(
        place,
        "clang",
        f"""\
        case " $* " in *" -fopenmp "*)
            echo "clang: error: unsupported option '-fopenmp'" >&2; exit 1;;
        esac
        exec {real} "$@"
        """,
    )
    monkeypatch.setenv("CC", str(cc))
    assert_kernels_ran(place)
    assert ["-fopenmp" in argv for argv in place.runs] == [True, False]
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1 and "single-threaded" in said[0]
    assert "clang: error: unsupported option '-fopenmp'" in said[0]
    assert place.left() == cached(built)
    assert b"omp_get_thread_num" not in (place.cache / built.name).read_bytes()


# Libraries that do not load, and bad cached files


def test_a_library_that_does_not_load_steps_eagerly(monkeypatch, place, built):
    # A noexec mount: dlopen refuses a file whose bytes are the ones recorded. Simulated with
    # a file dlopen refuses (not a shared object), recorded as it is: not built again.
    monkeypatch.setenv("CC", str(copying_compiler(place, built)))
    place.cache.mkdir()
    path = place.cache / built.name
    path.write_bytes(b"not a shared object\n" * 100)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    cpu._record(path).write_text(f"{digest}  {path.name}\n")
    assert_falls_back(place, f"loading the CPU kernels failed: {path}: ")
    assert place.runs == []
    assert place.left() == cached(built)


def test_a_mapping_refused_by_the_system_steps_eagerly(monkeypatch, place, built):
    # What dlopen says on a noexec mount, for a good library.
    path = cache_built(place, built)

    def refuse(name, *args, **kwargs):
        raise OSError(f"{name}: failed to map segment from shared object")

    monkeypatch.setattr(ctypes, "CDLL", refuse)
    assert_falls_back(place, f"loading the CPU kernels failed: {path}: {path}: failed to map")
    assert place.runs == []


BAD_FILES = {
    "empty": lambda good: b"",
    "garbage": lambda good: bytes(range(256)) * 64,
    "truncated": lambda good: good[: len(good) // 2],
}


@pytest.mark.parametrize("record", ["no-record", "stale-record"])
@pytest.mark.parametrize("bad", BAD_FILES)
def test_a_bad_cached_library_is_built_again_never_loaded(
    monkeypatch, place, built, caplog, bad, record
):
    monkeypatch.setenv("CC", str(copying_compiler(place, built)))
    path = cache_built(place, built)
    path.write_bytes(BAD_FILES[bad](built.path.read_bytes()))
    if record == "no-record":
        cpu._record(path).unlink()
    loaded = []
    load = ctypes.CDLL

    def spy(name, *args, **kwargs):
        loaded.append(hashlib.sha256(Path(name).read_bytes()).hexdigest())
        return load(name, *args, **kwargs)

    monkeypatch.setattr(ctypes, "CDLL", spy)
    assert_kernels_ran(place)
    assert loaded == [built.digest]  # only the rebuilt library was ever mapped
    assert len(place.runs) == 1
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    why = "has no readable checksum record" if record == "no-record" else "does not match"
    assert len(said) == 1 and said[0].startswith(f"adafactor: {path} {why}")
    assert said[0].endswith(": building it again")
    assert place.left() == cached(built)
    assert cpu._mismatch(path) is None


# Caches that cannot be written


def unwritable_cache(monkeypatch: pytest.MonkeyPatch, place: Place, how: str) -> None:
    if how == "read-only":
        place.cache.mkdir(mode=0o500)
        try:
            (place.cache / "probe").touch()
        except PermissionError:
            return
        (place.cache / "probe").unlink()
        pytest.skip("read-only directories are written here (root): see the under-a-file case")
    else:  # where the directory would be, a path through a file: unwritable even for root
        (place.cache.parent / "file").write_text("")
        monkeypatch.setenv("ADAFACTOR_CACHE_DIR", str(place.cache.parent / "file" / "cache"))


@pytest.mark.parametrize("how", ["read-only", "under-a-file"])
def test_an_unwritable_cache_moves_to_the_temporary_directory(
    monkeypatch, place, built, caplog, how
):
    unwritable_cache(monkeypatch, place, how)
    monkeypatch.setenv("CC", str(copying_compiler(place, built)))
    caplog.set_level(logging.INFO, logger="adafactor")
    assert_kernels_ran(place)
    spare = f"adafactor-{os.getuid()}"
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1
    assert said[0].startswith("adafactor: cannot write the CPU kernels' cache (")
    assert said[0].endswith(f"): caching them in {place.tmp / spare}")
    assert place.left() == ([], [spare, f"{spare}/{built.name}", f"{spare}/{built.name}.sha256"])
    # A later process finds the build there: no compiler run, nothing said.
    adafactor.kernels.reset()
    caplog.clear()
    place.runs.clear()
    assert_kernels_ran(place)
    assert place.runs == [] and caplog.records == []


@pytest.mark.parametrize("spare", ["a-file", "shared"])
def test_nowhere_to_cache_builds_for_the_process_and_deletes(
    monkeypatch, place, built, caplog, spare
):
    # The per-user directory in /tmp is taken: by a file, or by a directory others may write
    # (where anyone could have planted a library: it is not even read).
    unwritable_cache(monkeypatch, place, "under-a-file")
    monkeypatch.setenv("CC", str(copying_compiler(place, built)))
    taken = place.tmp / f"adafactor-{os.getuid()}"
    if spare == "a-file":
        taken.write_text("")
    else:
        taken.mkdir(mode=0o777)
        taken.chmod(0o777)
        planted = cache_built(place, built, taken)
        planted.write_bytes(b"planted")
        digest = hashlib.sha256(b"planted").hexdigest()
        cpu._record(planted).write_text(f"{digest}  {planted.name}\n")
    before = place.left()[1]
    assert_kernels_ran(place)
    assert len(place.runs) == 1
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1 and said[0].endswith(" for now")
    assert f"building them in {place.tmp}/adafactor-build-" in said[0]
    assert place.left()[1] == before  # the library was deleted once loaded


# Processes building at once

CHILD = """
import logging
import torch
from adafactor import Adafactor

logging.basicConfig(level=logging.INFO)
def run(fused):
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(37, 29, generator=gen))
    opt = Adafactor([p], beta1=0.9, fused=fused)
    for _ in range(2):
        p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return p
torch.testing.assert_close(run(True), run(False), rtol=1e-5, atol=1e-7)
print("ok")
"""
CHILDREN = 2


def test_processes_building_at_once_all_succeed(monkeypatch, place, built):
    real = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if real is None:
        pytest.skip("needs a C compiler")
    # The real compiler, once every process has started one: they build at once, for sure.
    cc = script(
        place,
        "together",
        f"""\
        touch {place.bin}/compiling.$$
        for _ in $(seq 3000); do
            [ "$(ls {place.bin} | grep -c ^compiling)" -ge {CHILDREN} ] && break
            sleep 0.01
        done
        exec {real} "$@"
        """,
    )
    monkeypatch.setenv("CC", str(cc))
    env = {**os.environ, "PYTHONPATH": str(Path(adafactor.__file__).parents[1])}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(CHILDREN)
    ]
    builds = 0
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0 and out == "ok\n", err
        builds += "built the CPU kernels" in err
    assert builds == CHILDREN
    assert place.left() == cached(built)
    assert cpu._mismatch(place.cache / built.name) is None


# torch.compile


def test_tracing_the_step_touches_no_cached_function_of_the_kernels(monkeypatch, caplog):
    # Dynamo warns of each functools.cache/lru_cache-wrapped function it traces into (once per
    # process: its record of them is emptied here). While tracing, backend_for returns before
    # the kernels' memo or anything cached is reached.
    monkeypatch.setattr(torch._dynamo.utils, "warn_once_cache", set())
    caplog.set_level(logging.WARNING, logger="torch._dynamo")
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    opt = Adafactor(model.parameters(), beta1=0.9)
    step = torch.compile(opt.step, backend="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(4, 6)).square().mean().backward()
            step()
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    kernels = str(Path(cpu.__file__).parent)
    assert not [s for s in said if "cache" in s and kernels in s]
    assert "cpu" not in adafactor.kernels._outcomes
