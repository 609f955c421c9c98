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
from .kernels.plan import Plan
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


class Entry(NamedTuple):
    """One parameter's part in a group step, as the optimizer hands it over (cheap to make:
    no views): ``param``, ``grad`` (contiguous) and ``state`` are the tensors this process
    holds (the local shard of a distributed parameter); ``shape`` and ``dims`` (the factored
    pair, or ``None``) are the whole parameter's; ``key`` is the parameter that names its
    partial sums; ``dtype`` the dtype of its statistics and math; ``stream`` the number that
    tells its stochastic rounding's bits from other parameters' and other shards'."""

    param: Tensor
    grad: Tensor
    state: Mapping[str, Tensor]
    hp: Hyperparameters
    dims: tuple[int, int] | None
    shape: Sequence[int]
    key: Tensor
    dtype: torch.dtype
    stream: int = 0


class TensorStep(NamedTuple):
    """An entry as the eager phases and the kernels' plan read it: ``param``, ``grad`` and
    ``state`` as ``canonical`` views; ``size`` the whole parameter's sizes; ``write_back`` the
    parameter when ``param`` is a contiguous copy of it, to be written back after the step."""

    param: Tensor
    grad: Tensor
    state: TensorState
    hp: Hyperparameters
    size: Size
    dims: tuple[int, int] | None
    write_back: Tensor | None
    dtype: torch.dtype


def tensor_step(entry: Entry) -> TensorStep:
    """``entry``'s views (made only where needed: views cost more than a kernel launch)."""
    param, dims = entry.param, entry.dims
    contiguous = param if param.is_contiguous() else param.contiguous()
    return TensorStep(
        canonical(contiguous, dims),
        canonical(entry.grad, dims),
        TensorState.of(entry.state, dims, entry.stream),
        entry.hp,
        Size.of(entry.shape, dims, entry.hp.rms_per_slice),
        dims,
        None if contiguous is param else param,
        entry.dtype,
    )


class FastPath(NamedTuple):
    """The group kernels a step may use: a backend module, the group's plan and its options
    as given (Python numbers)."""

    backend: ModuleType
    cache: PlanCache
    hp: Hyperparameters


def group_step(
    entries: Sequence[Entry],
    complete: CompleteSums | None = None,
    fast: FastPath | None = None,
    report: bool = True,
) -> list[Applied]:
    """Step every tensor of a group: those the kernels admit together, the others one by one;
    whole (``complete`` is ``None``), or phase by phase, with ``complete`` adding up the
    partial sums of all of them between phases. What each step applied is returned if
    ``report`` (for diagnostics), else nothing. A plan whose tensors did not change is reused
    as it is: no views are made for them."""
    signature: tuple[object, ...] = ()
    chosen = [False] * len(entries)
    if fast is not None:
        signature = kernel_group.entries_signature(entries)
        chosen = _admitted(entries, fast, signature)
    together = [e for e, c in zip(entries, chosen) if c]
    alone = [tensor_step(e) for e, c in zip(entries, chosen) if not c]
    run = plan = None

    def members() -> list[kernel_group.Member]:
        return kernel_members(together)

    if fast is not None and together:
        plan = fast.cache.plan_for(
            signature,
            members,
            [e.grad for e in together],
            together[0].param.device,
            fast.backend.GEOMETRY,
        )
    if complete is None:
        if fast is not None and plan is not None:
            run = kernel_group.kernel_step(fast.backend, fast.cache, plan, fast.hp, members)
        eager = [whole_step(t.param, t.grad, t.state, t.hp, t.size, t.dtype) for t in alone]
    else:
        if fast is not None and plan is not None:
            run = kernel_group.kernel_sums(fast.backend, fast.cache, plan, fast.hp, together)
        local = kernel_group.statistics_local_sums(run) if run else []
        sums = [statistics_sums(t.param, t.grad, t.state, t.hp, t.size, t.dtype) for t in alone]
        others = [e for e, c in zip(entries, chosen) if not c]
        complete(
            local
            + [ls for e, t, s in zip(others, alone, sums) for ls in statistics_local_sums(e, t, s)]
        )
        if run:
            kernel_group.kernel_update_sums(run)
        local = kernel_group.update_local_sums(run) if run else []
        statistics = [
            update_sums(t.grad, s, t.state.momentum, t.hp, t.size) for t, s in zip(alone, sums)
        ]
        complete(
            local
            + [
                ls
                for e, t, s in zip(others, alone, statistics)
                for ls in update_local_sums(e, t, s)
            ]
        )
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


def group_step_again(fast: FastPath, plan: Plan, entries: Callable[[], Sequence[Entry]]) -> None:
    """A group's step again as its last one (``steady.py``): every tensor held whole and taken
    by the kernels, ``plan`` theirs with this step's gradients; ``entries()`` made only should
    the kernels fail to launch and the tensors step eagerly."""
    kernel_group.kernel_step(
        fast.backend, fast.cache, plan, fast.hp, lambda: kernel_members(entries())
    )


def kernel_members(entries: Sequence[Entry]) -> list[kernel_group.Member]:
    """The kernels' view of ``entries`` (made only where needed: views cost more than a kernel
    launch)."""
    return kernel_group.step_members([tensor_step(e) for e in entries])


def _admitted(
    entries: Sequence[Entry], fast: FastPath, signature: tuple[object, ...]
) -> list[bool]:
    """Which entries the kernels take (``kernels.group.admits``), decided again only when
    ``signature`` changed since the last step of this plan."""
    cached = fast.cache.admitted
    if cached is not None and cached[0] == signature:
        return cached[1]
    chosen = [admits(e, fast.backend.DEVICE_TYPE) for e in entries]
    if any(chosen):  # one plan, on one device: tensors on another step eagerly
        device = next(e for e, c in zip(entries, chosen) if c).param.device
        chosen = [c and e.param.device == device for e, c in zip(entries, chosen)]
    fast.cache.admitted = (signature, chosen)
    return chosen


def statistics_local_sums(e: Entry, t: TensorStep, sums: FactoredSums | FullSums) -> list[LocalSum]:
    """Phase 1's partial sums, each with the dims of the parameter it sums over."""
    dims = summed_dims(e.dims, len(e.shape), t.size.per_slice)
    local = [LocalSum(sums.param_sq, e.key, dims["param_sq"])]
    if isinstance(sums, FactoredSums):
        local += [
            LocalSum(sums.row_sq, e.key, dims["row"]),
            LocalSum(sums.col_sq, e.key, dims["col"]),
            LocalSum(sums.total_sq, e.key, dims["total"]),
            LocalSum(sums.old_row_mean, e.key, dims["old_row_mean"]),
        ]
    return local


def update_local_sums(
    e: Entry, t: TensorStep, statistics: FactoredStatistics | FullStatistics
) -> list[LocalSum]:
    """Phase 2's partial sums, each with the dims of the parameter it sums over."""
    dims = summed_dims(e.dims, len(e.shape), t.size.per_slice)
    return [
        LocalSum(statistics.nonfinite, e.key, dims["nonfinite"]),
        LocalSum(statistics.sum_sq_u, e.key, dims["sum_sq_u"]),
    ]
