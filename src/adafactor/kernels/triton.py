"""The group step on CUDA, its host side: Triton kernels that walk the tables of ``plan.py``,
eight launches per group and step however many tensors the group holds (``LAUNCHES`` counts
them). The kernels are in ``triton_sums.py`` (phases 1 and 2) and ``triton_apply.py`` (phase
3), on the device functions of ``triton_lanes.py``.

Each launch takes the whole group: the tile kernels (``sums_tiles``, ``update_sums_tiles``,
``apply_tiles``) have one program per tile, the tensor kernels one program per tensor and
``SPLIT`` slices of it. A data pointer is read from the descriptor table and cast to the
tensor's dtype, chosen at run time (float32, bfloat16, float16). Every sum is reduced in a
fixed order, with no atomics, so a step is deterministic. The group's numbers (lr, ε, β…) are
read from a device tensor and every tensor's step count from its state, so nothing recompiles
when they change and nothing waits for the host; the options that choose what the step does
(momentum, clipping, …) are compile-time constants. The tests run these kernels on CPU
tensors through Triton's interpreter (``TRITON_INTERPRET=1``)."""

from __future__ import annotations

import collections
from typing import Any, NamedTuple

import torch
import triton
from torch import Tensor

from ..options import Hyperparameters
from .plan import HP, Flag, Geometry, Plan
from .plan import flags as plan_flags
from .plan import numbers as plan_numbers
from .triton_apply import apply_scalars, apply_tiles, commit
from .triton_lanes import TILE_SUMS
from .triton_sums import (
    statistics,
    sums_tensors,
    sums_tiles,
    update_sums_tensors,
    update_sums_tiles,
)

DEVICE_TYPE = "cuda"
GEOMETRY = Geometry(rows=512, cols=512)
"""Tiles of 512 × 512: one program's block of columns is 512 wide."""
MAX_SPLIT = 32
"""The most programs per tensor in the tensor kernels (``SPLIT``, each taking every
``SPLIT``-th slice or block): a group's longest statistics decide, once per plan."""

LAUNCHES: collections.Counter[str] = collections.Counter()
"""Kernel launches made, by kernel name (read by the tests)."""


def available() -> bool:
    """Whether the kernels can run: a CUDA device (Triton is imported)."""
    return torch.cuda.is_available()


# --- The host side ------------------------------------------------------------------------------


class Buffers(NamedTuple):
    """What the kernels keep for one step: the sums, the tiles' partial sums and scratch."""

    sums: Tensor
    scratch: Tensor
    tile_sums: Tensor
    partials: Tensor
    scales: Tensor


class Numbers(NamedTuple):
    """A group's numbers on the device, its choices as compile-time flags, a seed, and the
    host buffer the numbers were copied from (pinned on CUDA: a CUDA graph captured from
    this step copies from it at every replay, so it is kept as long as the graph is:
    ``PlanCache.hold``)."""

    numbers: Tensor
    flags: dict[str, Any]
    seed: Tensor
    host: Tensor


def make_buffers(plan: Plan) -> Buffers:
    """Fresh buffers for one step of ``plan`` on its device (each entry written before read)."""
    device = plan.descriptors.device
    tensors = plan.descriptors.shape[0]

    def empty(numel: int) -> Tensor:
        return torch.empty(max(numel, 1), dtype=torch.float32, device=device)

    return Buffers(
        empty(plan.sums_numel),
        empty(plan.scratch_numel),
        empty(plan.tiles.shape[0] * TILE_SUMS),
        empty(tensors * _split(plan)),
        empty(plan.scalars_numel),
    )


def numbers(hp: Hyperparameters, device: torch.device) -> Numbers:
    """``hp`` on ``device`` with no wait: the numbers go through pinned memory, a Tensor
    ``lr`` on the device is copied there on the device; a seed for stochastic rounding is
    drawn on the device."""
    lr_on_device = isinstance(hp.lr, Tensor) and hp.lr.device == device
    values = torch.tensor(
        plan_numbers(hp) if not lr_on_device else _numbers_without_lr(hp), dtype=torch.float32
    )
    if device.type == "cuda":
        values = values.pin_memory()
    on_device = torch.empty(len(HP), dtype=torch.float32, device=device)
    on_device.copy_(values, non_blocking=True)
    if lr_on_device:
        on_device[HP.LR].copy_(hp.lr.detach().reshape(()))  # type: ignore[union-attr]
    if hp.stochastic_rounding:
        seed = torch.randint(0, 2**31 - 1, (1,), device=device, dtype=torch.int32)
    else:
        seed = torch.zeros(1, device=device, dtype=torch.int32)
    return Numbers(on_device, compile_flags(hp), seed, values)


def compile_flags(hp: Hyperparameters) -> dict[str, dict[str, Any]]:
    """``hp``'s choices as the kernels' compile-time constants, by name: ``"schedule"``, those
    every kernel that forms the schedules takes, and ``"apply"``, phase 3's own."""
    choice = plan_flags(hp)
    schedule_flags = {
        "RELATIVE": bool(choice[Flag.RELATIVE_STEP]),
        "WARMUP": bool(choice[Flag.WARMUP_INIT]),
        "BETA2": bool(choice[Flag.BETA2]),
        "CAP": bool(choice[Flag.BETA2_CAP]),
        "GRAD_MOMENTUM": bool(choice[Flag.GRADIENT_MOMENTUM]),
    }
    apply_flags = {
        "SCALE_PARAMETER": bool(choice[Flag.SCALE_PARAMETER]),
        "CLIP": bool(choice[Flag.CLIP]),
        "DECAY_SCALE": choice[Flag.DECAY_SCALE],
        "STEP_MOMENTUM": bool(choice[Flag.STEP_MOMENTUM]),
        "MAXIMIZE": bool(choice[Flag.MAXIMIZE]),
        "STOCHASTIC_ROUNDING": bool(choice[Flag.STOCHASTIC_ROUNDING]),
    }
    return {"schedule": schedule_flags, "apply": apply_flags}


def _numbers_without_lr(hp: Hyperparameters) -> list[float]:
    import dataclasses

    return plan_numbers(dataclasses.replace(hp, lr=0.0))


def sums_of(buffers: Buffers) -> Tensor:
    """The sums that pass between the phases."""
    return buffers.sums


def _launch(kernel: Any, grid: tuple[int, ...], *args: Any, **constants: Any) -> None:
    LAUNCHES[kernel.__name__] += 1
    kernel[grid](*args, **constants)


def _tile_constants(plan: Plan) -> dict[str, int]:
    block_c = triton.next_power_of_2(plan.geometry.cols)
    return {"BLOCK_C": block_c, "ROWS": max(1, 2048 // block_c)}


BLOCK = 256  # lanes of the tensor kernels' loops


def _split(plan: Plan) -> int:
    """Programs per tensor in the tensor kernels: enough for the group's longest statistics
    (``BLOCK`` entries each), a power of two up to ``MAX_SPLIT``."""
    return min(MAX_SPLIT, triton.next_power_of_2(max(1, -(-plan.longest // BLOCK))))


def sums(plan: Plan, buffers: Buffers) -> None:
    """Phase 1 for every tensor of the plan: two launches."""
    tiles, tensors, split = plan.tiles.shape[0], plan.descriptors.shape[0], _split(plan)
    if tiles:
        _launch(
            sums_tiles,
            (tiles,),
            plan.descriptors,
            plan.tiles,
            buffers.sums,
            buffers.scratch,
            buffers.tile_sums,
            **_tile_constants(plan),
        )
    _launch(
        sums_tensors,
        (tensors, split),
        plan.descriptors,
        buffers.sums,
        buffers.scratch,
        buffers.tile_sums,
        BLOCK=BLOCK,
        SPLIT=split,
    )


def update_sums(plan: Plan, buffers: Buffers, options: Numbers) -> None:
    """Phase 2, from complete sums: three launches."""
    tiles, tensors, split = plan.tiles.shape[0], plan.descriptors.shape[0], _split(plan)
    schedule = options.flags["schedule"]
    _launch(
        statistics,
        (tensors, split),
        plan.descriptors,
        buffers.sums,
        buffers.partials,
        options.numbers,
        **schedule,
        BLOCK=BLOCK,
        SPLIT=split,
    )
    if tiles:
        _launch(
            update_sums_tiles,
            (tiles,),
            plan.descriptors,
            plan.tiles,
            buffers.sums,
            buffers.tile_sums,
            options.numbers,
            **schedule,
            **_tile_constants(plan),
        )
    _launch(
        update_sums_tensors,
        (tensors, split),
        plan.descriptors,
        buffers.sums,
        buffers.partials,
        buffers.tile_sums,
        BLOCK=BLOCK,
        SPLIT=split,
    )


def apply(plan: Plan, buffers: Buffers, options: Numbers) -> None:
    """Phase 3, from complete sums: three launches."""
    tiles, tensors, split = plan.tiles.shape[0], plan.descriptors.shape[0], _split(plan)
    schedule, chosen = options.flags["schedule"], options.flags["apply"]
    _launch(
        apply_scalars,
        (tensors, split),
        plan.descriptors,
        buffers.sums,
        buffers.scales,
        plan.scalar_offsets,
        options.numbers,
        **schedule,
        SCALE_PARAMETER=chosen["SCALE_PARAMETER"],
        CLIP=chosen["CLIP"],
        DECAY_SCALE=chosen["DECAY_SCALE"],
        BLOCK=BLOCK,
        SPLIT=split,
    )
    if tiles:
        _launch(
            apply_tiles,
            (tiles,),
            plan.descriptors,
            plan.tiles,
            buffers.sums,
            buffers.scales,
            plan.scalar_offsets,
            options.numbers,
            options.seed,
            **schedule,
            STEP_MOMENTUM=chosen["STEP_MOMENTUM"],
            MAXIMIZE=chosen["MAXIMIZE"],
            STOCHASTIC_ROUNDING=chosen["STOCHASTIC_ROUNDING"],
            **_tile_constants(plan),
        )
    _launch(commit, (tensors, split), plan.descriptors, buffers.sums, BLOCK=BLOCK, SPLIT=split)
