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
the normaliser mean_r(R_t) and RMS(U_t) for clipping. ``statistics_sums`` and ``update_sums``
return the partial sums that each phase needs; when a parameter is split across processes
(``distributed.py``) they are completed by one batched all-reduce per phase before the next
phase runs, otherwise they are complete already. ``apply_update`` then makes the step. Each
phase is one pass over the full-size tensors with the O(n + m) math around it, a pure function
that ``fused.py`` compiles as it is (``whole_step`` runs the three at once for a parameter held
whole); between phases a parameter keeps only small tensors. ``tiling.py`` decides how a pass
walks a tensor: eagerly it goes a few rows at a time, so that no pass allocates more than a
few small chunks.

Every value stays a tensor (β̂2_t, ρ_t and α_t are 0-d tensors), so a step never waits for
the device and never branches on data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from .factoring import state_dtype
from .schedules import Number, second_moment_decay, step_size
from .tiling import CANONICAL_DIMS, Rows, canonical, column_sums, row_chunks, rows_of

Momentum = Literal["step", "gradient"]
MOMENTUM_KINDS: tuple[str, ...] = ("step", "gradient")
WeightDecayScale = Literal["rho", "alpha", "lr", "none"]
WEIGHT_DECAY_SCALES: tuple[str, ...] = ("rho", "alpha", "lr", "none")


@dataclass(frozen=True)
class Hyperparameters:
    """One parameter group's options, under the paper's names (see ``Adafactor``)."""

    lr: Number
    eps1: Number
    eps2: Number
    clip_threshold: Number | None
    decay_rate: Number
    beta1: Number | None
    beta2: Number | None
    momentum_of: Momentum
    weight_decay: Number
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

    def as_tensors(self, device: torch.device, dtype: torch.dtype) -> Hyperparameters:
        """These options with every number a 0-d tensor of ``dtype`` on ``device``, for the
        step: a compiled step then takes them as inputs and recompiles for none of them (a
        learning-rate scheduler changes ``lr`` every step), where it would specialise on a
        Python float that meets a ``clamp`` or a ``pow``."""
        numbers = {name: getattr(self, name) for name in NUMBERS}
        return dataclasses.replace(
            self,
            **{
                name: torch.full((), value, dtype=dtype, device=device)
                for name, value in numbers.items()
                if value is not None
            },
        )


NUMBERS = ("lr", "eps1", "eps2", "clip_threshold", "decay_rate", "beta1", "beta2", "weight_decay")
"""The numeric options of ``Hyperparameters``; the others choose what the step does."""


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


def decayed_mean(old: Tensor, mean: Tensor, beta2_t: Tensor, eps1: Number) -> Tensor:
    """``β̂2_t·old + (1 − β̂2_t)·(mean + ε1)``: one step of a second-moment statistic. ``mean``
    is a fresh tensor that this consumes (ε1 is added to it in place)."""
    return torch.lerp(old, mean.add_(eps1), 1.0 - beta2_t)


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
    beta1: Number | None
    bias_correction: Tensor | None
    beta2_t: Tensor
    eps1: Number

    def rows(self, rows: Rows) -> UpdateInputs:
        """The inputs for rows ``rows`` of the update (see ``rows_of``)."""
        return self._replace(
            exp_avg=rows_of(self.exp_avg, rows),
            exp_avg_sq=rows_of(self.exp_avg_sq, rows),
            row_factor=rows_of(self.row_factor, rows),
            col_factor=rows_of(self.col_factor, rows),
        )


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
        direction = adam_momentum(grad, u) if momentum is None else momentum
    if u.exp_avg_sq is not None:
        v = full_second_moment(grad, u) if second_moment is None else second_moment
        update = v.rsqrt().mul_(direction)
    else:
        update = (direction * u.row_factor).mul_(u.col_factor)
    if u.bias_correction is not None:
        update.mul_(u.bias_correction)  # m̂_t = m_t·bias_correction
    return update


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
    return noise.add_(bits).bitwise_and_(-(1 << 16)).view(torch.float32).to(torch.bfloat16)


def count_nonfinite(x: Tensor) -> Tensor:
    """The number of NaN and infinite entries of ``x``, in ``x``'s dtype (a partial sum)."""
    return x.isfinite().logical_not().sum(dtype=x.dtype)


# What a phase reads and returns. Tensors are ``canonical`` views: ``(A, n, B, m, C)`` with the
# factored dims at ``CANONICAL_DIMS``, or flat.

COUNTERS = ("step", "nonfinite_skips")


class State(NamedTuple):
    """A parameter's state (``canonical`` views); what it does not keep is ``None``."""

    step: Tensor  # updates applied so far
    nonfinite_skips: Tensor
    exp_avg_sq_row: Tensor | None  # R, factored
    exp_avg_sq_col: Tensor | None  # C, factored
    exp_avg_sq: Tensor | None  # V̂, not factored
    exp_avg: Tensor | None  # momentum

    @classmethod
    def of(cls, state: Mapping[str, Tensor], dims: tuple[int, int] | None) -> State:
        """The state dict's tensors as the step sees them."""
        return cls(
            *(state[k] for k in COUNTERS),
            *(
                canonical(state[k], dims) if k in state else None
                for k in ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq", "exp_avg")
            ),
        )


class Size(NamedTuple):
    """The whole parameter's element count and, when factored, its rows ``n`` and columns
    ``m`` (the sizes of its factored dims), whatever piece of it this process holds, and
    ``1/√numel``, the scale of G before squaring (see ``scaled_square``)."""

    numel: int
    n: int
    m: int
    grad_scale: float  # a number, not a formula, so that a compiled pass need not recompute it

    @classmethod
    def of(cls, shape: Sequence[int], dims: tuple[int, int] | None) -> Size:
        """The sizes of a parameter of ``shape`` factored over ``dims``."""
        numel = math.prod(shape)
        n, m = (1, 1) if dims is None else (shape[dims[0]], shape[dims[1]])
        return cls(numel, n, m, max(numel, 1) ** -0.5)


class Schedule(NamedTuple):
    """Step ``t``'s scalars, 0-d tensors: ``β̂2_t``, ``ρ_t`` and, with Adam-style momentum, the
    bias correction ``1/(1 − β1^t)``."""

    t: Tensor
    beta2_t: Tensor
    rho_t: Tensor
    bias_correction: Tensor | None


def schedule(step: Tensor, hp: Hyperparameters, dtype: torch.dtype) -> Schedule:
    """The schedules at ``t = step + 1``, in ``dtype``."""
    t = step.to(dtype) + 1.0
    gradient_momentum = hp.beta1 is not None and hp.momentum_of == "gradient"
    return Schedule(
        t,
        second_moment_decay(t, hp.decay_rate, hp.beta2),
        step_size(t, hp.lr, hp.relative_step, hp.warmup_init),
        1.0 / (1.0 - hp.beta1**t) if gradient_momentum else None,
    )


class Sums(NamedTuple):
    """Phase 1's partial sums: ``Σ X²`` (at each of ``PARAM_SCALES``) and, when factored,
    ``(G/√numel)²`` summed over columns, over rows and over both, and ``Σ_r R_{t−1}/n``."""

    sum_sq_x: Tensor
    row_sq: Tensor | None
    col_sq: Tensor | None
    total_sq: Tensor | None
    old_row_mean: Tensor | None


class Statistics(NamedTuple):
    """Phase 2's results: ``R_t``, ``C_t`` and the factors of ``1/√V̂_t`` (factored), and the
    partial sums ``Σ U_t²`` and count of non-finite statistics."""

    row: Tensor | None
    col: Tensor | None
    row_factor: Tensor | None
    col_factor: Tensor | None
    sum_sq_u: Tensor
    nonfinite: Tensor


class Applied(NamedTuple):
    """What phase 3 applied: ``α_t``, ``RMS(U_t)``, whether the step was taken (every
    statistic finite), the scale of ``Û_t`` in the step, ``α_t/max(1, RMS(U_t)/d)``, and the
    weight decay factor."""

    alpha_t: Tensor
    update_rms: Tensor
    finite: Tensor
    # Returned so that a compiled pass loads them rather than recomputing them per element.
    step_scale: Tensor
    decay: Tensor


# The three phases of a step, each one pass over the full-size tensors and the O(n + m) math
# around it. ``fused.py`` compiles these same functions, and ``whole_step``, which runs all three.


def statistics_sums(
    x: Tensor, grad: Tensor, state: State, hp: Hyperparameters, size: Size, dtype: torch.dtype
) -> tuple[Schedule, Sums]:
    """Phase 1: this step's ``schedule`` and the partial sums that the statistics and RMS(X)
    need (see ``Sums``), in ``dtype`` whatever the dtype of X and G."""
    chunks = row_chunks(x)
    sum_sq_x = sum(
        torch.stack([scaled_square(rows_of(x, rows), k, dtype).sum() for k in PARAM_SCALES])
        for rows in chunks
    )
    s = schedule(state.step, hp, dtype)
    if state.exp_avg_sq_row is None:
        return s, Sums(sum_sq_x, None, None, None, None)
    r, c = CANONICAL_DIMS
    row_sq, col_sq = [], []
    for rows in chunks:
        g_sq = scaled_square(rows_of(grad, rows), size.grad_scale, dtype)
        row_sq.append(g_sq.sum(dim=c, keepdim=True))
        col_sq.append(column_sums(g_sq))
        del g_sq  # before the next chunk's is made
    row_sq = torch.cat(row_sq, dim=r) if len(row_sq) > 1 else row_sq[0]
    return s, Sums(
        sum_sq_x,
        row_sq,
        sum(col_sq[1:], col_sq[0]),
        row_sq.sum(dim=r, keepdim=True),
        (state.exp_avg_sq_row / size.n).sum(dim=r, keepdim=True),
    )


def update_sums(
    grad: Tensor, state: State, s: Schedule, sums: Sums, hp: Hyperparameters, size: Size
) -> Statistics:
    """Phase 2, from phase 1's complete sums: ``R_t, C_t`` and mean_r(R_t), then ``Σ U_t²``
    and the count of non-finite statistics (not zero when G held a NaN or an Inf, or G²
    overflowed the state's dtype).

    mean_r(R_t) comes from the sums of phase 1 (the decay is linear), so that ``U_t`` is
    formed from factors of order one and ``Σ U_t²`` needs no further round."""
    dtype = sums.sum_sq_x.dtype
    row = col = row_factor = col_factor = None
    nonfinite = sums.sum_sq_x.new_zeros(())
    if sums.row_sq is not None:
        numel, n, m = size.numel, size.n, size.m
        row = decayed_mean(state.exp_avg_sq_row, numel / m * sums.row_sq, s.beta2_t, hp.eps1)
        col = decayed_mean(state.exp_avg_sq_col, numel / n * sums.col_sq, s.beta2_t, hp.eps1)
        mean_r = decayed_mean(
            sums.old_row_mean, numel / (n * m) * sums.total_sq, s.beta2_t, hp.eps1
        )
        row_factor, col_factor = factored_rsqrt(row, col, mean_r)
        nonfinite = count_nonfinite(row) + count_nonfinite(col)
    u = update_inputs(state, s, row_factor, col_factor, hp)
    sum_sq_u = sums.sum_sq_x.new_zeros(())
    for rows in row_chunks(grad):
        g, u_rows = widened(rows_of(grad, rows), u, dtype), u.rows(rows)
        v = full_second_moment(g, u_rows) if u.exp_avg_sq is not None else None
        sum_sq_u = sum_sq_u + normalized_update(g, u_rows, second_moment=v).square_().sum()
        if v is not None:
            nonfinite = nonfinite + count_nonfinite(v)
        del g, v  # before the next chunk's are made
    return Statistics(row, col, row_factor, col_factor, sum_sq_u, nonfinite)


def apply_update(
    param: Tensor,
    grad: Tensor,
    state: State,
    s: Schedule,
    sums: Sums,
    statistics: Statistics,
    hp: Hyperparameters,
    size: Size,
) -> Applied:
    """Phase 3, in place, from the complete sums: clip, scale, add momentum and weight decay,
    ``X ← X − step − decay·X``, and commit the state, all only where every statistic is
    finite (else count a skip); a bfloat16 ``X`` rounded stochastically if asked."""
    alpha_t = s.rho_t
    if hp.scale_parameter:
        alpha_t = s.rho_t * parameter_scale(sums.sum_sq_x, size.numel, hp.eps2)
    # An overflowing Σ U² would make the clipped step 0 while the statistics move on.
    finite = (statistics.nonfinite == 0) & statistics.sum_sq_u.isfinite()
    update_rms = (statistics.sum_sq_u / max(size.numel, 1)).sqrt()
    step_scale = alpha_t / clipping_divisor(statistics.sum_sq_u, size.numel, hp.clip_threshold)
    decay_scale = {"rho": s.rho_t, "alpha": alpha_t, "lr": hp.lr, "none": 1.0}
    decay = s.t.new_zeros(()) + hp.weight_decay * decay_scale[hp.weight_decay_scale]

    u = update_inputs(state, s, statistics.row_factor, statistics.col_factor, hp)
    for rows in row_chunks(param):
        update_rows(
            rows_of(param, rows), rows_of(grad, rows), u.rows(rows), step_scale, decay, finite, hp
        )

    if statistics.row is not None:
        commit(finite, statistics.row, state.exp_avg_sq_row)
        commit(finite, statistics.col, state.exp_avg_sq_col)
    state.step.add_(finite)
    state.nonfinite_skips.add_(finite.logical_not())
    return Applied(alpha_t, update_rms, finite, step_scale, decay)


def update_rows(
    param: Tensor,
    grad: Tensor,
    u: UpdateInputs,
    step_scale: Tensor,
    decay: Tensor,
    finite: Tensor,
    hp: Hyperparameters,
) -> None:
    """Phase 3's pass over the full-size tensors (or some of their rows, with ``u`` cut to the
    same rows): ``X ← X − step − decay·X`` with ``step = step_scale·U_t`` or its momentum
    average, and the full-size state, all only where ``finite``."""
    dtype = step_scale.dtype
    grad = widened(grad, u, dtype)
    m = adam_momentum(grad, u) if u.bias_correction is not None else None
    v = full_second_moment(grad, u) if u.exp_avg_sq is not None else None
    step = normalized_update(grad, u, m, v).mul_(step_scale)
    if m is not None:
        commit(finite, m, u.exp_avg)
    if hp.beta1 is not None and hp.momentum_of == "step":
        step = torch.lerp(u.exp_avg.to(dtype), step, 1.0 - hp.beta1)
        commit(finite, step, u.exp_avg)
    if v is not None:
        commit(finite, v, u.exp_avg_sq)
    if hp.maximize:
        step.neg_()
    # X_t = X − (step + decay·X), or X where a statistic is not finite; formed in place in the
    # step's float32 buffer (X may be 16-bit).
    step.addcmul_(param, decay)
    x_new = step.masked_fill_(finite.logical_not(), 0.0).neg_().add_(param)
    if hp.stochastic_rounding and param.dtype == torch.bfloat16:
        x_new = stochastic_round_to_bfloat16(x_new)
    param.copy_(x_new)


def whole_step(
    param: Tensor,
    grad: Tensor,
    state: State,
    hp: Hyperparameters,
    size: Size,
    dtype: torch.dtype,
) -> tuple[Schedule, Statistics, Applied]:
    """The three phases back to back, for a parameter this process holds whole (its sums are
    complete as they are): one function, so one compiled call per parameter. The schedule and
    statistics are returned too, so that a compiled step computes them once rather than again
    for every element of the loops that read them."""
    s, sums = statistics_sums(param, grad, state, hp, size, dtype)
    statistics = update_sums(grad, state, s, sums, hp, size)
    return s, statistics, apply_update(param, grad, state, s, sums, statistics, hp, size)


def widened(grad: Tensor, u: UpdateInputs, dtype: torch.dtype) -> Tensor:
    """G in ``dtype`` where a 16-bit G would otherwise meet an op in its own dtype (a full
    V̂'s G², Adam-style momentum); else G as it is, since a 16-bit G times the float32 factors
    is widened as it is read."""
    if u.exp_avg_sq is not None or u.bias_correction is not None:
        return grad.to(dtype)
    return grad


def update_inputs(
    state: State,
    s: Schedule,
    row_factor: Tensor | None,
    col_factor: Tensor | None,
    hp: Hyperparameters,
) -> UpdateInputs:
    """What ``normalized_update`` reads, gathered from the state, schedule and statistics."""
    return UpdateInputs(
        exp_avg=state.exp_avg,
        exp_avg_sq=state.exp_avg_sq,
        row_factor=row_factor,
        col_factor=col_factor,
        beta1=hp.beta1,
        bias_correction=s.bias_correction,
        beta2_t=s.beta2_t,
        eps1=hp.eps1,
    )


class Kernels(NamedTuple):
    """The phases a step runs: these functions as they are, or compiled."""

    statistics_sums: Callable[..., tuple[Schedule, Sums]] = statistics_sums
    update_sums: Callable[..., Statistics] = update_sums
    apply_update: Callable[..., Applied] = apply_update
    whole_step: Callable[..., tuple[Schedule, Statistics, Applied]] = whole_step


EAGER = Kernels()


class ParamStep:
    """One parameter's step, carried through the phases (see the module docstring).

    ``param``, ``grad`` and ``state`` are the tensors this process holds (the local shard of
    a distributed parameter); ``shape`` is the whole parameter's shape; ``dims`` the factored
    pair or ``None``; ``key`` the parameter that the partial sums name (default ``param``).
    ``state`` holds ``step`` (updates applied so far), ``nonfinite_skips``, either
    ``exp_avg_sq_row``/``exp_avg_sq_col`` or ``exp_avg_sq``, and ``exp_avg`` when
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
        state: Mapping[str, Tensor],
        hp: Hyperparameters,
        dims: tuple[int, int] | None,
        shape: Sequence[int],
        key: Tensor | None = None,
        kernels: Kernels = EAGER,
    ) -> None:
        self.hp, self.dims, self.kernels = hp, dims, kernels
        self.key = param if key is None else key
        # Every tensor is seen as (A, n, B, m, C), factored over dims 1 and 3, or flat: two
        # shapes of kernel, whatever the parameters' ranks.
        self.whole_param = param
        self.param = canonical(param if param.is_contiguous() else param.contiguous(), dims)
        self.grad = canonical(grad.contiguous(), dims)
        self.state = State.of(state, dims)
        self.size = Size.of(shape, dims)
        self.all_dims = tuple(range(len(shape)))
        self.dtype = state_dtype(param.dtype)

    def local_sums(self) -> list[Partial]:
        """Phase 1 (``statistics_sums``), as partial sums to complete."""
        self.schedule, sums = self.kernels.statistics_sums(
            self.param, self.grad, self.state, self.hp, self.size, self.dtype
        )
        self.sums = sums
        partials = [Partial(sums.sum_sq_x, self.key, self.all_dims)]
        if self.dims is not None:
            r, c = self.dims
            partials += [
                Partial(sums.row_sq, self.key, (c,)),
                Partial(sums.col_sq, self.key, (r,)),
                Partial(sums.total_sq, self.key, (r, c)),
                Partial(sums.old_row_mean, self.key, (r,)),
            ]
        return partials

    def clipping_sums(self) -> list[Partial]:
        """Phase 2 (``update_sums``), as partial sums to complete."""
        self.statistics = statistics = self.kernels.update_sums(
            self.grad, self.state, self.schedule, self.sums, self.hp, self.size
        )
        return [
            Partial(statistics.nonfinite, self.key, self.all_dims),
            Partial(statistics.sum_sq_u, self.key, self.all_dims),
        ]

    def apply(self) -> Applied:
        """Phase 3 (``apply_update``)."""
        applied = self.kernels.apply_update(
            self.param,
            self.grad,
            self.state,
            self.schedule,
            self.sums,
            self.statistics,
            self.hp,
            self.size,
        )
        self._write_back()
        return applied

    def run_whole(self) -> Applied:
        """All three phases at once (``whole_step``), for a parameter held whole."""
        *_, applied = self.kernels.whole_step(
            self.param, self.grad, self.state, self.hp, self.size, self.dtype
        )
        self._write_back()
        return applied

    def _write_back(self) -> None:
        if not self.whole_param.is_contiguous():
            self.whole_param.copy_(self.param.view(self.whole_param.shape))


def adafactor_group_step(
    steps: Sequence[ParamStep], complete: CompleteSums | None = None
) -> list[Applied]:
    """Step every parameter of a group. Parameters held whole (``complete`` is ``None``) step
    one after another; pieces of distributed parameters step phase by phase, all of them
    together, with ``complete`` adding up their partial sums between phases (one batched
    reduction per phase)."""
    if complete is None:
        return [step.run_whole() for step in steps]
    complete([s for step in steps for s in step.local_sums()])
    complete([s for step in steps for s in step.clipping_sums()])
    return [step.apply() for step in steps]
