"""What the group kernels raise, and warn, when they cannot be built or loaded."""

from __future__ import annotations


class KernelBuildError(RuntimeError):
    """The group kernels cannot be built or loaded here; the message says why and names the
    file involved."""


class KernelBuildWarning(RuntimeWarning, UserWarning):
    """The group kernels cannot be built or loaded, so ``fused=None`` steps eagerly: said once
    per process. Also a ``UserWarning``, the category this warning had before, so that filters
    written for it still match."""
