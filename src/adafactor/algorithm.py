"""The paper's pieces as tensor functions, and the per-tensor step built from them.

Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018,
Algorithms 4 and 5 with the variants of Sections 5–9. For a parameter X with gradient G_t::

    R_t = β̂2_t·R_{t−1} + (1 − β̂2_t)·mean_c(G_t² + ε1)        per-row statistics
    C_t = β̂2_t·C_{t−1} + (1 − β̂2_t)·mean_r(G_t² + ε1)        per-column statistics
    V̂_t = R_t·C_t / mean_r(R_t)                                 rank-1 second moment
    U_t = G_t / √V̂_t
    Û_t = U_t / max(1, RMS(U_t)/d)                              update clipping
    α_t = max(ε2, RMS(X_{t−1}))·ρ_t                             relative step size
    X_t = X_{t−1} − α_t·Û_t

Means rather than the paper's sums give the same V̂ (the factors of m and n cancel) and keep
the statistics on the scale of G². A tensor that is not factored keeps a full
``V̂_t = β̂2_t·V̂_{t−1} + (1 − β̂2_t)·(G_t² + ε1)``.

Every value here stays a tensor (β̂2_t, ρ_t and α_t are 0-d tensors), so a step never waits for
the device and never branches on data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
from torch import Tensor

from .factoring import state_dtype
from .schedules import second_moment_decay, step_size

Momentum = Literal["step", "gradient"]
MOMENTUM_KINDS: tuple[str, ...] = ("step", "gradient")
WeightDecayScale = Literal["rho", "alpha", "lr", "none"]
WEIGHT_DECAY_SCALES: tuple[str, ...] = ("rho", "alpha", "lr", "none")


@dataclass(frozen=True)
class Hyperparameters:
    """One parameter group's options, under the paper's names (see ``Adafactor``)."""

    lr: float
    eps1: float
    eps2: float
    clip_threshold: float | None
    decay_rate: float
    beta1: float | None
    beta2: float | None
    momentum: Momentum
    weight_decay: float
    weight_decay_scale: WeightDecayScale
    relative_step: bool
    warmup_init: bool
    scale_parameter: bool
    maximize: bool

    @classmethod
    def from_group(cls, group: Mapping[str, Any]) -> Hyperparameters:
        """Read the options of a ``torch.optim`` parameter group."""
        eps1, eps2 = group["eps"]
        return cls(
            lr=group["lr"],
            eps1=eps1,
            eps2=eps2,
            clip_threshold=group["clip_threshold"],
            decay_rate=group["decay_rate"],
            beta1=group["beta1"],
            beta2=group["beta2"],
            momentum=group["momentum"],
            weight_decay=group["weight_decay"],
            weight_decay_scale=group["weight_decay_scale"],
            relative_step=group["relative_step"],
            warmup_init=group["warmup_init"],
            scale_parameter=group["scale_parameter"],
            maximize=group["maximize"],
        )


def mean_square(x: Tensor) -> Tensor:
    """``mean(x²)``. Unlike ``norm()``, whose float32 result drifts by ~1e-3 on tensors of tens
    of millions of elements on CPU, the cascaded ``sum`` behind ``mean`` stays within ~1e-7."""
    return x.square().mean()


def rms(x: Tensor) -> Tensor:
    """``RMS(x) = √mean(x²)``."""
    return mean_square(x).sqrt()


def factored_second_moment(
    row: Tensor, col: Tensor, grad: Tensor, beta2_t: Tensor, eps1: float, dims: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """New ``(R_t, C_t)``: decayed means of ``G² + ε1`` over the column and the row dimension."""
    r, c = dims
    grad_sq = grad.square()
    new_row = torch.lerp(row, grad_sq.mean(dim=c, keepdim=True).add_(eps1), 1.0 - beta2_t)
    new_col = torch.lerp(col, grad_sq.mean(dim=r, keepdim=True).add_(eps1), 1.0 - beta2_t)
    return new_row, new_col


def full_second_moment(v: Tensor, grad: Tensor, beta2_t: Tensor, eps1: float) -> Tensor:
    """New ``V̂_t``: the decayed mean of ``G² + ε1``, element by element."""
    return torch.lerp(v, grad.square().add_(eps1), 1.0 - beta2_t)


def factored_rsqrt(row: Tensor, col: Tensor, dims: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Factors ``a, b`` with ``a·b = 1/√V̂``, ``V̂ = R·C/mean_r(R)``, never forming the n×m V̂."""
    return (row / row.mean(dim=dims[0], keepdim=True)).rsqrt(), col.rsqrt()


def clip_update(update: Tensor, clip_threshold: float | None) -> Tensor:
    """``Û = U / max(1, RMS(U)/d)`` (Section 6); ``U`` unchanged when ``d`` is ``None``."""
    if clip_threshold is None:
        return update
    return update / (rms(update) / clip_threshold).clamp(min=1.0)


def parameter_scale(x: Tensor, eps2: float) -> Tensor:
    """``max(ε2, RMS(X))``: the factor that makes the step size relative (Section 8)."""
    return rms(x).clamp(min=eps2)


def adafactor_step(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    hp: Hyperparameters,
    dims: tuple[int, int] | None,
) -> None:
    """One step for one parameter, in place on ``param`` and ``state``.

    ``state`` holds ``step`` (updates applied so far), ``nonfinite_skips``, either
    ``exp_avg_sq_row``/``exp_avg_sq_col`` (factored over ``dims``) or ``exp_avg_sq``, and
    ``exp_avg`` when ``hp.beta1`` is set. A gradient with a NaN or Inf leaves the parameter and
    its state untouched (the step is not counted) and adds one to ``nonfinite_skips``; the
    check is a device-side select, never a host sync.

    With ``hp.momentum == "step"`` (T5X, optax, HF) the momentum is an average of the steps
    ``α_t·Û_t``. With ``"gradient"`` it is Adam's bias-corrected average of the gradients,
    ``m̂_t = m_t/(1 − β1^t)``, normalised by ``√V̂_t`` (Algorithm 1 with V̂ in place of v̂).
    """
    dtype = state_dtype(param.dtype)
    x = param.to(dtype)
    g = grad.to(dtype)
    t = state["step"].to(dtype) + 1.0
    beta2_t = second_moment_decay(t, hp.decay_rate, hp.beta2)
    rho_t = step_size(t, hp.lr, hp.relative_step, hp.warmup_init)
    alpha_t = rho_t * parameter_scale(x, hp.eps2) if hp.scale_parameter else rho_t

    if dims is not None:
        moments = factored_second_moment(
            state["exp_avg_sq_row"], state["exp_avg_sq_col"], g, beta2_t, hp.eps1, dims
        )
        # A NaN or Inf anywhere in G reaches the mean of its row.
        finite = moments[0].isfinite().all()
        row_factor, col_factor = factored_rsqrt(*moments, dims)
        new_state = {"exp_avg_sq_row": moments[0], "exp_avg_sq_col": moments[1]}
    else:
        v = full_second_moment(state["exp_avg_sq"], g, beta2_t, hp.eps1)
        finite = v.isfinite().all()
        row_factor, col_factor = v.rsqrt(), None
        new_state = {"exp_avg_sq": v}

    direction = g
    if hp.beta1 is not None and hp.momentum == "gradient":
        new_state["exp_avg"] = torch.lerp(state["exp_avg"], g, 1.0 - hp.beta1)
        direction = new_state["exp_avg"] / (1.0 - hp.beta1**t)
    update = direction * row_factor
    if col_factor is not None:
        update = update * col_factor
    delta = alpha_t * clip_update(update, hp.clip_threshold)
    if hp.beta1 is not None and hp.momentum == "step":
        new_state["exp_avg"] = delta = torch.lerp(state["exp_avg"], delta, 1.0 - hp.beta1)
    if hp.maximize:
        delta = -delta
    if hp.weight_decay != 0.0:
        decay_scale = {"rho": rho_t, "alpha": alpha_t, "lr": hp.lr, "none": 1.0}
        delta = delta + (hp.weight_decay * decay_scale[hp.weight_decay_scale]) * x

    for key, value in new_state.items():
        state[key].copy_(torch.where(finite, value, state[key]))
    state["step"].add_(finite)
    state["nonfinite_skips"].add_(finite.logical_not())
    param.copy_(torch.where(finite, x - delta, x))
