"""How a step walks a tensor: as a ``canonical`` view with the factored dims at fixed places,
in row chunks when eager, and with column sums taken block by block.

None of this changes the math (``equations.py``); it decides which elements a pass touches
together, so that every rank of tensor is one shape to the eager phases and to the kernels'
plan (``kernels/plan.py``), an eager pass needs no full-size temporaries, and a column sum
reads memory in order.
"""

from __future__ import annotations

import math
from typing import overload

import torch
from torch import Tensor

ROWS, COLS = 1, 3
"""Where a ``canonical`` view of a factored tensor keeps its rows (the first factored dim) and
its columns (the second)."""


def canonical(tensor: Tensor, dims: tuple[int, int] | None) -> Tensor:
    """``tensor`` viewed as ``(A, n, B, m, C)`` with the factored dims ``(r, c)`` at 1 and 3
    and the others merged around them, or flat when not factored; a view, never a copy."""
    if dims is None:
        return tensor.view(-1)
    r, c, shape = *dims, tensor.shape
    return tensor.view(
        math.prod(shape[:r]),
        shape[r],
        math.prod(shape[r + 1 : c]),
        shape[c],
        math.prod(shape[c + 1 :]),
    )


ROW_BLOCKS = 64
"""Column sums of a matrix with rows to spare are taken in this many blocks of rows, then over
the blocks: a generated loop then stays within one block's memory, where summing down whole
columns strides across all of it."""


def column_sums(x: Tensor) -> Tensor:
    """``x`` viewed as ``(A, n, B, m, C)`` summed over its rows (dim 1), keeping the dim."""
    a, n, b, m, c = x.shape
    if n % ROW_BLOCKS or n < 2 * ROW_BLOCKS:
        return x.sum(dim=1, keepdim=True)
    blocks = x.view(a, ROW_BLOCKS, n // ROW_BLOCKS, b, m, c).sum(dim=2)
    return blocks.sum(dim=1, keepdim=True)


CHUNK_NUMEL = 1 << 20
"""An eager pass takes a tensor this many elements at a time (in whole rows), so that its
temporaries stay near 4 MiB in float32 whatever the size of the parameter."""


Rows = tuple[int, int] | None
"""A run of rows as ``(first, count)``, or ``None`` for all of them."""


def row_chunks(x: Tensor, numel: int = CHUNK_NUMEL) -> list[Rows]:
    """The rows (dim 1 of a factored ``canonical`` view, elements of a flat one) that one
    eager pass over ``x`` takes at a time, about ``numel`` elements; all of them while
    torch.compile traces the step, since a generated loop needs no temporaries."""
    if torch.compiler.is_compiling() or x.numel() <= numel:
        return [None]
    rows = x.shape[1 if x.dim() == 5 else 0]
    per_chunk = max(1, numel * rows // x.numel())
    return [(i, min(per_chunk, rows - i)) for i in range(0, rows, per_chunk)]


@overload
def rows_of(t: Tensor, rows: Rows) -> Tensor: ...
@overload
def rows_of(t: None, rows: Rows) -> None: ...
def rows_of(t: Tensor | None, rows: Rows) -> Tensor | None:
    """Rows ``rows`` of a ``canonical`` tensor, a view; ``t`` itself where it is broadcast over
    rows (size 1 there, or 0-d)."""
    if rows is None or t is None or t.dim() == 0:
        return t
    dim = 1 if t.dim() == 5 else 0
    return t if t.shape[dim] == 1 else t.narrow(dim, *rows)


def element_positions(chunk: Tensor, whole: Tensor) -> Tensor:
    """Where each element of ``chunk``, a view of the contiguous ``whole``, lies in ``whole``'s
    flat order (int64, ``chunk``'s shape), from its offset and strides: no index tensor of
    ``whole``'s size."""
    offset = int(chunk.storage_offset() - whole.storage_offset())
    positions = torch.full((), offset, dtype=torch.int64, device=chunk.device)
    for dim, (size, stride) in enumerate(zip(chunk.shape, chunk.stride())):
        shape = [1] * chunk.dim()
        shape[dim] = size
        positions = positions + torch.arange(size, device=chunk.device).mul_(stride).view(shape)
    return positions.expand(chunk.shape)
