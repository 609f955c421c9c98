"""Group-level kernels: a parameter group's step as a few calls over all of its tensors, a C
kernel on CPU (``cpu.py``) and Triton kernels on CUDA (``triton.py`` and its kernel modules),
walking the tables of
``plan.py``. They compute what ``phases.py`` defines, and are tested against it and against
``adafactor.reference``.
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from types import ModuleType

import torch

from .errors import KernelBuildError, KernelBuildWarning

log = logging.getLogger("adafactor")

EAGER_COST = "the same results up to rounding, about 3.5–7× slower per step on CPU"
"""What stepping eagerly instead of with the CPU kernels costs: the eager step's time over the
kernels' in docs/benchmarks.md on the sets of 16.8 M parameters and more (fp32 3.5–4.9×, bf16
3.9–7.1×); 14× on the 0.4 M of demo-char, where the eager step's cost per tensor dominates."""
EAGER_COSTS = {
    "cpu": EAGER_COST,
    "cuda": "the same results up to rounding, several launches per tensor instead of a few "
    "per group (not measured on a GPU yet)",
}
"""What stepping eagerly costs, by device type, for the warning that says so."""

_outcomes: dict[str, ModuleType | KernelBuildError | None] = {}
"""Each device type's kernels as found on first use in this process: the backend module, None
(none can run here), or why they cannot be built or loaded, which is not tried again (a failed
build costs a compiler run). ``reset()`` clears it."""


def _backend(device_type: str) -> ModuleType | None:
    """The kernels for ``device_type`` if they can run here (built or loaded on first use),
    else None.

    Raises:
        KernelBuildError: they should run here but cannot be built or loaded (found once per
            process, then raised again without another try).
    """
    if device_type not in _outcomes:
        try:
            _outcomes[device_type] = _find(device_type)
        except KernelBuildError as error:
            _outcomes[device_type] = error.with_traceback(None)
    outcome = _outcomes[device_type]
    if isinstance(outcome, KernelBuildError):
        raise KernelBuildError(*outcome.args)  # a new one: raising one again grows its traceback
    return outcome


def _find(device_type: str) -> ModuleType | None:
    if device_type == "cpu":
        from . import cpu

        try:
            cpu.library()  # build or load now, so that a failure is seen here, before any change
        except KernelBuildError:
            raise
        except Exception as error:  # whatever else goes wrong, a step can still run eagerly
            raise KernelBuildError(
                f"setting up the CPU kernels failed: {type(error).__name__}: {error}"
            ) from error
        return cpu
    if device_type == "cuda":
        try:
            from . import triton as triton_kernels
        except ImportError:
            return None
        if not triton_kernels.available():
            return None
        # Compiled and launched once now, on a tiny plan, so that a Triton that cannot compile
        # (no C compiler for its launchers, a ptxas error, a module that does not load) is
        # seen here, before any step changes anything.
        triton_kernels.prepare_device(torch.device("cuda", torch.cuda.current_device()))
        return triton_kernels
    return None


def _untried(device: torch.device) -> str | None:
    """Why the kernels for ``device`` are not the default though they may run: ROCm reports
    its GPUs as "cuda", and the Triton kernels have never run on one (``fused=True`` opts
    in)."""
    if device.type == "cuda" and torch.version.hip is not None:
        return "the Triton kernels have not been run on ROCm yet"
    return None


def backend_for(setting: bool | None, device: torch.device) -> ModuleType | None:
    """The kernels a group on ``device`` steps with under its ``fused`` option: ``None`` for
    the eager step (``fused=False``, no kernels for the device, ROCm unless ``fused=True``, or
    while ``torch.compile`` traces the step, where the eager step is what it can trace).
    Where the CPU kernels cannot be built or loaded, ``fused=None`` steps eagerly after one
    ``KernelBuildWarning`` per process saying why.

    Raises:
        RuntimeError: ``fused=True`` and no kernels can run on ``device`` (why, in the message;
            a ``KernelBuildError`` where they cannot be built or loaded).
    """
    # Before anything else: tracing must not reach the memo or a build.
    if setting is False or torch.compiler.is_compiling():
        return None
    if setting is None and _untried(device):
        return None
    try:
        backend = _backend(device.type)
    except KernelBuildError as error:
        refuse(setting, device.type, error)
        return None
    if backend is None and setting:
        raise RuntimeError(
            f"fused=True: no group kernels for {device.type} here (they need a C compiler on "
            "CPU, Triton on CUDA); use fused=None to fall back to the eager step"
        )
    return backend


def refuse(setting: bool | None, device_type: str, error: KernelBuildError) -> None:
    """The rule where the group kernels cannot be built, loaded or launched: under
    ``fused=None`` one ``KernelBuildWarning`` per process and cause, and the caller steps
    eagerly; under ``fused=True`` a ``KernelBuildError`` naming the cause.

    Raises:
        KernelBuildError: ``setting`` is True.
    """
    if setting:
        raise KernelBuildError(f"fused=True: {error}; fused=None steps eagerly instead") from None
    cost = EAGER_COSTS.get(device_type, "the same results up to rounding")
    _warn_once(f"adafactor: the group kernels cannot be built, stepping eagerly ({cost}): {error}")


def reset() -> None:
    """Forget which kernels each device type steps with, and the warnings said, so that the
    next step looks again (builds, loads, warns): for tests, e.g. under another
    ``ADAFACTOR_CACHE_DIR``."""
    from . import cpu

    _outcomes.clear()
    _warn_once.cache_clear()
    cpu.library.cache_clear()
    triton_kernels = sys.modules.get(f"{__name__}.triton")
    if triton_kernels is not None:  # never imported for it: importing triton takes a second
        triton_kernels.forget()


@functools.cache  # once per process and message; never reached while tracing (backend_for)
def _warn_once(message: str) -> None:
    warnings.warn(message, KernelBuildWarning, stacklevel=3)
