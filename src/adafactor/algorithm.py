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
from typing import Any, Literal, NamedTuple

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
    momentum_of: Momentum
    weight_decay: float
    weight_decay_scale: WeightDecayScale
    stochastic_rounding: bool
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
            momentum_of=group["momentum_of"],
            weight_decay=group["weight_decay"],
            weight_decay_scale=group["weight_decay_scale"],
            stochastic_rounding=group["stochastic_rounding"],
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


PARAM_SCALES = (2.0**32, 2.0**-32)
"""``Σ X²`` is summed twice, of X scaled up and of X scaled down: the first is exact for |X|
from ~1e-28 up to ~4e9/√numel, the second, used once the first overflows, up to ~8e28/√numel
(float32 squares alone cover only ~1e-19 to ~1e19/√numel)."""


def scaled_square(x: Tensor, scale: float, dtype: torch.dtype) -> Tensor:
    """``(x·scale)²`` in ``dtype``, a new tensor. G is scaled by ``1/√numel``, so its sums of
    squares are means, never overflow unless G² itself does, and lose only what lies far below
    ε1."""
    return x.to(dtype, copy=True).mul_(scale).square_()


def decayed_mean(old: Tensor, mean: Tensor, beta2_t: Tensor, eps1: float) -> Tensor:
    """``β̂2_t·old + (1 − β̂2_t)·(mean + ε1)``: one step of a second-moment statistic."""
    return torch.lerp(old, mean + eps1, 1.0 - beta2_t)


def parameter_scale(sums_sq_x: Tensor, numel: int, eps2: float) -> Tensor:
    """``max(ε2, RMS(X))`` from the two sums of ``scaled_square(X, PARAM_SCALES[i])``: what
    makes the step size relative (Section 8)."""
    up, down = (sums_sq_x / max(numel, 1)).sqrt().unbind()
    rms = torch.where(up.isfinite(), up / PARAM_SCALES[0], down / PARAM_SCALES[1])
    return rms.clamp(min=eps2)


def clipping_divisor(sum_sq_u: Tensor, numel: int, clip_threshold: float | None) -> Tensor | float:
    """``max(1, RMS(U)/d)`` from ``Σ U²`` (Section 6); 1 without clipping."""
    if clip_threshold is None:
        return 1.0
    return ((sum_sq_u / max(numel, 1)).sqrt() / clip_threshold).clamp(min=1.0)


def factored_rsqrt(row: Tensor, col: Tensor, row_mean: Tensor) -> tuple[Tensor, Tensor]:
    """``a, b`` with ``a·b = 1/√V̂`` for ``V̂ = R·C/mean_r(R)``, never forming the n×m V̂."""
    return (row / row_mean).rsqrt(), col.rsqrt()


class UpdateInputs(NamedTuple):
    """What ``U_t = D_t / √V̂_t`` reads besides ``G_t``: the direction ``D_t`` is ``G_t`` or,
    with Adam-style momentum, ``m̂_t = lerp(m_{t−1}, G_t, 1 − β1)·bias_correction``; V̂ is
    ``row_factor·col_factor`` (factored) or the decayed ``exp_avg_sq`` (full)."""

    exp_avg: Tensor | None
    exp_avg_sq: Tensor | None
    row_factor: Tensor | None
    col_factor: Tensor | None
    beta1: float | None
    bias_correction: Tensor | None
    beta2_t: Tensor
    eps1: float


def adam_momentum(grad: Tensor, u: UpdateInputs) -> Tensor:
    """``m_t = β1·m_{t−1} + (1 − β1)·G_t`` (Adam-style momentum), a new tensor."""
    return torch.lerp(u.exp_avg.to(grad.dtype), grad, 1.0 - u.beta1)


def full_second_moment(grad: Tensor, u: UpdateInputs) -> Tensor:
    """``V̂_t = β̂2_t·V̂_{t−1} + (1 − β̂2_t)·(G_t² + ε1)`` of an unfactored tensor, a new tensor."""
    return decayed_mean(u.exp_avg_sq, grad.square(), u.beta2_t, u.eps1)


def normalized_update(
    grad: Tensor,
    u: UpdateInputs,
    momentum: Tensor | None = None,
    second_moment: Tensor | None = None,
) -> Tensor:
    """``U_t = D_t / √V̂_t`` on the full tensor, a new tensor. ``momentum`` and
    ``second_moment`` are ``m_t`` and a full ``V̂_t`` where the caller has them already."""
    direction = grad
    if u.bias_correction is not None:
        m = adam_momentum(grad, u) if momentum is None else momentum
        direction = m * u.bias_correction
    if u.exp_avg_sq is not None:
        v = full_second_moment(grad, u) if second_moment is None else second_moment
        return v.rsqrt().mul_(direction)
    return (direction * u.row_factor).mul_(u.col_factor)


# The three full-size passes of a step. Everything else in a step is O(n + m) per parameter;
# ``fused.py`` compiles these same functions into loops that read each tensor once per pass.


def square_sums(
    x: Tensor, grad: Tensor, dims: tuple[int, int] | None, grad_scale: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Phase 1: ``Σ X²`` (twice, see ``PARAM_SCALES``) and G²'s sums over columns and over
    rows (squares scaled), in ``dtype`` whatever the dtype of X and G."""
    sum_sq_x = torch.stack([scaled_square(x, scale, dtype).sum() for scale in PARAM_SCALES])
    if dims is None:
        return sum_sq_x, None, None
    r, c = dims
    g_sq = scaled_square(grad, grad_scale, dtype)
    return sum_sq_x, g_sq.sum(dim=c, keepdim=True), g_sq.sum(dim=r, keepdim=True)


def update_square_sum(grad: Tensor, u: UpdateInputs) -> tuple[Tensor, Tensor]:
    """Phase 2: ``Σ U_t²``, and the count of non-finite entries of a full ``V̂_t``."""
    grad = grad.to(u.beta2_t.dtype)
    v = full_second_moment(grad, u) if u.exp_avg_sq is not None else None
    sum_sq_u = normalized_update(grad, u, second_moment=v).square_().sum()
    if v is None:
        return sum_sq_u, sum_sq_u.new_zeros(())
    return sum_sq_u, v.isfinite().logical_not().sum(dtype=sum_sq_u.dtype)


def apply_update(
    param: Tensor,
    grad: Tensor,
    u: UpdateInputs,
    step_scale: Tensor,
    decay: Tensor,
    finite: Tensor,
    step_momentum: bool,
    maximize: bool,
    stochastic_rounding: bool,
) -> None:
    """Phase 3, in place: ``X ← X − step − decay·X`` with ``step = step_scale·U_t`` (or its
    momentum average), and the full-size state, all only where ``finite``; a bfloat16 ``X``
    rounded stochastically if asked."""
    grad = grad.to(u.beta2_t.dtype)
    m = adam_momentum(grad, u) if u.bias_correction is not None else None
    v = full_second_moment(grad, u) if u.exp_avg_sq is not None else None
    step = normalized_update(grad, u, m, v).mul_(step_scale)
    if m is not None:
        commit(finite, m, u.exp_avg)
    if step_momentum:
        step = torch.lerp(u.exp_avg.to(step.dtype), step, 1.0 - u.beta1)
        commit(finite, step, u.exp_avg)
    if v is not None:
        commit(finite, v, u.exp_avg_sq)
    if maximize:
        step.neg_()
    # X_t = X − step − decay·X, formed in place in the step's float32 buffer (X may be 16-bit).
    x_new = step.addcmul_(param, decay).neg_().add_(param)
    torch.where(finite, x_new, param, out=x_new)
    if stochastic_rounding and param.dtype == torch.bfloat16:
        x_new = stochastic_round_to_bfloat16(x_new)
    param.copy_(x_new)


def commit(finite: Tensor, new: Tensor, state: Tensor) -> None:
    """``state ← new`` where ``finite`` (else unchanged), in place and in ``state``'s dtype."""
    if new.dtype == state.dtype:
        torch.where(finite, new, state, out=state)
    else:
        state.copy_(torch.where(finite, new, state.to(new.dtype)))


def stochastic_round_to_bfloat16(x: Tensor) -> Tensor:
    """Round float32 ``x`` to bfloat16 up or down at random, so that ``E[round(x)] = x``: a
    uniform random integer below 2¹⁶ is added to the 16 bits that bfloat16 drops, which are
    then cut. Updates smaller than half a bfloat16 step then move the parameter on average
    instead of being lost."""
    bits = x.view(torch.int32)
    noise = torch.randint_like(bits, 0, 1 << 16)
    return ((bits + noise) & -(1 << 16)).view(torch.float32).to(torch.bfloat16)


class Kernels(NamedTuple):
    """The full-size passes a step runs: these functions as they are, or compiled."""

    square_sums: Callable[..., tuple[Tensor, Tensor | None, Tensor | None]] = square_sums
    update_square_sum: Callable[..., tuple[Tensor, Tensor]] = update_square_sum
    apply_update: Callable[..., None] = apply_update


EAGER = Kernels()


CANONICAL_DIMS = (1, 3)
COUNTERS = ("step", "nonfinite_skips")


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

    With ``hp.momentum_of == "step"`` (T5X, optax, HF) the momentum averages the steps
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
        kernels: Kernels = EAGER,
    ) -> None:
        self.hp, self.dims = hp, dims
        self.key = param if key is None else key
        # Every tensor is seen as (A, n, B, m, C), factored over dims 1 and 3, or flat: two
        # shapes of kernel, whatever the parameters' ranks.
        self.whole_param = param
        self.param = canonical(param if param.is_contiguous() else param.contiguous(), dims)
        self.grad = canonical(grad.contiguous(), dims)
        self.state = {k: v if k in COUNTERS else canonical(v, dims) for k, v in state.items()}
        self.kernels = kernels
        self.shape = tuple(shape)
        self.numel = math.prod(self.shape)
        self.dtype = state_dtype(param.dtype)
        self.t = state["step"].to(self.dtype) + 1.0
        self.beta2_t = second_moment_decay(self.t, hp.decay_rate, hp.beta2)
        self.rho_t = step_size(self.t, hp.lr, hp.relative_step, hp.warmup_init)
        gradient_momentum = hp.beta1 is not None and hp.momentum_of == "gradient"
        self.bias_correction = 1.0 / (1.0 - hp.beta1**self.t) if gradient_momentum else None

    def _all_dims(self) -> tuple[int, ...]:
        return tuple(range(len(self.shape)))

    def _update_inputs(self) -> UpdateInputs:
        return UpdateInputs(
            exp_avg=self.state.get("exp_avg"),
            exp_avg_sq=self.state.get("exp_avg_sq"),
            row_factor=getattr(self, "row_factor", None),
            col_factor=getattr(self, "col_factor", None),
            beta1=self.hp.beta1,
            bias_correction=self.bias_correction,
            beta2_t=self.beta2_t,
            eps1=self.hp.eps1,
        )

    def local_sums(self) -> list[Partial]:
        """Phase 1: ``Σ X²``; when factored, G²'s row sums, column sums and total, and the
        old R's sum over rows (X scaled by ``PARAM_SCALES``, G by ``1/√numel``)."""
        factored = self.dims is not None
        self.sum_sq_x, self.row_sq, col_sq = self.kernels.square_sums(
            self.param,
            self.grad,
            CANONICAL_DIMS if factored else None,
            max(self.numel, 1) ** -0.5,
            self.dtype,
        )
        sums = [Partial(self.sum_sq_x, self.key, self._all_dims())]
        if factored:
            r, c = self.dims
            self.col_sq = col_sq
            self.total_sq = self.row_sq.sum(dim=1, keepdim=True)
            old_row = self.state["exp_avg_sq_row"]
            self.old_row_mean = (old_row / self.shape[r]).sum(dim=1, keepdim=True)
            sums += [
                Partial(self.row_sq, self.key, (c,)),
                Partial(self.col_sq, self.key, (r,)),
                Partial(self.total_sq, self.key, (r, c)),
                Partial(self.old_row_mean, self.key, (r,)),
            ]
        return sums

    def clipping_sums(self) -> list[Partial]:
        """Phase 2: ``R_t, C_t`` and mean_r(R_t) from the complete sums, then ``Σ U_t²`` and
        the count of non-finite statistics (not zero when G held a NaN or an Inf, or G²
        overflowed the state's dtype).

        mean_r(R_t) comes from the sums of phase 1 (the decay is linear), so that ``U_t`` is
        formed from factors of order one and ``Σ U_t²`` needs no further round."""
        hp = self.hp
        self.alpha_t = self.rho_t
        if hp.scale_parameter:
            self.alpha_t = self.rho_t * parameter_scale(self.sum_sq_x, self.numel, hp.eps2)
        nonfinite = []
        if self.dims is not None:
            r, c = self.dims
            n, m, numel = self.shape[r], self.shape[c], self.numel
            row_mean = numel / m * self.row_sq
            col_mean = numel / n * self.col_sq
            total_mean = numel / (n * m) * self.total_sq
            self.row = decayed_mean(self.state["exp_avg_sq_row"], row_mean, self.beta2_t, hp.eps1)
            self.col = decayed_mean(self.state["exp_avg_sq_col"], col_mean, self.beta2_t, hp.eps1)
            mean_r = decayed_mean(self.old_row_mean, total_mean, self.beta2_t, hp.eps1)
            self.row_factor, self.col_factor = factored_rsqrt(self.row, self.col, mean_r)
            nonfinite = [
                x.isfinite().logical_not().sum(dtype=self.dtype) for x in (self.row, self.col)
            ]
        self.sum_sq_u, nonfinite_v = self.kernels.update_square_sum(
            self.grad, self._update_inputs()
        )
        self.nonfinite = sum(nonfinite, nonfinite_v)
        return [
            Partial(self.nonfinite, self.key, self._all_dims()),
            Partial(self.sum_sq_u, self.key, self._all_dims()),
        ]

    def apply(self) -> None:
        """Phase 3: clip, scale, add momentum and weight decay, and commit where finite."""
        hp = self.hp
        # An overflowing Σ U² would make the clipped step 0 while the statistics move on.
        self.finite = finite = (self.nonfinite == 0) & self.sum_sq_u.isfinite()
        self.update_rms = (self.sum_sq_u / max(self.numel, 1)).sqrt()
        step_scale = self.alpha_t / clipping_divisor(self.sum_sq_u, self.numel, hp.clip_threshold)
        decay_scale = {"rho": self.rho_t, "alpha": self.alpha_t, "lr": hp.lr, "none": 1.0}
        decay = self.t.new_tensor(0.0) + hp.weight_decay * decay_scale[hp.weight_decay_scale]
        self.kernels.apply_update(
            self.param,
            self.grad,
            self._update_inputs(),
            step_scale,
            decay,
            finite,
            hp.beta1 is not None and hp.momentum_of == "step",
            hp.maximize,
            hp.stochastic_rounding,
        )
        if self.dims is not None:
            commit(finite, self.row, self.state["exp_avg_sq_row"])
            commit(finite, self.col, self.state["exp_avg_sq_col"])
        self.state["step"].add_(finite)
        self.state["nonfinite_skips"].add_(finite.logical_not())
        if not self.whole_param.is_contiguous():
            self.whole_param.copy_(self.param.view(self.whole_param.shape))


def adafactor_group_step(steps: Sequence[ParamStep], complete: CompleteSums) -> None:
    """Step every parameter of a group: each phase for all of them, then their sums completed
    together (one batched reduction per phase when distributed)."""
    complete([s for step in steps for s in step.local_sums()])
    complete([s for step in steps for s in step.clipping_sums()])
    for step in steps:
        step.apply()


def whole(_: Sequence[Partial]) -> None:
    """``CompleteSums`` for parameters held whole by this process: nothing to add."""
