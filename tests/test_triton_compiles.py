"""The Triton kernels compile for a real GPU (sm_90, an H100/H200) with the installed Triton,
no GPU needed: the interpreter (test_kernels.py) runs them as Python and accepts code the
compiler refuses, and what only the compiled code shows is checked here, on the PTX and the
cubin: no float32 math that flushes subnormals or approximates (the interpreter's numpy keeps
subnormals, a GPU's ``sqrt.approx.ftz`` does not), the registers and local memory (spills) of
each kernel, and vectorised loads.

The compile-time constants come from the options table: every kernel is compiled with each
distinct set of its constants that ``compile_flags`` gives for the defaults and for the packed
option sets of every sample (``helpers.packed_option_sets``), which between them give every
flag every value any sample gives it (a test checks it); every run-time branch is in each.
The tests' own process interprets Triton, so the compiling runs in a child process (this file
run as a script, once per session), which writes what it found to a JSON report.
``ADAFACTOR_EXTRA_TRITON`` (a directory holding another Triton, e.g. one installed there with
``pip install --target DIR triton==3.6.0``) runs the same checks with that Triton too."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adafactor.options import BY_NAME, DEFAULTS, Hyperparameters
from helpers import option_samples, packed_option_sets

FLOAT_POINTERS = {"sums", "scratch", "tile_sums", "job_sums", "scales", "hp"}
TILE_KERNELS = ("sums_tiles", "update_sums_tiles", "apply_tiles")
"""The kernels that stream a group's elements (one program per tile)."""
MAX_REGISTERS = 128
"""Registers per thread a tile kernel may use: at most 128 lets 2 programs of 8 warps share an
SM (16 warps to hide the latency of memory); above, and with spills, fewer."""
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")


def _flags(options: dict[str, Any]) -> dict[str, Any]:
    """The compile-time constants of ``options`` (the others at their defaults), by name."""
    from adafactor.kernels.triton import compile_flags

    flags = compile_flags(Hyperparameters(**{**DEFAULTS, **options}))
    return {name: value for part in flags.values() for name, value in part.items()}


def _configurations() -> list[dict[str, Any]]:
    """The constants of the defaults and of every packed option set: settings the options
    reach, which between them give every flag every value any sample gives it."""
    return [_flags(options) for options in [{}, *packed_option_sets()]]


def _kernels() -> list[Any]:
    """Every kernel the host side launches: the public ``triton.jit`` functions defined in the
    kernel modules (their ``_``-named pieces and the lanes' device functions are inlined)."""
    found = []
    for name in ("adafactor.kernels.triton_sums", "adafactor.kernels.triton_apply"):
        module = importlib.import_module(name)
        for attribute, value in vars(module).items():
            fn = getattr(value, "fn", None)
            if fn is not None and fn.__module__ == name and not attribute.startswith("_"):
                found.append(value)
    return found


def _cases() -> list[tuple[Any, dict[str, Any]]]:
    """Each kernel with each distinct set of its constants over the configurations."""
    cases, seen = [], set()
    for flags in _configurations():
        for kernel in _kernels():
            names = inspect.signature(kernel.fn).parameters
            constants = {k: v for k, v in flags.items() if k in names}
            for access in (0, 1, 2) if "ACCESS" in names else (None,):  # plan.Access
                chosen = constants if access is None else {**constants, "ACCESS": access}
                key = (kernel.fn.__name__, tuple(sorted(chosen.items())))
                if key not in seen:
                    seen.add(key)
                    cases.append((kernel, chosen))
    return cases


@needs_triton
def test_every_compile_time_flag_is_compiled_every_way_the_options_set_it():
    configurations = _configurations()
    taken = {name for kernel in _kernels() for name in inspect.signature(kernel.fn).parameters}
    defaults = _flags({})
    for flag in defaults:
        assert flag in taken, f"{flag}: no kernel takes it"
        # Every value one sample gives (in its context) is among the configurations compiled,
        # and every flag is compiled both ways.
        given = {_flags(options)[flag] for name, _, options in option_samples(edge_cases=True)}
        compiled = {c[flag] for c in configurations}
        assert given <= compiled and len(compiled) >= 2, (flag, given, compiled)
    for name, value, options in option_samples():
        if BY_NAME[name].host_only:
            assert _flags(options) == defaults, f"host-only {name}={value!r} changes a flag"


# --- The child process: compile, and read the PTX and the cubin -----------------------------

FLUSHING = re.compile(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.]*\.(?:ftz|approx)[\w.]*)\s")
"""A PTX instruction that flushes subnormals to zero or approximates its result."""
VECTOR_LOAD = re.compile(r"\bld\.global(?:\.[\w:]+)*\.v[248]\.")
LOC = re.compile(r"^\s*\.loc\s+(\d+)\s+(\d+)\s")
FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"([^"]+)"(?:,\s*"([^"]*)")?')


def _allowed_lines() -> set[tuple[str, int]]:
    """The source lines whose instructions may flush or approximate: ``power``, which forms
    x^y in float64 with libdevice (its float64 routines seed with ``rcp.approx.ftz.f64`` and
    test exponents with ``abs.ftz.f32``, then refine to a correctly rounded result)."""
    from adafactor.kernels import triton_lanes

    lines, first = inspect.getsourcelines(triton_lanes.power.fn)
    return {("triton_lanes.py", first + k) for k in range(len(lines))}


def _flushing(ptx: str) -> list[str]:
    """The flushing or approximate instructions of ``ptx`` outside ``_allowed_lines``, each
    with the source line its ``.loc`` names."""
    lines = ptx.splitlines()
    files = {m[1]: os.path.basename(m[2]) for line in lines if (m := FILE.match(line))}
    allowed = _allowed_lines()
    where = ("?", 0)
    found = []
    for line in lines:
        if m := LOC.match(line):
            where = (files.get(m[1], m[1]), int(m[2]))
        elif (m := FLUSHING.match(line)) and where not in allowed:
            found.append(f"{m[1]} at {where[0]}:{where[1]}")
    return found


def _resources(cubin: bytes, work: Path) -> dict[str, int]:
    """Registers per thread, local memory (spills and stack) and shared memory of the kernel
    in ``cubin``, as ``cuobjdump`` (shipped with Triton beside ``ptxas``) reads them."""
    from triton.backends.nvidia.compiler import get_ptxas

    cuobjdump = Path(get_ptxas(90).path).with_name("cuobjdump")
    path = work / "kernel.cubin"
    path.write_bytes(cubin)
    usage = subprocess.run(
        [str(cuobjdump), "--dump-resource-usage", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return {k.lower(): int(v) for k, v in fields.items()}


def compile_all(report: Path) -> None:
    """Compile every case for sm_90 (in a process where Triton is not interpreted) and write
    what each compiled to: its registers, local and shared memory, vector loads, and any
    flushing or approximate instruction outside ``power``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from adafactor.kernels.triton import warps

    found = []
    for kernel, constants in _cases():
        names = list(inspect.signature(kernel.fn).parameters)
        signature = {
            name: "constexpr"
            if name in constants
            else ("*fp32" if name in FLOAT_POINTERS else "*i32" if name == "seed_at" else "*i64")
            for name in names
        }
        source = ASTSource(
            fn=kernel,
            signature=signature,
            constexprs={(names.index(k),): v for k, v in constants.items()},
        )
        options = {"num_warps": warps(kernel)}  # as the host side launches it
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
        ptx = compiled.asm["ptx"]
        found.append(
            {
                "kernel": kernel.fn.__name__,
                "constants": constants,
                "num_warps": compiled.metadata.num_warps,
                **_resources(compiled.asm["cubin"], report.parent),
                "vector_loads": len(VECTOR_LOAD.findall(ptx)),
                "flushing": _flushing(ptx),
            }
        )
    report.write_text(json.dumps({"triton": triton.__version__, "cases": found}, indent=1))


def _tritons() -> list[str]:
    extra = os.environ.get("ADAFACTOR_EXTRA_TRITON")
    return ["installed", *([extra] if extra else [])]


@pytest.fixture(scope="module", params=_tritons())
def compiled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The report of compiling every case, once per Triton (the installed one, and the one in
    ``ADAFACTOR_EXTRA_TRITON`` if set)."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("needs triton")
    work = tmp_path_factory.mktemp("compiled")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(work / "cache")  # compile, do not reuse
    if request.param != "installed":
        env["PYTHONPATH"] = os.pathsep.join([request.param, env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, __file__, str(work / "report.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((work / "report.json").read_text())


def test_every_kernel_compiles_for_sm90(compiled):
    assert len(compiled["cases"]) == len(_cases())
    assert {c["kernel"] for c in compiled["cases"]} == {k.fn.__name__ for k in _kernels()}


def test_no_float32_math_flushes_subnormals_or_approximates(compiled):
    # A row factor (R_i/mean_r(R))^−½ of an unused embedding row beside rows with |G| ≳ 1e4
    # has a subnormal ratio: flushed to 0 its factor is infinite and 0·inf a NaN, which skips
    # a tensor the eager step updates. Every division and square root is rounded to nearest.
    flushing = {
        (c["kernel"], f) for c in compiled["cases"] for f in c["flushing"]
    }  # the same lines in every case of a kernel
    assert not flushing, sorted(flushing)


def test_no_kernel_spills_and_the_tile_kernels_fit_128_registers(compiled):
    for case in compiled["cases"]:
        where = (case["kernel"], case["constants"])
        assert case["local"] == 0 and case["stack"] == 0, where  # no spills, no stack
        if case["kernel"] in TILE_KERNELS:
            assert case["reg"] <= MAX_REGISTERS, (case["reg"], *where)


def test_aligned_tensors_are_read_several_elements_at_a_time(compiled):
    # The tile kernels compiled for tensors read VECTOR (plan.Access) load and store 16 or 8
    # bytes per instruction; the others one element at a time.
    from adafactor.kernels.plan import Access

    for case in compiled["cases"]:
        if case["kernel"] in TILE_KERNELS:
            vector = case["constants"]["ACCESS"] == Access.VECTOR
            assert (case["vector_loads"] > 0) == vector, (case["kernel"], case["constants"])


if __name__ == "__main__":
    compile_all(Path(sys.argv[1]))
