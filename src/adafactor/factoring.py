"""Which dimensions of a tensor get a factored second moment, and the shapes of its state.

The paper factors an n×m matrix into per-row and per-column statistics (Section 3). A tensor
with more dimensions is treated as a batch of matrices over one chosen pair of dimensions
``(r, c)``, ``r < c``; every other dimension is a batch dimension:

* ``"largest"`` (default, as optax and big_vision): the two largest dimensions. A conv kernel
  ``[256, 128, 3, 3]`` keeps 256·3·3 + 128·3·3 = 3,456 numbers.
* ``"last"`` (as torch, HF and pytorch_optimizer): the last two. The same kernel is factored over
  its 3×3 window and keeps 256·128·3 + 256·128·3 = 196,608 numbers, 57 times as many, and
  two thirds of the 294,912 of a full accumulator.

A tensor is factored only when both chosen dimensions have at least ``min_dim_size_to_factor``
elements. The default of 2 factors every matrix as the paper does, except a 1×m (or n×1) one,
for which the factored estimate equals the full accumulator anyway (``R·C/ΣR = C``) and a full
accumulator is smaller.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch

FactorRule = Literal["largest", "last"]

Function = TypeVar("Function", bound=Callable[..., Any])


def cached(function: Function) -> Function:
    """``functools.cache``, bypassed while ``torch.compile`` traces (Dynamo would warn that it
    ignores the cache, and traces the function anyway)."""
    memo = functools.cache(function)

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return function(*args, **kwargs)
        return memo(*args, **kwargs)

    return call  # type: ignore[return-value]


FACTOR_RULES: tuple[str, ...] = ("largest", "last")


@cached
def factored_dims(
    shape: torch.Size | tuple[int, ...], rule: FactorRule, min_dim_size_to_factor: int
) -> tuple[int, int] | None:
    """The pair ``(r, c)`` (``r < c``) to factor over, or ``None`` for a full accumulator."""
    if len(shape) < 2:
        return None
    if rule == "last":
        r, c = len(shape) - 2, len(shape) - 1
    elif rule == "largest":
        # Stable order on (size, -index): among equal sizes the earlier dims win.
        by_size = sorted(range(len(shape)), key=lambda i: (shape[i], -i))
        r, c = sorted(by_size[-2:])
    else:
        raise ValueError(f"factor_dims must be one of {FACTOR_RULES}, got {rule!r}")
    if min(shape[r], shape[c]) < min_dim_size_to_factor:
        return None
    return r, c


def row_shape(shape: torch.Size | tuple[int, ...], dims: tuple[int, int]) -> tuple[int, ...]:
    """Shape of the row statistics R: the column dimension reduced to 1."""
    return tuple(1 if i == dims[1] else n for i, n in enumerate(shape))


def col_shape(shape: torch.Size | tuple[int, ...], dims: tuple[int, int]) -> tuple[int, ...]:
    """Shape of the column statistics C: the row dimension reduced to 1."""
    return tuple(1 if i == dims[0] else n for i, n in enumerate(shape))


PARAM_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
"""The dtypes a parameter, and its gradient, may have: float8 and other narrow formats have no
arithmetic of their own in torch, so no path could step them."""


SIXTEEN_BITS = (torch.bfloat16, torch.float16)


def state_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """Statistics and math run in float32 for 16-bit parameters, else in the parameter's dtype."""
    return torch.float32 if param_dtype in SIXTEEN_BITS else param_dtype


@dataclass(frozen=True)
class StateSpec:
    """Shape and dtype of one optimizer-state tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@cached  # looked up for every parameter at every step: callers must not mutate it
def state_layout(
    shape: torch.Size | tuple[int, ...],
    param_dtype: torch.dtype,
    *,
    factored: bool,
    factor_dims: FactorRule,
    min_dim_size_to_factor: int,
    momentum: bool,
    momentum_dtype: torch.dtype | None = None,
    compensated: bool = False,
) -> dict[str, StateSpec]:
    """The state Adafactor keeps for one parameter: a step count and a count of skipped
    non-finite steps, factored (R, C) or full second-moment statistics, momentum if on, and
    with ``compensated`` rounding a 16-bit parameter's residual (of its own dtype)."""
    dtype = state_dtype(param_dtype)
    shape = tuple(shape)
    layout = {
        "step": StateSpec((), torch.float32),
        "nonfinite_skips": StateSpec((), torch.int64),
    }
    dims = factored_dims(shape, factor_dims, min_dim_size_to_factor) if factored else None
    if dims is None:
        layout["exp_avg_sq"] = StateSpec(shape, dtype)
    else:
        layout["exp_avg_sq_row"] = StateSpec(row_shape(shape, dims), dtype)
        layout["exp_avg_sq_col"] = StateSpec(col_shape(shape, dims), dtype)
    if momentum:
        layout["exp_avg"] = StateSpec(shape, momentum_dtype or dtype)
    if compensated and param_dtype in SIXTEEN_BITS:
        layout["residual"] = StateSpec(shape, param_dtype)
    return layout
