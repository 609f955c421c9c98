"""A group's step through the group-level kernels: the tensors a backend takes, their plan
(built once, rebuilt when a tensor's storage, shape or dtype changes), and the three phases as
three calls, with the partial sums handed out for completion between them.
"""

from __future__ import annotations

import functools
import operator
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from ..distributed import LocalSum, summed_dims
from ..options import Hyperparameters
from ..phases import (
    Applied,
    Size,
    TensorState,
    statistics_sums,
    whole_step,
)
from ..tiling import canonical
from . import refuse
from .errors import KernelBuildError
from .plan import (
    DTYPE_CODES,
    GRAD_CODES,
    VECTOR_BYTES,
    Access,
    Field,
    Geometry,
    Member,
    Plan,
    build_plan,
)


class Backend(Protocol):
    """A module of group kernels: ``cpu`` or ``triton``."""

    DEVICE_TYPE: str
    GEOMETRY: Geometry

    def make_buffers(self, plan: Plan) -> Any: ...
    def numbers(self, hp: Hyperparameters, device: torch.device) -> Any: ...
    def sums(self, plan: Plan, buffers: Any) -> None: ...
    def update_sums(self, plan: Plan, buffers: Any, numbers: Any) -> None: ...
    def apply(self, plan: Plan, buffers: Any, numbers: Any) -> None: ...
    def sums_of(self, buffers: Any) -> Tensor: ...


STATISTICS = ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq")


def admits(entry: Any, device_type: str) -> bool:
    """The admission rule of the group kernels, one for both backends (C on CPU, Triton on
    CUDA: each reads and writes every tensor through a raw pointer in its own dtype, element
    by element from its start): a ``step.Entry`` is theirs only when every tensor it touches
    is on ``device_type``'s device, contiguous and aligned to its element, the parameter (and
    momentum) float32, bfloat16 or float16 (compensated rounding's residual the parameter's
    dtype), the gradient one of those or float64 (each read in
    its own dtype), and the statistics and their math float32. Any other tensor steps eagerly
    in the same group step; nothing is refused."""
    param, state = entry.param, entry.state
    momentum = state.get("exp_avg")
    tensors = [param, entry.grad, *state.values()]
    return (
        entry.dtype == torch.float32
        and param.dtype in DTYPE_CODES
        and entry.grad.dtype in GRAD_CODES
        and state["step"].dtype == torch.float32
        and state["nonfinite_skips"].dtype == torch.int64
        and all(state[k].dtype == torch.float32 for k in STATISTICS if k in state)
        and (momentum is None or momentum.dtype in DTYPE_CODES)
        and ("residual" not in state or state["residual"].dtype == param.dtype)
        and all(
            x.device == param.device
            and x.is_contiguous()  # a non-contiguous parameter: a contiguous copy steps eagerly
            and x.data_ptr() % x.element_size() == 0
            for x in tensors
        )
        and param.device.type == device_type
    )


def entries_signature(entries: Sequence[Any]) -> tuple[Any, ...]:
    """What ``admits`` and the plan of ``step.Entry``s depend on: every parameter's storage,
    device, layout, shape and dtype, its state's storages (a state tensor converted is a new
    one), its factoring, and its gradient's dtype (a gradient's storage is new every step:
    the plan refreshes it). Equal signatures: the same admission and the same plan."""
    parts: list[Any] = []
    for e in entries:
        param = e.param
        parts += (param.data_ptr(), param.device, param.is_contiguous(), param.dtype)
        parts += (e.dims, e.shape, e.dtype, e.grad.dtype, e.hp.rms_per_slice)
        parts.append(e.grad.data_ptr() % e.grad.element_size() == 0)  # admitted if aligned
        parts += [v.data_ptr() for v in e.state.values()]
    return tuple(parts)


def step_members(steps: Sequence[Any]) -> list[Member]:
    """The plan's members for ``step.TensorStep``s (an entry's views)."""
    return [
        Member(t.param, t.grad, t.state, t.dims, t.size.numel, t.size.n, t.size.m, t.size.per_slice)
        for t in steps
    ]


class PlanCache:
    """One group's plan, kept between steps (by the optimizer, which owns the state), and the
    host buffers that CUDA graphs captured from this group copy from (kept alive for their
    replays)."""

    def __init__(self, geometry: Geometry | None = None) -> None:
        self.geometry = geometry  # the backend's, unless given (tests give small tiles)
        self.signature: tuple[Any, ...] | None = None
        self.admitted: tuple[tuple[Any, ...], list[bool]] | None = None  # signature, choices
        self.plan: Plan | None = None
        self.grads: list[int] = []
        self._vector: list[int] = []  # the tensors read by vectors but for their gradients
        self._misaligned: list[int] = []  # those of them whose gradients were not aligned
        self._grad_column = torch.empty(0, dtype=torch.int64)  # the plan's, on the host
        self._grad_sizes: list[int] = []  # each gradient's element size
        self.held: list[Any] = []
        self._numbers: tuple[Backend, Hyperparameters, Any] | None = None

    def plan_for(
        self,
        signature: tuple[Any, ...],
        members: Callable[[], Sequence[Member]],
        grads: Sequence[Tensor],
        device: torch.device,
        geometry: Geometry,
    ) -> Plan:
        """The plan of ``members()`` in tiles of ``geometry`` (the backend's), rebuilt only if
        ``signature`` (storages, shapes, dtypes) changed or a gradient's alignment moved its
        tiles to another launch; the gradients' pointers (new tensors every step after
        ``zero_grad()``) are refreshed."""
        pointers = list(map(Tensor.data_ptr, grads))
        geometry = self.geometry or geometry
        signature = (*signature, geometry)
        if self.plan is not None and signature == self.signature:
            plan = self.with_gradients(pointers)
            if plan is not None:
                return plan
        built = members()
        self.plan = build_plan(built, geometry, device)
        self.signature, self.grads = signature, pointers
        self._grad_sizes = [m.grad.element_size() for m in built]
        self._vector = [i for i, a in enumerate(self.plan.access) if a == Access.VECTOR]
        self._misaligned = [i for i in self._vector if self.plan.tensors_access[i] != Access.VECTOR]
        self._grad_column = self.plan.host_descriptors[:, Field.GRAD]
        return self.plan

    def with_gradients(self, pointers: list[int]) -> Plan | None:
        """The plan, its gradients' pointers set to ``pointers``; ``None`` (nothing written)
        where a gradient's alignment differs from the plan's (its tiles belong to another
        launch: the plan must be built again). Python's work here does not grow with the
        number of tensors but for reading the list."""
        plan = self.plan
        assert plan is not None
        if pointers == self.grads:
            return plan
        # Mostly every gradient is aligned, as every one was: one pass over the pointers.
        if functools.reduce(operator.or_, pointers) % VECTOR_BYTES or self._misaligned:
            if any(p % size for p, size in zip(pointers, self._grad_sizes)):
                return None  # not even to its element: admitted again, by the whole step
            misaligned = [i for i in self._vector if pointers[i] % VECTOR_BYTES]
            if misaligned != self._misaligned:
                return None
        self.grads = pointers
        self._grad_column.copy_(torch.frombuffer(array("q", pointers), dtype=torch.int64))
        host = plan.host_descriptors
        if plan.descriptors is not host:
            pinned = host.pin_memory()
            plan.descriptors.copy_(pinned, non_blocking=True)
            self.hold(pinned)
        return plan

    def numbers(self, backend: Backend, hp: Hyperparameters, device: torch.device) -> Any:
        """``backend.numbers(hp, device)``, made again only for another backend or options
        object (a scheduler's new ``lr`` is one), or a Tensor ``lr``, which may have been
        filled in place since: the kernels only read them, and making them costs more than a
        small tensor's step (a hook steps one tensor at a time).

        Raises:
            KernelBuildError: as ``backend.numbers`` (nothing kept).
        """
        made = self._numbers
        if made is None or made[0] is not backend or made[1] is not hp or isinstance(hp.lr, Tensor):
            self._numbers = made = (backend, hp, backend.numbers(hp, device))
        return made[2]

    def hold(self, host_buffer: Any) -> None:
        """Keep ``host_buffer`` (or what holds it: a backend's ``Numbers``) alive as long as
        this cache, when a CUDA graph is being captured: the graph copies from that memory at
        every replay, and pinned memory given back to torch's host allocator is handed out
        again (to a ``pin_memory=True`` DataLoader, say), so that replays would read
        another's data as the step's numbers or pointers."""
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            self.held.append(host_buffer)


@dataclass
class KernelRun:
    """What passes between the phases of one step through the kernels; ``eager`` where they
    could not be launched and the tensors step eagerly instead."""

    backend: Backend
    plan: Plan
    buffers: Any
    numbers: Any
    steps: Sequence[Any]
    eager: EagerRun | None = None


@dataclass
class EagerRun:
    """The eager phases of the tensors a plan holds, for a step whose kernels cannot run:
    ``steps`` (``step.TensorStep``s), what the last phase returned for each, and with the
    ``step.Entry``s that name their partial sums where the step goes phase by phase."""

    steps: list[Any]
    results: list[Any]
    entries: Sequence[Any] = ()

    @property
    def whole(self) -> bool:
        """Whether the tensors are held whole: their step is done in phase 1."""
        return not self.entries

    def pairs(self) -> Iterable[tuple[Any, Any]]:
        return zip(self.steps, self.results)

    def triples(self) -> Iterable[tuple[Any, Any, Any]]:
        return zip(self.entries, self.steps, self.results)


def kernel_sums(
    backend: Backend,
    cache: PlanCache,
    plan: Plan,
    hp: Hyperparameters,
    steps: Sequence[Any] = (),
    members: Callable[[], Sequence[Member]] | None = None,
) -> KernelRun:
    """Phase 1 for the tensors of ``plan`` (``statistics_local_sums`` are its partial sums;
    ``steps``, the ``step.Entry``s, name them; else ``members()`` are stepped whole). Where
    the kernels cannot be launched with ``hp``'s flags (found before anything is launched:
    ``backend.numbers``), the tensors step eagerly under ``fused=None`` after one warning,
    and ``fused=True`` raises."""
    try:
        numbers = cache.numbers(backend, hp, plan.descriptors.device)
    except KernelBuildError as error:
        refuse(hp.fused, backend.DEVICE_TYPE, error)
        return _eager_sums(backend, plan, hp, steps, members)
    buffers = backend.make_buffers(plan)
    cache.hold(numbers)
    run = KernelRun(backend, plan, buffers, numbers, steps)
    backend.sums(plan, buffers)
    return run


def kernel_step(
    backend: Backend,
    cache: PlanCache,
    plan: Plan,
    hp: Hyperparameters,
    members: Callable[[], Sequence[Member]],
) -> KernelRun:
    """The three phases back to back, for tensors held whole: ``members()``, the plan's
    (made only should the kernels fail to launch and the tensors step eagerly; not kept, so
    that no gradient outlives its step)."""
    run = kernel_sums(backend, cache, plan, hp, members=members)
    kernel_update_sums(run)
    kernel_apply(run)
    return run


def kernel_update_sums(run: KernelRun) -> None:
    """Phase 2, from complete sums (``update_local_sums`` are its partial sums)."""
    if run.eager is not None:
        if run.eager.whole:
            return
        from ..phases import update_sums

        e = run.eager
        e.results = [update_sums(t.grad, s, t.state.momentum, t.hp, t.size) for t, s in e.pairs()]
        return
    run.backend.update_sums(run.plan, run.buffers, run.numbers)


def statistics_local_sums(run: KernelRun) -> list[LocalSum]:
    """Phase 1's partial sums, to complete across processes before phase 2."""
    names = ("param_sq", "row", "col", "total", "old_row_mean")
    if run.eager is not None:
        return _eager_local_sums(run.eager, names)
    return _local_sums(run, names)


def update_local_sums(run: KernelRun) -> list[LocalSum]:
    """Phase 2's partial sums, to complete across processes before phase 3."""
    names = ("nonfinite", "sum_sq_u")
    if run.eager is not None:
        return _eager_local_sums(run.eager, names)
    return _local_sums(run, names)


def kernel_apply(run: KernelRun) -> None:
    """Phase 3, from complete sums."""
    if run.eager is not None:
        if run.eager.whole:
            return
        from ..phases import apply_update

        e = run.eager
        e.results = [apply_update(t.param, t.grad, s, t.state, t.hp, t.size) for t, s in e.pairs()]
        return
    run.backend.apply(run.plan, run.buffers, run.numbers)


def applied(run: KernelRun) -> list[Applied]:
    """What each tensor's step applied, for diagnostics (views of the run's sums)."""
    if run.eager is not None:
        return list(run.eager.results)
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
    for e, layout in zip(run.steps, run.plan.layouts):
        dims = summed_dims(e.dims, len(e.shape), layout.per_slice)
        out += [LocalSum(layout.view(sums, n), e.key, dims[n]) for n in names if n in dims]
    return out


def _eager_sums(
    backend: Backend,
    plan: Plan,
    hp: Hyperparameters,
    entries: Sequence[Any],
    members: Callable[[], Sequence[Member]] | None,
) -> KernelRun:
    """Phase 1 of the eager step for the tensors of ``plan``: all three phases at once for
    tensors held whole (where ``kernel_update_sums`` and ``kernel_apply`` then do nothing),
    else phase 1, with ``entries`` naming the partial sums."""
    if entries:
        steps = [_EagerStep.of(e) for e in entries]
        sums = [statistics_sums(t.param, t.grad, t.state, t.hp, t.size, t.dtype) for t in steps]
        eager = EagerRun(steps, sums, entries)
    else:
        assert members is not None  # kernel_step's, for tensors held whole
        tensor_hp = hp.as_tensors(plan.descriptors.device, torch.float32)
        results = []
        for m in members():
            size = Size(
                m.whole_numel, m.whole_n, m.whole_m, m.per_slice, max(m.whole_numel, 1) ** -0.5
            )
            # float32: the statistics' dtype of every tensor the kernels admit
            results.append(whole_step(m.param, m.grad, m.state, tensor_hp, size, torch.float32))
        eager = EagerRun([], results)
    return KernelRun(backend, plan, None, None, entries, eager)


class _EagerStep(NamedTuple):
    """A ``step.Entry`` as the eager phases read it (``step.tensor_step``'s views: an admitted
    entry is contiguous)."""

    param: Tensor
    grad: Tensor
    state: TensorState
    hp: Hyperparameters
    size: Size
    dtype: torch.dtype

    @classmethod
    def of(cls, entry: Any) -> _EagerStep:
        dims = entry.dims
        return cls(
            canonical(entry.param, dims),
            canonical(entry.grad, dims),
            TensorState.of(entry.state, dims),
            entry.hp,
            Size.of(entry.shape, dims, entry.hp.rms_per_slice),
            entry.dtype,
        )


def _eager_local_sums(eager: EagerRun, names: Sequence[str]) -> list[LocalSum]:
    """The named partial sums of the eager phases' results, as ``step.py`` hands them on (each
    with the parameter dims it sums over)."""
    fields = {
        "param_sq": "param_sq",
        "row": "row_sq",
        "col": "col_sq",
        "total": "total_sq",
        "old_row_mean": "old_row_mean",
        "nonfinite": "nonfinite",
        "sum_sq_u": "sum_sq_u",
    }
    out = []
    for e, t, result in eager.triples():
        dims = summed_dims(e.dims, len(e.shape), t.size.per_slice)
        out += [
            LocalSum(getattr(result, fields[n]), e.key, dims[n])
            for n in names
            if hasattr(result, fields[n])
        ]
    return out
