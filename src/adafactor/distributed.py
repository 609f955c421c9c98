"""Adafactor on parameters split across processes: DTensor (FSDP2's ``fully_shard``, tensor
parallel) and the reductions its statistics need.

Each process steps the piece of a parameter it holds. What is local and what is not follows
from the placements: of a row-sharded (``Shard(0)``) matrix the row statistics R are local,
while the column statistics C, ``Σ X²`` (for RMS(X)), ``Σ_r R`` (for mean_r(R)) and
``Σ U²`` (for clipping) are sums over all rows, so every process adds its partial sum to the
others'. The step gathers those partial sums for all parameters of a group and completes them
with one all-reduce per phase and mesh dimension (two phases: the statistics, then the
clipping sums), whatever the number of parameters. DDP needs none of this: its parameters are
whole on every process and its gradients already averaged.

The state follows the parameter: a statistic keeps the parameter's ``Shard(d)`` where it still
spans dim ``d`` and is ``Replicate`` where it was reduced over ``d`` (row statistics of a
``Shard(0)`` matrix are ``Shard(0)``, column statistics ``Replicate``), so
``optimizer.state_dict()`` works with ``torch.distributed.checkpoint``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple, TypeGuard

import torch
import torch.distributed as dist
from torch import Tensor

from .factoring import StateSpec

try:
    from torch.distributed.tensor import DTensor, Placement, Replicate, Shard
except ImportError:  # a torch build without distributed support
    DTensor = None  # type: ignore[assignment,misc]


class LocalSum(NamedTuple):
    """A sum over the elements of ``param`` that this process holds, along the parameter's
    dims ``dims``: the whole parameter's sum once the other processes' are added to it."""

    value: Tensor
    param: Tensor
    dims: tuple[int, ...]


def summed_dims(
    dims: tuple[int, int] | None, ndim: int, per_slice: bool
) -> dict[str, tuple[int, ...]]:
    """The parameter dims that each of one tensor's partial sums adds over (``dims`` its
    factored pair, or ``None``): Σ X² and Σ U_t² over every dim, or over the factored pair
    with ``rms_per_slice``; the count of non-finite values over every dim; R's sums over the
    columns, C's over the rows, their total and mean_r(R_{t−1}) as their names say."""
    every = tuple(range(ndim))
    rms = dims if per_slice and dims is not None else every
    out = {"param_sq": rms, "sum_sq_u": rms, "nonfinite": every}
    if dims is not None:
        r, c = dims
        out |= {"row": (c,), "col": (r,), "total": (r, c), "old_row_mean": (r,)}
    return out


def is_distributed(tensor: Tensor | None) -> TypeGuard[DTensor]:
    """Whether ``tensor`` is a DTensor (a piece of a tensor split across processes)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def local(tensor: Tensor) -> Tensor:
    """The piece of ``tensor`` this process holds (a view: writes go to the DTensor)."""
    return tensor.to_local() if is_distributed(tensor) else tensor


def check_placements(param: Tensor, what: str) -> None:
    """Refuse placements the step cannot complete (``Partial`` parameters or gradients)."""
    for tensor, name in ((param, "parameter"), (param.grad, "gradient")):
        if is_distributed(tensor):
            for placement in tensor.placements:
                if not (placement.is_shard() or placement.is_replicate()):
                    raise ValueError(
                        f"{what}: {name} placement {placement} is not supported; "
                        "Adafactor needs Shard or Replicate placements"
                    )


def zeros_like_state(param: Tensor, spec: StateSpec) -> Tensor:
    """A zero state tensor for ``param``: a DTensor placed like ``param`` where it spans the
    same dims and replicated along dims it reduces over; a plain tensor otherwise."""
    if not is_distributed(param) or spec.shape == ():
        return torch.zeros(spec.shape, dtype=spec.dtype, device=local(param).device)
    placements: list[Placement] = []
    for placement in param.placements:
        if isinstance(placement, Shard) and spec.shape[placement.dim] != param.shape[placement.dim]:
            placements.append(Replicate())
        else:
            placements.append(placement)
    local_shape = tuple(
        1 if size == 1 and full != 1 else local_size
        for size, full, local_size in zip(spec.shape, param.shape, local(param).shape)
    )
    zeros = torch.zeros(local_shape, dtype=spec.dtype, device=local(param).device)
    return DTensor.from_local(
        zeros,
        param.device_mesh,
        placements,
        shape=torch.Size(spec.shape),
        stride=torch.empty(spec.shape, device="meta").stride(),
    )


def complete_sums(sums: Sequence[LocalSum]) -> None:
    """Complete the local sums of DTensor parameters in place: add up each over the mesh
    dimensions that split the dims it sums over, with one all-reduce per process group and
    dtype for the whole batch."""
    buckets: dict[tuple[dist.ProcessGroup, torch.dtype], list[Tensor]] = defaultdict(list)
    for local_sum in sums:
        param = local_sum.param
        if not is_distributed(param):
            continue
        for mesh_dim, placement in enumerate(param.placements):
            if isinstance(placement, Shard) and placement.dim in local_sum.dims:
                group = param.device_mesh.get_group(mesh_dim)
                buckets[(group, local_sum.value.dtype)].append(local_sum.value)
    for (group, _), values in buckets.items():
        flat = torch.cat([v.reshape(-1) for v in values])
        dist.all_reduce(flat, group=group)
        for value, summed in zip(values, flat.split([v.numel() for v in values])):
            value.copy_(summed.view_as(value))


def shard_salt(t: Tensor) -> int:
    """A number of where this process's piece of ``t`` starts in the whole tensor (0 for a
    tensor held whole): pieces that start apart get other numbers, replicas the same."""
    if not is_distributed(t):
        return 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    salt = 0
    for start in offset:
        salt = (salt * 1_000_003 + int(start)) & 0xFFFFFFFF
    return salt
