"""The fast path: a step's phases (``phases.Kernels``) compiled by ``torch.compile``, so
that each pass over a tensor is one generated loop with no full-size temporaries, and a
parameter held whole steps in one compiled call (``whole_step``).

The compiled functions are the same ones the eager path runs, so the math exists once. The
per-step scalars (β̂2_t, ρ_t, α_t, the clipping divisor) are 0-d tensors, options and sizes
enter as symbolic numbers and shapes are dynamic, so training neither recompiles every step
nor once per parameter shape or learning rate.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .phases import EAGER, Kernels

AUTO_MIN_NUMEL = 1 << 22
"""With ``fused=None``, a group is compiled once it holds this many elements: below it the
first step's compile time (seconds) costs more than the eager path over a typical run."""


def can_compile(device: torch.device) -> bool:
    """Whether ``torch.compile`` can generate kernels for ``device`` here: Triton on CUDA, a
    C++ compiler on CPU."""
    return _compiler_at_hand(device.type)


@functools.cache  # looked up at every step: a PATH search costs ~40 µs
def _compiler_at_hand(device_type: str) -> bool:
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    if device_type == "cpu":
        return any(shutil.which(cxx) for cxx in (os.environ.get("CXX", "g++"), "c++", "clang++"))
    return False


def use_fused(setting: bool | None, params: Iterable[Tensor]) -> bool:
    """Resolve a group's ``fused`` option: as given, or (``None``) when it pays and works."""
    if setting is not None:
        return setting
    params = list(params)
    if not params or sum(p.numel() for p in params) < AUTO_MIN_NUMEL:
        return False
    return all(can_compile(device) for device in {p.device for p in params})


COMPILE_FAILURES = (
    torch._dynamo.exc.TorchDynamoException,  # a failed backend, an unsupported construct
    torch._dynamo.exc.FailOnRecompileLimitHit,  # too many variants in one process
)
"""Raised by a compiled kernel's first call for a new variant, before anything runs."""


def _falling_back(compiled: Callable[..., Any], eager: Callable[..., Any]) -> Callable[..., Any]:
    """``compiled``, or ``eager`` for good once compiling fails (before anything ran)."""
    failed = False

    def run(*args: Any) -> Any:
        nonlocal failed
        if not failed:
            try:
                return compiled(*args)
            except COMPILE_FAILURES as error:
                failed = True
                warnings.warn(f"adafactor: compiling the step failed, running eager: {error}")
        return eager(*args)

    return run


RECOMPILE_LIMIT = 64
"""Compiled variants kept per kernel: one per kind of parameter (factored or not) and option
set (momentum, maximize) in use, which can be more than torch's default of 8 in one process."""


def _compiled(kernel: Callable[..., Any]) -> Callable[..., Any]:
    return torch.compile(kernel, fullgraph=True, dynamic=True)


def compile_limits(kernels: Kernels) -> contextlib.AbstractContextManager[Any]:
    """Room for ``RECOMPILE_LIMIT`` variants while ``kernels`` run, if they are compiled:
    entered once per step, not per call (a config patch costs ~12 µs)."""
    if kernels is EAGER:
        return contextlib.nullcontext()
    return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)


@functools.cache
def compiled_kernels(fall_back: bool) -> Kernels:
    """``Kernels`` compiled with ``torch.compile(fullgraph=True, dynamic=True)``, built once
    per process; with ``fall_back``, each runs eagerly if its compilation fails."""
    kernels = Kernels(*(_compiled(k) for k in EAGER))
    if fall_back:
        kernels = Kernels(*(_falling_back(c, e) for c, e in zip(kernels, EAGER)))
    return kernels


def kernels_for(setting: bool | None, params: Iterable[Tensor]) -> Kernels:
    """The kernels a group steps with under its ``fused`` option."""
    params = list(params)
    if not use_fused(setting, params):
        return EAGER
    return compiled_kernels(fall_back=setting is None)
