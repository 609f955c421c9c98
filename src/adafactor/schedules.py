"""The paper's schedules for the second-moment decay β̂2_t and the step size ρ_t.

Every function takes the step number ``t`` (1-based, the number of the update being made) as
a 0-d tensor, so that no value ever has to leave the device and a compiled step never has to
specialise on it; options may be floats or 0-d tensors.

* Section 7.2: the increasing decay ``β̂2_t = 1 − t^(−c)``; with ``c = 1`` V̂ is the plain
  average of all squared gradients so far, and as ``c → 0`` it forgets immediately.
* Section 7.1: Adam's constant ``β2`` with bias correction is the same as
  ``β̂2_t = β2·(1 − β2^(t−1)) / (1 − β2^t)``.
* Not in the paper: a ceiling ``min(cap, β̂2_t)`` (big_vision, pytorch_optimizer), and an offset
  ``t₀`` from which the decay schedule counts (optax, T5X): β̂2 is evaluated at
  ``max(t − t₀, 1)``, so that up to step t₀ + 1 it sits at its first value, 0.
* Section 8: the relative step size ``ρ_t = min(10⁻², 1/√t)`` and its warm-up variant
  ``min(10⁻⁶·t, 1/√t)``. Here the constant ``10⁻²`` is the group's ``lr`` (a learning-rate
  scheduler scales it), so ``ρ_t = min(lr, 1/√t)`` and, with warm-up,
  ``min(lr, 10⁻⁶·t, 1/√t)``; with ``lr = 10⁻²`` both are exactly the paper's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .options import Number

WARMUP_SLOPE = 1e-6
"""Slope of the paper's linear warm-up of the relative step size (Section 8)."""


def decay_rate_beta2(t: Tensor, c: Number) -> Tensor:
    """``β̂2_t = 1 − t^(−c)``: the paper's increasing decay (zero at t = 1)."""
    return 1.0 - t.pow(-c)


def bias_corrected_beta2(t: Tensor, beta2: Number) -> Tensor:
    """``β̂2_t = β2·(1 − β2^(t−1)) / (1 − β2^t)``: Adam's constant β2 with bias correction."""
    return beta2 * (1.0 - beta2 ** (t - 1.0)) / (1.0 - beta2**t)


def second_moment_decay(
    t: Tensor,
    decay_rate: Number,
    beta2: Number | None,
    cap: Number | None = None,
    offset: Number = 0,
) -> Tensor:
    """β̂2_t for a group: Adam-style when ``beta2`` is given, else ``1 − t^(−decay_rate)``;
    evaluated at ``max(t − offset, 1)`` and capped at ``cap`` when one is given."""
    t = (t - offset).clamp(min=1.0)
    beta2_t = decay_rate_beta2(t, decay_rate) if beta2 is None else bias_corrected_beta2(t, beta2)
    return beta2_t if cap is None else beta2_t.clamp(max=cap)


def relative_step_size(t: Tensor, lr: Number, warmup_init: bool) -> Tensor:
    """``ρ_t = min(lr, 1/√t)``, or ``min(lr, 10⁻⁶·t, 1/√t)`` with warm-up."""
    rho = t.rsqrt().clamp(max=lr)
    if warmup_init:
        rho = rho.minimum(WARMUP_SLOPE * t)
    return rho


def rho(t: Tensor, lr: Number, relative_step: bool, warmup_init: bool) -> Tensor:
    """ρ_t for a group: the relative schedule, or the (scheduler-driven) ``lr`` itself."""
    if relative_step:
        return relative_step_size(t, lr, warmup_init)
    return torch.zeros_like(t) + lr
