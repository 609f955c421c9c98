"""How many bytes of optimizer state Adafactor keeps, next to what Adam would keep; and what a
whole training step holds (parameters, gradients, state) in each mode, predicted from shapes."""

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


@dataclass(frozen=True)
class TrainingMemory:
    """What one mode of training holds besides activations: the parameters, the most gradient
    bytes alive at once, and the optimizer state."""

    mode: str
    parameters: int
    gradients: int
    state: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.state


def gradient_bytes(params: Iterable[Tensor]) -> tuple[int, int]:
    """Bytes of all the gradients of ``params`` (each in its parameter's dtype), and of the
    largest one."""
    sizes = [p.numel() * p.element_size() for p in params]
    return sum(sizes), max(sizes, default=0)


def training_memory(params: Iterable[Tensor]) -> list[TrainingMemory]:
    """Predict, from shapes and dtypes alone (``meta`` tensors do), what training holds in each
    mode: AdamW and Adafactor hold every gradient when they step; Adafactor with
    ``step_in_backward=True`` steps each parameter as soon as its gradient is complete and frees
    that gradient, so at most one, the largest, is alive. Activations are left out (they depend
    on the batch, and are the same in every mode), and so are autograd's buffers: a weight used
    more than once in the forward pass (tied embeddings) holds its earlier contributions until
    the last one arrives, in every mode (docs/step_in_backward.md measures it)."""
    params = list(params)
    parameters = sum(p.numel() * p.element_size() for p in params)
    every, largest = gradient_bytes(params)
    adafactor = state_bytes(params).adafactor
    return [
        TrainingMemory("AdamW", parameters, every, adam_state_bytes(params)),
        TrainingMemory("Adafactor", parameters, every, adafactor),
        TrainingMemory("Adafactor, step_in_backward=True", parameters, largest, adafactor),
    ]


def training_table(params: Iterable[Tensor]) -> str:
    """A markdown table of ``training_memory``: each mode's parameters, gradients and state,
    and its total against AdamW's."""
    rows = training_memory(params)
    adamw = rows[0].total
    gradients = ("(all)", "(all)", "(the largest)")
    lines = [
        "| mode | parameters | gradients alive at once | optimizer state | total | vs AdamW |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.mode} | {_mib(r.parameters)} | {_mib(r.gradients)} {which} | {_mib(r.state)} "
        f"| {_mib(r.total)} | {r.total / adamw if adamw else 0:.2%} |"
        for r, which in zip(rows, gradients)
    ]
    return "\n".join(lines)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.2f} MiB"
