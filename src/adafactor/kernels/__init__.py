"""Group-level kernels: a parameter group's step as a few calls over all of its tensors, a C
kernel on CPU (``cpu.py``) and Triton kernels on CUDA (``triton.py`` and its kernel modules),
walking the tables of
``plan.py``. They compute what ``phases.py`` defines, and are tested against it and against
``adafactor.reference``.
"""

from __future__ import annotations

import functools
import logging
import warnings
from types import ModuleType

import torch

log = logging.getLogger("adafactor")


@functools.cache
def _backend(device_type: str) -> ModuleType | None:
    """The kernels for ``device_type`` if they can run here (built on first use), else None."""
    if device_type == "cpu":
        from . import cpu

        if not cpu.available():
            return None
        cpu.library()  # build now, so that a failure is seen here, before anything changes
        return cpu
    if device_type == "cuda":
        try:
            from . import triton as triton_kernels
        except ImportError:
            return None
        return triton_kernels if triton_kernels.available() else None
    return None


def backend_for(setting: bool | None, device: torch.device) -> ModuleType | None:
    """The kernels a group on ``device`` steps with under its ``fused`` option: ``None`` for
    the eager step (``fused=False``, no kernels for the device, or while ``torch.compile``
    traces the step, where the eager step is what it can trace).

    Raises:
        RuntimeError: ``fused=True`` and no kernels can run on ``device`` (why, in the message).
    """
    if setting is False or torch.compiler.is_compiling():
        return None
    try:
        backend = _backend(device.type)
    except RuntimeError as error:  # a failed build
        if setting:
            raise
        _warn_once(f"adafactor: the group kernels cannot be built, stepping eagerly: {error}")
        return None
    if backend is None and setting:
        raise RuntimeError(
            f"fused=True: no group kernels for {device.type} here (they need a C compiler on "
            "CPU, Triton on CUDA); use fused=None to fall back to the eager step"
        )
    return backend


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=3)
