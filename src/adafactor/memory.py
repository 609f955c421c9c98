"""How many bytes of optimizer state Adafactor keeps, next to what Adam would keep."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .factoring import FactorRule, state_layout


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the tensors in ``optimizer.state`` (any optimizer, after a step)."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, Tensor)
    )


@dataclass(frozen=True)
class StateBytes:
    """Optimizer-state bytes for a set of parameters."""

    adafactor: int
    adam: int

    @property
    def ratio(self) -> float:
        """Adafactor's state as a fraction of Adam's."""
        return self.adafactor / self.adam if self.adam else 0.0


def adam_state_bytes(params: Iterable[Tensor]) -> int:
    """What ``torch.optim.Adam``/``AdamW`` keep: m and v like each parameter, and a step count."""
    return sum(2 * p.numel() * p.element_size() + 4 for p in params)


def state_bytes(
    params: Iterable[Tensor],
    *,
    factored: bool = True,
    factor_dims: FactorRule = "largest",
    min_dim_size_to_factor: int = 2,
    beta1: float | None = None,
    momentum_dtype: torch.dtype | None = None,
    rounding: str = "stochastic",
    **_: Any,
) -> StateBytes:
    """Predict Adafactor's state bytes for ``params`` (works on ``meta`` tensors: nothing is
    allocated), next to Adam's. Takes the same factoring, momentum and rounding options as
    ``Adafactor`` (``rounding="compensated"``: a residual per 16-bit parameter element).
    """
    params = list(params)
    adafactor = sum(
        spec.nbytes
        for p in params
        for spec in state_layout(
            p.shape,
            p.dtype,
            factored=factored,
            factor_dims=factor_dims,
            min_dim_size_to_factor=min_dim_size_to_factor,
            momentum=beta1 is not None,
            momentum_dtype=momentum_dtype,
            compensated=rounding == "compensated",
        ).values()
    )
    return StateBytes(adafactor=adafactor, adam=adam_state_bytes(params))


def memory_rows(params: Iterable[Tensor]) -> list[tuple[str, int]]:
    """``(setting, state bytes)`` for Adam/AdamW and Adafactor's settings, Adam first.

    The bfloat16-momentum row is computed arithmetically (``Adafactor`` keeps momentum in
    float32): the defaults' state plus 2 bytes per parameter element.
    """
    params = list(params)
    defaults = state_bytes(params).adafactor
    return [
        ("Adam / AdamW (m and v)", adam_state_bytes(params)),
        ("Adafactor, defaults (no momentum)", defaults),
        ("Adafactor, beta1=0.9", state_bytes(params, beta1=0.9).adafactor),
        ("Adafactor, beta1=0.9, bf16 momentum", defaults + 2 * sum(p.numel() for p in params)),
        ("Adafactor, factored=False", state_bytes(params, factored=False).adafactor),
    ]


def memory_table(params: Iterable[Tensor]) -> str:
    """A markdown table of optimizer-state bytes: Adam/AdamW against Adafactor's settings, with
    what each setting saves against Adam."""
    params = list(params)
    n = sum(p.numel() for p in params)
    rows = memory_rows(params)
    adam = rows[0][1]
    lines = [
        f"{len(params)} tensors, {n:,} parameters",
        "",
        "| optimizer | state | vs Adam |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {_mib(b)} | {b / adam:.2%} |" for name, b in rows]
    lines += ["", "Saved against Adam / AdamW:"]
    lines += [f"  {name}: {_mib(adam - b)}" for name, b in rows[1:]]
    return "\n".join(lines)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.2f} MiB"
