"""The Triton kernels compile for a real GPU (sm_90, an H100/H200) with the installed Triton,
no GPU needed: the interpreter (test_kernels.py) runs them as Python and accepts code the
compiler refuses. Every compile-time choice is compiled both ways (all on, all off), and every
run-time branch is in both. The tests' own process interprets Triton, so the compiling runs
in a child process (this file run as a script)."""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys

import pytest

FLOAT_POINTERS = {"sums", "scratch", "tile_sums", "partials", "scales", "hp"}
TILE = {"BLOCK_C": 512, "ROWS": 4}
TENSOR = {"BLOCK": 256, "SPLIT": 32}


def _schedule(on: bool) -> dict[str, bool]:
    return dict.fromkeys(("RELATIVE", "WARMUP", "BETA2", "CAP", "GRAD_MOMENTUM"), on)


def _cases(on: bool) -> list:
    from adafactor.kernels import triton_apply, triton_sums

    schedule = _schedule(on)
    apply = {"STEP_MOMENTUM": not on, "MAXIMIZE": on, "STOCHASTIC_ROUNDING": on}
    return [
        (triton_sums.sums_tiles, TILE),
        (triton_sums.sums_tensors, TENSOR),
        (triton_sums.statistics, {**schedule, **TENSOR}),
        (triton_sums.update_sums_tiles, {**schedule, **TILE}),
        (triton_sums.update_sums_tensors, TENSOR),
        (
            triton_apply.apply_scalars,
            {
                **schedule,
                "SCALE_PARAMETER": on,
                "CLIP": on,
                "DECAY_SCALE": 1 if on else 3,
                **TENSOR,
            },
        ),
        (triton_apply.apply_tiles, {**schedule, **apply, **TILE}),
        (triton_apply.commit, TENSOR),
    ]


def compile_all(on: bool) -> None:
    """Compile every kernel for sm_90 (in a process where Triton is not interpreted)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for kernel, constants in _cases(on):
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
        assert "ptx" in compiled.asm, kernel.__name__


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
@pytest.mark.parametrize("on", ["on", "off"])
def test_every_kernel_compiles_for_sm90(on, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile, do not reuse
    done = subprocess.run(
        [sys.executable, __file__, on], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]


if __name__ == "__main__":
    compile_all(sys.argv[1] == "on")
