"""A parameter group's step: every tensor through the three phases of ``phases.py``.

This is the one route into the group kernels (``kernels/``): the tensors their admission
rule takes (``kernels.group.admits``) step together, each phase one call for all of them; the
others (float64, a non-contiguous parameter, or every tensor with ``fused=False``) step
eagerly, tensor by tensor. Tensors held whole run their three phases at once. Pieces of
tensors split across processes step phase by phase, all of them together, with their partial
sums completed between phases by one batched reduction per phase
(``distributed.complete_sums``). Nothing is kept between calls but the kernels' plan, which
the optimizer holds: what a phase returns is handed to the next.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import NamedTuple

import torch
from torch import Tensor

from .distributed import LocalSum, summed_dims
from .kernels import group as kernel_group
from .kernels.group import PlanCache, admits
from .options import Hyperparameters
from .phases import (
    Applied,
    FactoredStatistics,
    FactoredSums,
    FullStatistics,
    FullSums,
    Size,
    TensorState,
    apply_update,
    statistics_sums,
    update_sums,
    whole_step,
)
from .tiling import canonical

CompleteSums = Callable[[Sequence[LocalSum]], None]
"""Completes partial sums in place (an all-reduce over the processes that hold pieces)."""


class TensorStep(NamedTuple):
    """One tensor's part in a step: ``param``, ``grad`` and ``state`` are ``canonical`` views of
    what this process holds (the local shard of a distributed parameter); ``size`` and ``dims``
    (the factored pair, or ``None``) are the whole parameter's; ``key`` is the parameter that
    names its partial sums; ``write_back`` the parameter when ``param`` is a contiguous copy
    of it, to be written back after the step."""

    param: Tensor
    grad: Tensor
    state: TensorState
    hp: Hyperparameters
    size: Size
    dims: tuple[int, int] | None
    ndim: int
    key: Tensor
    write_back: Tensor | None
    dtype: torch.dtype


def tensor_step(
    param: Tensor,
    grad: Tensor,
    state: Mapping[str, Tensor],
    hp: Hyperparameters,
    dims: tuple[int, int] | None,
    shape: Sequence[int],
    key: Tensor,
    dtype: torch.dtype,
) -> TensorStep:
    """``param``'s part in a step, with ``state`` its state dict (local tensors) and ``dtype``
    the dtype of its statistics and math."""
    contiguous = param if param.is_contiguous() else param.contiguous()
    return TensorStep(
        canonical(contiguous, dims),
        canonical(grad.contiguous(), dims),
        TensorState.of(state, dims),
        hp,
        Size.of(shape, dims, hp.rms_per_slice),
        dims,
        len(shape),
        key,
        None if contiguous is param else param,
        dtype,
    )


class FastPath(NamedTuple):
    """The group kernels a step may use: a backend module, the group's plan and its options
    as given (Python numbers)."""

    backend: ModuleType
    cache: PlanCache
    hp: Hyperparameters


def group_step(
    steps: Sequence[TensorStep],
    complete: CompleteSums | None = None,
    fast: FastPath | None = None,
    report: bool = True,
) -> list[Applied]:
    """Step every tensor of a group: those the kernels take together, the others one by one;
    whole (``complete`` is ``None``), or phase by phase, with ``complete`` adding up the
    partial sums of all of them between phases. What each step applied is returned if
    ``report`` (for diagnostics), else nothing."""
    chosen = [fast is not None and admits(t, fast.backend.DEVICE_TYPE) for t in steps]
    if any(chosen):  # one plan, on one device: tensors on another step eagerly
        device = next(t for t, c in zip(steps, chosen) if c).param.device
        chosen = [c and t.param.device == device for t, c in zip(steps, chosen)]
    together = [t for t, c in zip(steps, chosen) if c]
    alone = [t for t, c in zip(steps, chosen) if not c]
    run = plan = None
    if fast is not None and together:
        plan = fast.cache.plan_for(
            kernel_group.step_signature(together),
            lambda: kernel_group.step_members(together),
            [t.grad for t in together],
            together[0].param.device,
            fast.backend.GEOMETRY,
        )
    if complete is None:
        if fast is not None and plan is not None:
            run = kernel_group.kernel_step(fast.backend, fast.cache, plan, fast.hp)
        eager = [whole_step(t.param, t.grad, t.state, t.hp, t.size, t.dtype) for t in alone]
    else:
        if fast is not None and plan is not None:
            run = kernel_group.kernel_sums(fast.backend, fast.cache, plan, fast.hp, together)
        local = kernel_group.statistics_local_sums(run) if run else []
        sums = [statistics_sums(t.param, t.grad, t.state, t.hp, t.size, t.dtype) for t in alone]
        complete(local + [ls for t, s in zip(alone, sums) for ls in statistics_local_sums(t, s)])
        if run:
            kernel_group.kernel_update_sums(run)
        local = kernel_group.update_local_sums(run) if run else []
        statistics = [
            update_sums(t.grad, s, t.state.momentum, t.hp, t.size) for t, s in zip(alone, sums)
        ]
        complete(local + [ls for t, s in zip(alone, statistics) for ls in update_local_sums(t, s)])
        if run:
            kernel_group.kernel_apply(run)
        eager = [
            apply_update(t.param, t.grad, s, t.state, t.hp, t.size)
            for t, s in zip(alone, statistics)
        ]
    for t in alone:
        if t.write_back is not None:
            t.write_back.copy_(t.param.view(t.write_back.shape))
    if not report:
        return []
    kernel_results = iter(kernel_group.applied(run) if run else [])
    eager_results = iter(eager)
    return [next(kernel_results) if c else next(eager_results) for c in chosen]


def statistics_local_sums(t: TensorStep, sums: FactoredSums | FullSums) -> list[LocalSum]:
    """Phase 1's partial sums, each with the dims of the parameter it sums over."""
    dims = summed_dims(t.dims, t.ndim, t.size.per_slice)
    local = [LocalSum(sums.param_sq, t.key, dims["param_sq"])]
    if isinstance(sums, FactoredSums):
        local += [
            LocalSum(sums.row_sq, t.key, dims["row"]),
            LocalSum(sums.col_sq, t.key, dims["col"]),
            LocalSum(sums.total_sq, t.key, dims["total"]),
            LocalSum(sums.old_row_mean, t.key, dims["old_row_mean"]),
        ]
    return local


def update_local_sums(
    t: TensorStep, statistics: FactoredStatistics | FullStatistics
) -> list[LocalSum]:
    """Phase 2's partial sums, each with the dims of the parameter it sums over."""
    dims = summed_dims(t.dims, t.ndim, t.size.per_slice)
    return [
        LocalSum(statistics.nonfinite, t.key, dims["nonfinite"]),
        LocalSum(statistics.sum_sq_u, t.key, dims["sum_sq_u"]),
    ]
