"""A group's step through the group-level kernels: the tensors a backend takes, their plan
(built once, rebuilt when a tensor's storage, shape or dtype changes), and the three phases as
three calls, with the partial sums handed out for completion between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ..distributed import LocalSum
from ..options import Hyperparameters
from ..phases import Applied
from .plan import DTYPE_CODES, Field, Geometry, Member, Plan, build_plan


class Backend(Protocol):
    """A module of group kernels: ``cpu`` or ``triton``."""

    DEVICE_TYPE: str

    def make_buffers(self, plan: Plan) -> Any: ...
    def numbers(self, hp: Hyperparameters, device: torch.device) -> Any: ...
    def sums(self, plan: Plan, buffers: Any) -> None: ...
    def update_sums(self, plan: Plan, buffers: Any, numbers: Any) -> None: ...
    def apply(self, plan: Plan, buffers: Any, numbers: Any) -> None: ...
    def sums_of(self, buffers: Any) -> Tensor: ...


def takes(backend: Backend, step: Any) -> bool:
    """Whether ``backend`` can step this tensor: a contiguous float32, bfloat16 or float16
    parameter on its device, whose state is float32 (momentum in one of those dtypes); the
    others (float64, a non-contiguous parameter, another device) step eagerly in the same
    group step."""
    momentum = step.state.momentum
    return (
        step.param.device.type == backend.DEVICE_TYPE
        and step.write_back is None
        and step.param.dtype in DTYPE_CODES
        and step.dtype == torch.float32
        and (momentum is None or momentum.dtype in DTYPE_CODES)
    )


def _signature(steps: Sequence[Any]) -> tuple[Any, ...]:
    """What the plan depends on: every tensor's storage, shape and dtype, and its state's."""
    parts: list[Any] = []
    for t in steps:
        state = t.state
        second = state.second_moment
        tensors = (t.param, *second, state.step, state.nonfinite_skips, state.momentum)
        parts.append((t.param.shape, t.param.dtype, t.dims, t.size, t.grad.shape))
        parts.extend(x.data_ptr() if x is not None else 0 for x in tensors)
    return tuple(parts)


class PlanCache:
    """One group's plan, kept between steps (by the optimizer, which owns the state)."""

    def __init__(self, geometry: Geometry | None = None) -> None:
        self.geometry = geometry or Geometry()
        self.signature: tuple[Any, ...] | None = None
        self.plan: Plan | None = None
        self.grads: list[int] = []

    def plan_for(self, steps: Sequence[Any], device: torch.device) -> Plan:
        """The plan of ``steps``, rebuilt only if a storage, shape or dtype changed; the
        gradients' pointers (new tensors every step after ``zero_grad()``) are refreshed."""
        signature = _signature(steps)
        if self.plan is None or signature != self.signature:
            members = [
                Member(
                    t.param,
                    t.grad,
                    t.state,
                    t.dims,
                    t.size.numel,
                    t.size.n,
                    t.size.m,
                    t.size.per_slice,
                )
                for t in steps
            ]
            self.plan = build_plan(members, self.geometry, device)
            self.signature = signature
            self.grads = [t.grad.data_ptr() for t in steps]
            return self.plan
        grads = [t.grad.data_ptr() for t in steps]
        if grads != self.grads:
            self.grads = grads
            host = self.plan.host_descriptors
            host[:, Field.GRAD] = torch.tensor(grads, dtype=torch.int64)
            if self.plan.descriptors is not host:
                self.plan.descriptors.copy_(host.pin_memory(), non_blocking=True)
        return self.plan


@dataclass
class KernelRun:
    """What passes between the phases of one step through the kernels."""

    backend: Backend
    plan: Plan
    buffers: Any
    numbers: Any
    steps: Sequence[Any]


def kernel_sums(
    backend: Backend, cache: PlanCache, steps: Sequence[Any], hp: Hyperparameters
) -> KernelRun:
    """Phase 1 for ``steps`` (``statistics_local_sums`` are its partial sums)."""
    device = steps[0].param.device
    plan = cache.plan_for(steps, device)
    buffers = backend.make_buffers(plan)
    run = KernelRun(backend, plan, buffers, backend.numbers(hp, device), steps)
    backend.sums(plan, buffers)
    return run


def kernel_update_sums(run: KernelRun) -> None:
    """Phase 2, from complete sums (``update_local_sums`` are its partial sums)."""
    run.backend.update_sums(run.plan, run.buffers, run.numbers)


def statistics_local_sums(run: KernelRun) -> list[LocalSum]:
    """Phase 1's partial sums, to complete across processes before phase 2."""
    return _local_sums(run, ("param_sq", "row", "col", "total", "old_row_mean"))


def update_local_sums(run: KernelRun) -> list[LocalSum]:
    """Phase 2's partial sums, to complete across processes before phase 3."""
    return _local_sums(run, ("nonfinite", "sum_sq_u"))


def kernel_apply(run: KernelRun) -> list[Applied]:
    """Phase 3, from complete sums; what each tensor's step applied (views of the sums)."""
    run.backend.apply(run.plan, run.buffers, run.numbers)
    sums = run.backend.sums_of(run.buffers)
    return [
        Applied(
            layout.view(sums, "alpha"),
            layout.view(sums, "update_rms"),
            layout.view(sums, "finite") != 0,
        )
        for layout in run.plan.layouts
    ]


def _local_sums(run: KernelRun, names: Sequence[str]) -> list[LocalSum]:
    """The named sums of every tensor as views, each with the parameter dims it sums over
    (as ``step.statistics_local_sums`` names the eager step's)."""
    sums = run.backend.sums_of(run.buffers)
    out = []
    for t, layout in zip(run.steps, run.plan.layouts):
        every = tuple(range(t.ndim))
        rms = t.dims if layout.per_slice and t.dims is not None else every
        r, c = t.dims if t.dims is not None else (0, 0)
        dims = {
            "param_sq": rms,
            "row": (c,),
            "col": (r,),
            "total": (r, c),
            "old_row_mean": (r,),
            "nonfinite": every,
            "sum_sq_u": rms,
        }
        for name in names:
            if name in ("row", "col", "total", "old_row_mean") and not layout.factored:
                continue
            out.append(LocalSum(layout.view(sums, name), t.key, dims[name]))
    return out
