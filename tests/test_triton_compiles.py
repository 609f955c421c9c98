"""The Triton kernels compile for a real GPU (sm_90, an H100/H200) with the installed Triton,
no GPU needed: the interpreter (test_kernels.py) runs them as Python and accepts code the
compiler refuses. The compile-time constants come from the options table: every kernel is
compiled with each distinct set of its constants that ``compile_flags`` gives for the defaults
and for the packed option sets of every sample (``helpers.packed_option_sets``), which between
them give every flag every value any sample gives it (a test checks it); every run-time branch
is in each. The tests' own process interprets Triton, so the compiling runs in a child process
(this file run as a script)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
from typing import Any

import pytest

from adafactor.options import BY_NAME, DEFAULTS, Hyperparameters
from helpers import option_samples, packed_option_sets

FLOAT_POINTERS = {"sums", "scratch", "tile_sums", "partials", "scales", "hp"}
TILE = {"BLOCK_C": 512, "ROWS": 4}
TENSOR = {"BLOCK": 256, "SPLIT": 32}
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
            constants.update(TILE if "BLOCK_C" in names else TENSOR)
            key = (kernel.fn.__name__, tuple(sorted(constants.items())))
            if key not in seen:
                seen.add(key)
                cases.append((kernel, constants))
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


def compile_all() -> None:
    """Compile every case for sm_90 (in a process where Triton is not interpreted)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

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
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert "ptx" in compiled.asm, (kernel.fn.__name__, constants)


@needs_triton
def test_every_kernel_compiles_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile, do not reuse
    done = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]


if __name__ == "__main__":
    compile_all()
