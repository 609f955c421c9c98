"""One tensor's step as three phases, built from ``equations.py``: the eager step, and the
definition every faster path (``kernels/``) is tested against.

Two things need every element of a tensor before anything can be applied, so a step makes
three passes over the full-size tensors, with the O(n + m) math between them:

1. ``statistics_sums``: ``Σ X²`` (for RMS(X)) and, factored, the sums of G² over rows, columns
   and both, and mean_r(R_{t−1});
2. ``update_sums``: from those, R_t, C_t and the factors of 1/√V̂_t; then ``Σ U_t²`` (for
   clipping) and a count of non-finite statistics;
3. ``apply_update``: α_t, clipping, momentum and weight decay, and the update of X and of the
   state, all only where every value was finite.

Each phase returns what the next one needs and nothing is kept anywhere else. Its sums are
partial, over the elements this process holds: for a tensor split across processes
(``distributed.py``) ``step.py`` completes them before the next phase. Eagerly a pass goes a
few rows at a time (``tiling.row_chunks``), so no pass allocates more than a few small chunks.

Whether a tensor is factored is a type: ``Factored`` state (R, C) gives ``FactoredSums`` and
``FactoredStatistics``, ``Full`` state (V̂) gives ``FullSums`` and ``FullStatistics``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .equations import (
    PARAM_SCALES,
    bias_correction,
    clipping_divisor,
    compensated_write,
    count_nonfinite,
    inverse_sqrt_factors,
    lr_is_finite,
    momentum,
    normalized_update,
    rms,
    rounding_noise,
    scaled_square,
    second_moment_statistic,
    step_size,
    stochastic_round,
    two_scale_rms,
    weight_decay_rate,
)
from .factoring import SIXTEEN_BITS
from .options import Hyperparameters
from .schedules import rho, second_moment_decay
from .tiling import (
    CHUNK_NUMEL,
    COLS,
    ROWS,
    Rows,
    canonical,
    column_sums,
    element_positions,
    row_chunks,
    rows_of,
)

# --- What a phase reads ---------------------------------------------------------------------


class Factored(NamedTuple):
    """A factored tensor's statistics R_{t−1}, ``(A, n, B, 1, C)``, and C_{t−1},
    ``(A, 1, B, m, C)``: means of G² + ε1 over columns and over rows (Section 3)."""

    row: Tensor
    col: Tensor


class Full(NamedTuple):
    """An unfactored tensor's full V̂_{t−1}, flat (Algorithm 5)."""

    v: Tensor


class TensorState(NamedTuple):
    """A parameter's state as the step sees it (``canonical`` views of the state dict's)."""

    step: Tensor  # updates applied so far
    nonfinite_skips: Tensor
    second_moment: Factored | Full
    momentum: Tensor | None  # the average of steps or gradients, with β1
    residual: Tensor | None = None  # what rounding a 16-bit parameter dropped (compensated)
    stream: int = 0  # which stream of stochastic rounding's bits is this parameter's

    @classmethod
    def of(
        cls, state: Mapping[str, Tensor], dims: tuple[int, int] | None, stream: int = 0
    ) -> TensorState:
        """The state dict's tensors, viewed for a tensor factored over ``dims`` (or not)."""
        if dims is None:
            second: Factored | Full = Full(canonical(state["exp_avg_sq"], None))
        else:
            second = Factored(
                canonical(state["exp_avg_sq_row"], dims), canonical(state["exp_avg_sq_col"], dims)
            )
        mom = canonical(state["exp_avg"], dims) if "exp_avg" in state else None
        residual = canonical(state["residual"], dims) if "residual" in state else None
        return cls(state["step"], state["nonfinite_skips"], second, mom, residual, stream)


class Size(NamedTuple):
    """The whole parameter's sizes, whatever piece of it this process holds: ``numel``, and
    when factored its rows ``n`` and columns ``m`` (the sizes of its factored dims);
    ``per_slice``: RMS(X) and RMS(U_t) are taken per slice, over ``n·m`` elements
    (``rms_per_slice``), else over the whole tensor; ``square_scale = 1/√numel`` (see
    ``equations.scaled_square``)."""

    numel: int
    n: int
    m: int
    per_slice: bool
    square_scale: float  # a number, not a formula, so that a compiled pass need not recompute it

    @classmethod
    def of(cls, shape: Sequence[int], dims: tuple[int, int] | None, rms_per_slice: bool) -> Size:
        """The sizes of a parameter of ``shape`` factored over ``dims`` (or not)."""
        numel = math.prod(shape)
        n, m = (1, 1) if dims is None else (shape[dims[0]], shape[dims[1]])
        return cls(numel, n, m, rms_per_slice and dims is not None, max(numel, 1) ** -0.5)

    @property
    def rms_count(self) -> int:
        """How many elements one RMS averages over."""
        return self.n * self.m if self.per_slice else self.numel


def rms_sum(x: Tensor, size: Size) -> Tensor:
    """``Σ x`` over what one RMS averages: per slice (canonical dims 1 and 3, kept) or all."""
    return x.sum(dim=(ROWS, COLS), keepdim=True) if size.per_slice else x.sum()


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
    return Schedule(
        t,
        second_moment_decay(t, hp.decay_rate, hp.beta2, hp.beta2_cap, hp.decay_offset),
        rho(t, hp.lr, hp.relative_step, hp.warmup_init),
        bias_correction(t, hp.beta1)
        if hp.beta1 is not None and hp.momentum_of == "gradient"
        else None,
    )


# --- What the phases return -----------------------------------------------------------------


class FactoredSums(NamedTuple):
    """Phase 1's partial sums for a factored tensor: ``Σ X²`` at each of ``PARAM_SCALES``
    (stacked in dim 0; per slice or whole), the sums of ``(G/√numel)²`` over columns
    (``row_sq``), rows (``col_sq``) and both (``total_sq``), and mean_r(R_{t−1})."""

    schedule: Schedule
    state: Factored
    param_sq: Tensor
    row_sq: Tensor
    col_sq: Tensor
    total_sq: Tensor
    old_row_mean: Tensor


class FullSums(NamedTuple):
    """Phase 1's partial sums for an unfactored tensor: ``Σ X²`` at each of ``PARAM_SCALES``."""

    schedule: Schedule
    state: Full
    param_sq: Tensor


class FactoredStatistics(NamedTuple):
    """Phase 2's results for a factored tensor: R_t and C_t, the factors of 1/√V̂_t, and the
    partial sums ``Σ U_t²`` and count of non-finite statistics (phase 1's ``param_sq`` and
    the state carried on for phase 3)."""

    schedule: Schedule
    state: Factored
    param_sq: Tensor
    row: Tensor
    col: Tensor
    row_factor: Tensor
    col_factor: Tensor
    sum_sq_u: Tensor
    nonfinite: Tensor


class FullStatistics(NamedTuple):
    """Phase 2's results for an unfactored tensor: the partial sums ``Σ U_t²`` and count of
    non-finite V̂_t (phase 1's ``param_sq`` and the state carried on for phase 3)."""

    schedule: Schedule
    state: Full
    param_sq: Tensor
    sum_sq_u: Tensor
    nonfinite: Tensor


class Applied(NamedTuple):
    """What phase 3 did: ``α_t`` and ``RMS(U_t)`` (0-d, or one per slice), and whether the
    step was taken (every gradient, parameter and statistic finite)."""

    alpha_t: Tensor
    update_rms: Tensor
    finite: Tensor


# --- The three phases -----------------------------------------------------------------------


def statistics_sums(
    x: Tensor, grad: Tensor, state: TensorState, hp: Hyperparameters, size: Size, dtype: torch.dtype
) -> FactoredSums | FullSums:
    """Phase 1: this step's ``schedule`` and the partial sums that the statistics and RMS(X)
    need, in ``dtype`` whatever the dtype of X and G."""
    chunks = row_chunks(x)
    param_sq = torch.stack(
        [
            torch.stack(
                [rms_sum(scaled_square(rows_of(x, rows), k, dtype), size) for k in PARAM_SCALES]
            )
            for rows in chunks
        ]
    ).sum(dim=0)
    s = schedule(state.step, hp, dtype)
    second = state.second_moment
    if isinstance(second, Full):
        return FullSums(s, second, param_sq)
    row_sq, col_sq = [], []
    for rows in chunks:
        g_sq = scaled_square(rows_of(grad, rows), size.square_scale, dtype)
        row_sq.append(g_sq.sum(dim=COLS, keepdim=True))
        col_sq.append(column_sums(g_sq))
        del g_sq  # before the next chunk's is made
    row_sum = torch.cat(row_sq, dim=ROWS) if len(row_sq) > 1 else row_sq[0]
    return FactoredSums(
        s,
        second,
        param_sq,
        row_sum,
        torch.stack(col_sq).sum(dim=0),
        row_sum.sum(dim=ROWS, keepdim=True),
        (second.row / size.n).sum(dim=ROWS, keepdim=True),  # divided first: R may be ~1e38
    )


def update_sums(
    grad: Tensor,
    sums: FactoredSums | FullSums,
    momentum_state: Tensor | None,
    hp: Hyperparameters,
    size: Size,
) -> FactoredStatistics | FullStatistics:
    """Phase 2, from phase 1's complete sums: R_t, C_t and mean_r(R_t), then ``Σ U_t²`` and
    the count of non-finite statistics (not zero when G held a NaN or an Inf, or G² overflowed
    the state's dtype)."""
    s, dtype = sums.schedule, sums.param_sq.dtype
    sum_sq_u = sums.param_sq.new_zeros(())
    if isinstance(sums, FactoredSums):
        row, col, row_factor, col_factor = factored_statistics(sums, hp, size)
        for rows in row_chunks(grad):
            g = rows_of(grad, rows).to(dtype)
            d = direction(g, rows_of(momentum_state, rows), s, hp)
            u = normalized_update(d, rows_of(row_factor, rows), col_factor)
            sum_sq_u = sum_sq_u + rms_sum(u.square_(), size)
            del g, d, u  # before the next chunk's are made
        nonfinite = count_nonfinite(row) + count_nonfinite(col)
        return FactoredStatistics(
            s, sums.state, sums.param_sq, row, col, row_factor, col_factor, sum_sq_u, nonfinite
        )
    nonfinite = sums.param_sq.new_zeros(())
    for rows in row_chunks(grad):
        g = rows_of(grad, rows).to(dtype)
        v = full_second_moment(rows_of(sums.state.v, rows), g, s, hp)
        nonfinite = nonfinite + count_nonfinite(v)
        u = normalized_update(direction(g, rows_of(momentum_state, rows), s, hp), v.rsqrt_())
        sum_sq_u = sum_sq_u + rms_sum(u.square_(), size)
        del g, v, u  # before the next chunk's are made
    return FullStatistics(s, sums.state, sums.param_sq, sum_sq_u, nonfinite)


def factored_statistics(
    sums: FactoredSums, hp: Hyperparameters, size: Size
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """R_t, C_t and the factors of 1/√V̂_t from phase 1's sums of ``(G/√numel)²``:
    ``(numel/m)·row_sq`` is mean_c(G²), ``(numel/n)·col_sq`` is mean_r(G²), and mean_r(R_t)
    follows from mean_r(R_{t−1}) by linearity, so that ``U_t`` is formed from factors of order
    one and ``Σ U_t²`` needs no further round."""
    s, numel, n, m = sums.schedule, size.numel, size.n, size.m
    row = second_moment_statistic(sums.state.row, numel / m * sums.row_sq, s.beta2_t, hp.eps1)
    col = second_moment_statistic(sums.state.col, numel / n * sums.col_sq, s.beta2_t, hp.eps1)
    row_mean = second_moment_statistic(
        sums.old_row_mean, numel / (n * m) * sums.total_sq, s.beta2_t, hp.eps1
    )
    return (row, col, *inverse_sqrt_factors(row, col, row_mean))


def apply_update(
    param: Tensor,
    grad: Tensor,
    statistics: FactoredStatistics | FullStatistics,
    state: TensorState,
    hp: Hyperparameters,
    size: Size,
) -> Applied:
    """Phase 3, in place, from the complete sums: α_t, clipping, momentum and weight decay,
    ``X ← X − step − decay·X``, and the commit of the state, all only where every gradient,
    parameter value and statistic is finite (else a skip is counted); a bfloat16 X rounded
    stochastically if asked."""
    s = statistics.schedule
    rms_x = two_scale_rms(statistics.param_sq, size.rms_count) if hp.scale_parameter else None
    alpha_t = step_size(s.rho_t, rms_x, hp.eps2)
    # X's sum of squares scaled down overflows only where X is not finite (or beyond ~8e28).
    # An overflowing Σ U² would make the clipped step 0 while the statistics move on.
    finite = (
        (statistics.nonfinite == 0)
        & statistics.sum_sq_u.isfinite().all()
        & statistics.param_sq[1].isfinite().all()
        & lr_is_finite(hp.lr)
    )
    update_rms = rms(statistics.sum_sq_u, size.rms_count)
    step_scale = alpha_t / clipping_divisor(update_rms, hp.clip_threshold)
    decay = weight_decay_rate(hp.weight_decay, hp.weight_decay_scale, s.rho_t, alpha_t, hp.lr)
    stochastic = hp.written_as == "stochastic" and param.dtype in SIXTEEN_BITS
    # Stochastic rounding hashes each element's position in int64: smaller chunks keep its
    # temporaries to the others' size.
    for rows in row_chunks(param, CHUNK_NUMEL // 4 if stochastic else CHUNK_NUMEL):
        chunk = rows_of(param, rows)
        noise = None
        if stochastic:
            assert hp.rounding_seed is not None  # drawn when the optimizer was made
            positions = element_positions(chunk, param)
            noise = rounding_noise(hp.rounding_seed, state.stream, s.t, positions)
        update_rows(
            chunk,
            rows_of(grad, rows),
            statistics,
            rows,
            rows_of(state.momentum, rows),
            step_scale,
            decay,
            finite,
            hp,
            rows_of(state.residual, rows),
            noise,
        )
    if isinstance(statistics, FactoredStatistics):
        commit(finite, statistics.row, statistics.state.row)
        commit(finite, statistics.col, statistics.state.col)
    state.step.add_(finite)
    state.nonfinite_skips.add_(finite.logical_not())
    return Applied(alpha_t, update_rms, finite)


def update_rows(
    param: Tensor,
    grad: Tensor,
    statistics: FactoredStatistics | FullStatistics,
    rows: Rows,
    momentum_rows: Tensor | None,
    step_scale: Tensor,
    decay: Tensor,
    finite: Tensor,
    hp: Hyperparameters,
    residual_rows: Tensor | None = None,
    noise: Tensor | None = None,
) -> None:
    """Phase 3's pass over the full-size tensors, or rows ``rows`` of them:
    ``X ← X − step − decay·X`` with ``step = step_scale·U_t`` or its momentum average, and the
    full-size state, all only where ``finite``. X and G are read once each, in ``dtype``;
    with a residual (compensated rounding) X is the parameter plus its residual."""
    s, dtype = statistics.schedule, step_scale.dtype
    g = grad.to(dtype)
    d = g
    if hp.gradient_momentum:
        assert momentum_rows is not None and s.bias_correction is not None
        assert hp.beta1 is not None
        m = commit(finite, momentum(momentum_rows.to(dtype), g, hp.beta1), momentum_rows)
        d = m.mul_(s.bias_correction)
    if isinstance(statistics, FactoredStatistics):
        step = normalized_update(d, rows_of(statistics.row_factor, rows), statistics.col_factor)
    else:
        v_rows = rows_of(statistics.state.v, rows)
        v = commit(finite, full_second_moment(v_rows, g, s, hp), v_rows)
        step = normalized_update(d, v.rsqrt_())
        del v
    del g, d  # before X is widened
    step.mul_(step_scale)
    if hp.step_momentum:
        assert momentum_rows is not None and hp.beta1 is not None
        step = commit(finite, momentum(momentum_rows.to(dtype), step, hp.beta1), momentum_rows)
    if hp.maximize:
        step.neg_()
    # X_t = X − (step + decay·X), or X where a value is not finite; formed in place in the
    # step's buffer.
    x = param.to(dtype)
    if residual_rows is not None:
        x.add_(residual_rows)
    x_new = step.addcmul_(x, decay).masked_fill_(finite.logical_not(), 0.0).neg_().add_(x)
    del x
    if residual_rows is not None:
        compensated_write(x_new, param, residual_rows, finite)
    elif noise is not None:  # stochastic rounding of a 16-bit parameter
        param.copy_(stochastic_round(x_new, param.dtype, noise))
    else:
        param.copy_(x_new)


def direction(g: Tensor, momentum_rows: Tensor | None, s: Schedule, hp: Hyperparameters) -> Tensor:
    """``D_t`` in ``U_t = D_t/√V̂_t``: ``G_t``, or with Adam-style momentum
    ``m̂_t = (β1·m_{t−1} + (1 − β1)·G_t)/(1 − β1^t)``, as the state will store it."""
    if not hp.gradient_momentum:
        return g
    assert momentum_rows is not None and s.bias_correction is not None and hp.beta1 is not None
    m = momentum(momentum_rows.to(g.dtype), g, hp.beta1)
    return stored(m, momentum_rows.dtype).mul_(s.bias_correction)


def full_second_moment(old_v: Tensor, g: Tensor, s: Schedule, hp: Hyperparameters) -> Tensor:
    """``V̂_t = β̂2_t·V̂_{t−1} + (1 − β̂2_t)·(G_t² + ε1)`` for rows of an unfactored tensor."""
    return second_moment_statistic(old_v, g.square(), s.beta2_t, hp.eps1)


def stored(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` as a state of ``dtype`` keeps it: rounded to ``dtype`` and back, where that is
    narrower (momentum in bfloat16: the step applied is the momentum stored)."""
    return x if dtype == x.dtype else x.to(dtype).to(x.dtype)


def commit(finite: Tensor, new: Tensor, state: Tensor) -> Tensor:
    """``state ← new`` where ``finite`` (else unchanged), in place and in ``state``'s dtype;
    returns ``new`` as stored (see ``stored``)."""
    if new.dtype == state.dtype:
        torch.where(finite, new, state, out=state)
        return new
    state.copy_(torch.where(finite, new, state.to(new.dtype)))
    return stored(new, state.dtype)


def whole_step(
    param: Tensor,
    grad: Tensor,
    state: TensorState,
    hp: Hyperparameters,
    size: Size,
    dtype: torch.dtype,
) -> Applied:
    """The three phases back to back, for a parameter this process holds whole (its sums are
    complete as they are)."""
    sums = statistics_sums(param, grad, state, hp, size, dtype)
    statistics = update_sums(grad, sums, state.momentum, hp, size)
    return apply_update(param, grad, statistics, state, hp, size)
