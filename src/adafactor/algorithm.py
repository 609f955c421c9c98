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

A step runs in three phases over all parameters of a group, because two things need every
element of a tensor before anything can be applied: the statistics (sums of G² and X²), then
the normaliser mean_r(R_t) and RMS(U_t) for clipping. ``ParamStep.local_sums`` and
``ParamStep.clipping_sums`` return the partial sums that each phase needs; when a parameter is
split across processes (``distributed.py``) they are completed by one batched all-reduce per
phase before the next phase runs, otherwise they are complete already. Between phases a
parameter keeps only small tensors: full-size intermediates are recomputed, not held.

Every value stays a tensor (β̂2_t, ρ_t and α_t are 0-d tensors), so a step never waits for
the device and never branches on data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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


@dataclass
class Partial:
    """A local partial sum of ``param``'s elements over its dimensions ``dims``; complete
    once summed over every process that holds a piece of those dimensions."""

    value: Tensor
    param: Tensor
    dims: tuple[int, ...]  # of the whole parameter


CompleteSums = Callable[[Sequence[Partial]], None]
"""Completes partial sums in place (all-reduce); does nothing for whole tensors."""


SQUARE_SCALE = 2.0**-32
"""Values are scaled by this before squaring, so that sums of squares of float32 values up
to ~1e28 stay finite (unscaled, ``Σ x²`` overflows float32 from ~1e19/√numel on)."""


def scaled_square(x: Tensor) -> Tensor:
    """``(x·2⁻³²)²``; sums of it are unscaled by ``SQUARE_SCALE⁻²`` where they are used."""
    return (x * SQUARE_SCALE).square_()


def decayed_mean(old: Tensor, mean: Tensor, beta2_t: Tensor, eps1: float) -> Tensor:
    """``β̂2_t·old + (1 − β̂2_t)·(mean + ε1)``: one step of a second-moment statistic."""
    return torch.lerp(old, mean + eps1, 1.0 - beta2_t)


def parameter_scale(scaled_sum_sq_x: Tensor, numel: int, eps2: float) -> Tensor:
    """``max(ε2, RMS(X))`` from ``Σ scaled_square(X)``: what makes the step size relative
    (Section 8)."""
    return ((scaled_sum_sq_x / max(numel, 1)).sqrt() / SQUARE_SCALE).clamp(min=eps2)


def clipping_divisor(sum_sq_u: Tensor, numel: int, clip_threshold: float | None) -> Tensor | float:
    """``max(1, RMS(U)/d)`` from ``Σ U²`` (Section 6); 1 without clipping."""
    if clip_threshold is None:
        return 1.0
    return ((sum_sq_u / max(numel, 1)).sqrt() / clip_threshold).clamp(min=1.0)


def factored_rsqrt(row: Tensor, col: Tensor, row_mean: Tensor) -> tuple[Tensor, Tensor]:
    """``a, b`` with ``a·b = 1/√V̂`` for ``V̂ = R·C/mean_r(R)``, never forming the n×m V̂."""
    return (row / row_mean).rsqrt(), col.rsqrt()


class ParamStep:
    """One parameter's step, carried through the phases (see the module docstring).

    ``param``, ``grad`` and ``state`` are the tensors this process holds (the local shard of
    a distributed parameter); ``shape`` is the whole parameter's shape; ``dims`` the factored
    pair or ``None``; ``key`` the parameter that the partial sums name (default ``param``). ``state`` holds ``step`` (updates applied so far), ``nonfinite_skips``,
    either ``exp_avg_sq_row``/``exp_avg_sq_col`` or ``exp_avg_sq``, and ``exp_avg`` when
    ``hp.beta1`` is set.

    A gradient with a NaN or Inf anywhere, or so large that its square overflows the state's
    dtype (|G| ≳ 1.8e19 in float32), leaves the parameter and its state untouched, the step
    uncounted, and adds one to ``nonfinite_skips``.

    With ``hp.momentum == "step"`` (T5X, optax, HF) the momentum averages the steps
    ``α_t·Û_t``. With ``"gradient"`` it is Adam's bias-corrected average of the gradients,
    ``m̂_t = m_t/(1 − β1^t)``, normalised by ``√V̂_t`` (Algorithm 1 with V̂ in place of v̂).
    """

    def __init__(
        self,
        param: Tensor,
        grad: Tensor,
        state: dict[str, Tensor],
        hp: Hyperparameters,
        dims: tuple[int, int] | None,
        shape: Sequence[int],
        key: Tensor | None = None,
    ) -> None:
        self.param, self.grad, self.state, self.hp, self.dims = param, grad, state, hp, dims
        self.key = param if key is None else key
        self.shape = tuple(shape)
        self.numel = math.prod(self.shape)
        self.dtype = state_dtype(param.dtype)
        self.t = state["step"].to(self.dtype) + 1.0
        self.beta2_t = second_moment_decay(self.t, hp.decay_rate, hp.beta2)
        self.rho_t = step_size(self.t, hp.lr, hp.relative_step, hp.warmup_init)
        self.gradient_momentum = hp.beta1 is not None and hp.momentum == "gradient"

    def _all_dims(self) -> tuple[int, ...]:
        return tuple(range(len(self.shape)))

    def _g(self) -> Tensor:
        return self.grad.to(self.dtype)

    def local_sums(self) -> list[Partial]:
        """Phase 1: ``Σ X²``; when factored, G²'s row sums, column sums and total, and the
        old R's sum over rows (all of squares scaled by ``SQUARE_SCALE²``)."""
        self.sum_sq_x = scaled_square(self.param.to(self.dtype)).sum()
        sums = [Partial(self.sum_sq_x, self.key, self._all_dims())]
        if self.dims is not None:
            r, c = self.dims
            g_sq = scaled_square(self._g())
            self.row_sq = g_sq.sum(dim=c, keepdim=True)
            self.col_sq = g_sq.sum(dim=r, keepdim=True)
            self.total_sq = self.row_sq.sum(dim=r, keepdim=True)
            self.old_row_mean = (self.state["exp_avg_sq_row"] / self.shape[r]).sum(
                dim=r, keepdim=True
            )
            sums += [
                Partial(self.row_sq, self.key, (c,)),
                Partial(self.col_sq, self.key, (r,)),
                Partial(self.total_sq, self.key, (r, c)),
                Partial(self.old_row_mean, self.key, (r,)),
            ]
        return sums

    def _second_moment(self) -> dict[str, Tensor]:
        """The new statistics: ``R_t, C_t`` (small) or ``V̂_t`` (full size, so recomputed)."""
        if self.dims is None:
            g_sq = self._g().square()
            return {
                "exp_avg_sq": decayed_mean(
                    self.state["exp_avg_sq"], g_sq, self.beta2_t, self.hp.eps1
                )
            }
        return self.factored

    def _direction(self) -> Tensor:
        """What is normalised: ``G_t``, or Adam's ``m̂_t``."""
        if self.gradient_momentum:
            m = torch.lerp(self.state["exp_avg"], self._g(), 1.0 - self.hp.beta1)
            return m / (1.0 - self.hp.beta1**self.t)
        return self._g()

    def _update(self) -> Tensor:
        """``U_t = D_t / √V̂_t``, where the factored V̂ is applied as two broadcast factors."""
        if self.dims is None:
            return self._direction() * self._second_moment()["exp_avg_sq"].rsqrt()
        return self._direction() * self.row_factor * self.col_factor

    def clipping_sums(self) -> list[Partial]:
        """Phase 2: ``R_t, C_t`` and mean_r(R_t) from the complete sums, then ``Σ U_t²`` and
        the count of non-finite statistics (not zero when G held a NaN or an Inf, or G²
        overflowed the state's dtype).

        mean_r(R_t) comes from the sums of phase 1 (the decay is linear), so that ``U_t`` is
        formed from factors of order one and ``Σ U_t²`` needs no further round."""
        self.alpha_t = self.rho_t
        if self.hp.scale_parameter:
            self.alpha_t = self.rho_t * parameter_scale(self.sum_sq_x, self.numel, self.hp.eps2)
        if self.dims is None:
            v = self._second_moment()["exp_avg_sq"]
            self.nonfinite = v.isfinite().logical_not().sum(dtype=self.dtype)
        else:
            r, c = self.dims
            n, m, unscale = self.shape[r], self.shape[c], SQUARE_SCALE**-2
            row = decayed_mean(
                self.state["exp_avg_sq_row"],
                self.row_sq * (unscale / m),
                self.beta2_t,
                self.hp.eps1,
            )
            col = decayed_mean(
                self.state["exp_avg_sq_col"],
                self.col_sq * (unscale / n),
                self.beta2_t,
                self.hp.eps1,
            )
            row_mean = decayed_mean(
                self.old_row_mean, self.total_sq * (unscale / (n * m)), self.beta2_t, self.hp.eps1
            )
            self.factored = {"exp_avg_sq_row": row, "exp_avg_sq_col": col}
            self.row_factor, self.col_factor = factored_rsqrt(row, col, row_mean)
            self.nonfinite = sum(
                x.isfinite().logical_not().sum(dtype=self.dtype) for x in (row, col)
            )
        self.sum_sq_u = self._update().square_().sum()
        return [
            Partial(self.nonfinite, self.key, self._all_dims()),
            Partial(self.sum_sq_u, self.key, self._all_dims()),
        ]

    def apply(self) -> None:
        """Phase 3: clip, scale, add momentum and weight decay, and commit where finite."""
        hp = self.hp
        self.finite = finite = self.nonfinite == 0
        new_state = dict(self._second_moment())
        if self.gradient_momentum:
            new_state["exp_avg"] = torch.lerp(self.state["exp_avg"], self._g(), 1.0 - hp.beta1)
        self.update_rms = (self.sum_sq_u / max(self.numel, 1)).sqrt()
        divisor = clipping_divisor(self.sum_sq_u, self.numel, hp.clip_threshold)
        step = self._update() * (self.alpha_t / divisor)
        if hp.beta1 is not None and hp.momentum == "step":
            new_state["exp_avg"] = step = torch.lerp(self.state["exp_avg"], step, 1.0 - hp.beta1)
        if hp.maximize:
            step = -step
        x = self.param.to(self.dtype)
        if hp.weight_decay != 0.0:
            scale = {"rho": self.rho_t, "alpha": self.alpha_t, "lr": hp.lr, "none": 1.0}
            step = step + (hp.weight_decay * scale[hp.weight_decay_scale]) * x

        for key, value in new_state.items():
            torch.where(finite, value, self.state[key], out=self.state[key])
        self.state["step"].add_(finite)
        self.state["nonfinite_skips"].add_(finite.logical_not())
        self.param.copy_(torch.where(finite, x - step, x))


def adafactor_group_step(steps: Sequence[ParamStep], complete: CompleteSums) -> None:
    """Step every parameter of a group: each phase for all of them, then their sums completed
    together (one batched reduction per phase when distributed)."""
    complete([s for step in steps for s in step.local_sums()])
    complete([s for step in steps for s in step.clipping_sums()])
    for step in steps:
        step.apply()


def whole(_: Sequence[Partial]) -> None:
    """``CompleteSums`` for parameters held whole by this process: nothing to add."""
