"""The paper's equations, one small function each, in the order of Algorithm 4 (Shazeer & Stern,
"Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018), with the variants
of Sections 5–9; beside them, the numerical devices that keep them exact in floating point,
each named for what it guards against.

For a parameter X with gradient G_t at step t::

    ρ_t, β̂2_t                                                  schedules.py
    α_t = max(ε2, RMS(X_{t−1}))·ρ_t                              step_size
    R_t = β̂2_t·R_{t−1} + (1 − β̂2_t)·mean_c(G_t² + ε1)           second_moment_statistic
    C_t = β̂2_t·C_{t−1} + (1 − β̂2_t)·mean_r(G_t² + ε1)           second_moment_statistic
    V̂_t = R_t·C_t / mean_r(R_t)                                  inverse_sqrt_factors
    U_t = G_t / √V̂_t                                             normalized_update
    Û_t = U_t / max(1, RMS(U_t)/d)                               clipping_divisor
    X_t = X_{t−1} − α_t·Û_t                                      (phases.apply_update)

Means over rows (mean_r) and columns (mean_c) rather than the paper's sums give the same V̂ (the
factors of n and m cancel) and keep the statistics on the scale of G². A tensor that is not
factored keeps a full ``V̂_t = β̂2_t·V̂_{t−1} + (1 − β̂2_t)·(G_t² + ε1)`` (Algorithm 5). Factored
tensors are seen as ``(A, n, B, m, C)`` (``tiling.canonical``): rows are dim 1, columns dim 3,
and a statistic keeps the dim it averages over with size 1.

Every value is a tensor (scalars 0-d), so nothing waits for the device and nothing branches
on data. Functions return new tensors unless they say "in place".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .options import Number

# --- α_t: the relative step size (Section 8) ------------------------------------------------


def step_size(rho_t: Tensor, rms_x: Tensor | None, eps2: Number) -> Tensor:
    """``α_t = max(ε2, RMS(X_{t−1}))·ρ_t``, or ``α_t = ρ_t`` without parameter scaling
    (``rms_x`` is ``None``)."""
    if rms_x is None:
        return rho_t
    return rho_t * rms_x.clamp(min=eps2)


# --- R_t, C_t and V̂_t: the factored second moment (Section 3) -------------------------------


def second_moment_statistic(old: Tensor, mean_sq: Tensor, beta2_t: Tensor, eps1: Number) -> Tensor:
    """``β̂2_t·old + (1 − β̂2_t)·(mean_sq + ε1)``: one step of a second-moment statistic, where
    ``mean_sq`` is the mean of G² over what the statistic averages (R_t: a row's columns, C_t:
    a column's rows, mean_r(R_t): all of it; a full V̂_t: G² itself). ``mean_sq`` is a fresh
    tensor that this consumes (ε1 is added to it in place)."""
    return torch.lerp(old, mean_sq.add_(eps1), 1.0 - beta2_t)


def inverse_sqrt_factors(row: Tensor, col: Tensor, row_mean: Tensor) -> tuple[Tensor, Tensor]:
    """``a, b`` with ``a·b = 1/√V̂_t`` for ``V̂_t = R_t·C_t / mean_r(R_t)``: the rank-1 estimate
    as its two factors, never forming the n×m V̂."""
    return (row / row_mean).rsqrt(), col.rsqrt()


# --- U_t: the normalized update -------------------------------------------------------------


def normalized_update(
    direction: Tensor, inverse_sqrt_v: Tensor, col_factor: Tensor | None = None
) -> Tensor:
    """``U_t = D_t / √V̂_t``, with ``1/√V̂_t`` given whole or as its row and column factors
    (``inverse_sqrt_v·col_factor``). ``D_t`` is G_t, or Adam-style momentum ``m̂_t``."""
    update = direction * inverse_sqrt_v
    return update if col_factor is None else update.mul_(col_factor)


# --- Û_t: update clipping (Section 6) -------------------------------------------------------


def rms(sum_sq: Tensor, count: int) -> Tensor:
    """``RMS = √(Σx²/count)`` from a sum of squares over ``count`` elements (0 when empty)."""
    return (sum_sq / max(count, 1)).sqrt()


def clipping_divisor(rms_u: Tensor, clip_threshold: Number | None) -> Tensor | float:
    """``max(1, RMS(U_t)/d)``, so that ``Û_t = U_t / max(1, RMS(U_t)/d)``; 1 without clipping."""
    if clip_threshold is None:
        return 1.0
    return (rms_u / clip_threshold).clamp(min=1.0)


# --- Momentum (β1, Sections 5 and 9) --------------------------------------------------------


def momentum(old: Tensor, new: Tensor, beta1: Number) -> Tensor:
    """``β1·old + (1 − β1)·new``: the average of the steps α_t·Û_t (``momentum_of="step"``,
    as T5X and optax) or Adam's ``m_t`` of the gradients (``momentum_of="gradient"``)."""
    return torch.lerp(old, new, 1.0 - beta1)


def bias_correction(t: Tensor, beta1: Number) -> Tensor:
    """``1/(1 − β1^t)``, so that Adam's ``m̂_t = m_t/(1 − β1^t)``."""
    return 1.0 / (1.0 - beta1**t)


# --- Weight decay ---------------------------------------------------------------------------


def weight_decay_rate(
    weight_decay: Number, scale: str, rho_t: Tensor, alpha_t: Tensor, lr: Number
) -> Tensor:
    """``λ·s`` in the decoupled decay ``X ← X − λ·s·X``: s is ρ_t (``"rho"``, as AdamW's
    learning rate), α_t (``"alpha"``: HF, timm), the group's ``lr`` (``"lr"``: torch) or 1
    (``"none"``: optax)."""
    s = {"rho": rho_t, "alpha": alpha_t, "lr": lr, "none": 1.0}[scale]
    return rho_t.new_zeros(()) + weight_decay * s


# --- Numerical devices ----------------------------------------------------------------------


def scaled_square(x: Tensor, scale: float, dtype: torch.dtype) -> Tensor:
    """``(x·scale)²`` in ``dtype``, a new tensor. Guards sums of squares against overflow and
    underflow: G is scaled by ``1/√numel`` before squaring, so its sums of squares are means,
    overflow only where G² itself would, and lose only what lies far below ε1."""
    return x.to(dtype, copy=True).mul_(scale).square_()


PARAM_SCALES = (2.0**32, 2.0**-32)
"""Guards RMS(X) against the range of float32: ``Σ X²`` is summed twice, of X scaled up and of
X scaled down. The first is exact for |X| from ~1e-28 up to ~4e9/√numel, the second, used once
the first overflows, up to ~8e28/√numel (float32 squares alone cover only ~1e-19 to
~1e19/√numel). Beyond that the second overflows too: such a parameter counts as non-finite."""


def two_scale_rms(sums_sq: Tensor, count: int) -> Tensor:
    """RMS(X) from ``sums_sq``, the two sums of ``scaled_square(X, PARAM_SCALES[i])`` stacked
    along dim 0: the scaled-up one where it is finite, else the scaled-down one."""
    up, down = rms(sums_sq, count).unbind()
    return torch.where(up.isfinite(), up / PARAM_SCALES[0], down / PARAM_SCALES[1])


def lr_is_finite(lr: Number) -> Tensor | bool:
    """Guards the parameters against a Tensor ``lr`` that became NaN or infinite mid-run (its
    value is not read on the host, which would wait for the device): the step is then skipped
    and counted as a non-finite one, on every path, rather than writing NaN into the weights
    or reading NaN as "no cap". A number ``lr`` was checked where it was set."""
    return lr.isfinite() if isinstance(lr, Tensor) else math.isfinite(lr)


def count_nonfinite(x: Tensor) -> Tensor:
    """The number of NaN and infinite entries of ``x``, in ``x``'s dtype (a partial sum)."""
    return x.isfinite().logical_not().sum(dtype=x.dtype)


def compensated_write(x: Tensor, param: Tensor, residual: Tensor, finite: Tensor) -> None:
    """Guards a 16-bit parameter's updates against rounding (Kahan's compensated summation):
    float32 ``x`` is written to ``param`` rounded to nearest, and what that rounding dropped,
    ``x − param``, to ``residual`` (of the parameter's dtype), so that ``param + residual``
    carries ``x`` to the residual's own precision and the next step starts from it; in
    place, and only where ``finite`` (else both stay as they were)."""
    written = x.to(param.dtype)
    dropped = x.sub_(written.to(x.dtype)).to(residual.dtype)  # exact in float32
    torch.where(finite, written, param, out=param)
    torch.where(finite, dropped, residual, out=residual)


def stochastic_round(x: Tensor, dtype: torch.dtype, noise: Tensor) -> Tensor:
    """Guards small updates of a 16-bit parameter against being rounded away: float32 ``x``
    rounded to ``dtype`` (bfloat16 or float16) up or down at random, so that
    ``E[round(x)] = x``. ``noise``, a uniform random integer below 2¹⁶ per element
    (``rounding_noise``), is added below the bits that ``dtype`` keeps, which are then cut:
    bfloat16 keeps float32's exponent and drops 16 mantissa bits; float16 drops 13, and
    below its normal range (2⁻¹⁴), where its values are 2⁻²⁴ apart, it rounds ``x·2²⁴`` to
    a neighbouring whole number instead. A value that rounds to nearest finitely never
    becomes infinite."""
    bits = x.view(torch.int32)
    if dtype == torch.bfloat16:
        rounded = (noise.to(torch.int32) + bits) & -(1 << 16)
        return rounded.view(torch.float32).to(dtype)
    normal = ((noise.to(torch.int32) >> 3) + bits) & -(1 << 13)
    scaled = x.abs() * 2.0**24  # exact: a power of two; below 2¹⁰ here
    tiny = (scaled + noise.to(torch.float32) / 65536.0).floor_().mul_(2.0**-24).copysign_(x)
    out = torch.where(x.abs() < 2.0**-14, tiny, normal.view(torch.float32)).to(dtype)
    nearest = x.to(dtype)
    return torch.where(out.isinf() & nearest.isfinite(), nearest, out)


MASK32 = 0xFFFFFFFF


def mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (Wellons' "lowbias32") of int64 tensors holding values below
    2³²: its multipliers are below 2³¹, so no int64 product overflows, and masking keeps the
    32-bit wrap-around that C and Triton get from unsigned arithmetic."""
    x = x ^ (x >> 16)  # a new tensor; in place from here on
    x.mul_(0x21F0AAAD).bitwise_and_(MASK32)
    x ^= x >> 15
    x.mul_(0x735A2D97).bitwise_and_(MASK32)
    x ^= x >> 15
    return x


def rounding_noise(seed: int, stream: int, t: Tensor, index: Tensor) -> Tensor:
    """Stochastic rounding's 16 random bits for the elements at flat positions ``index`` of a
    parameter (int64), at step ``t``: a hash of the position, the step, the parameter
    (``stream``) and the ``seed``. Counter-based, so the bits are the same whatever order the
    parameters step in or however they are grouped (inside the backward pass too), and a run
    resumed from a checkpoint (which holds ``t`` and the seed) goes on with the same bits."""
    per_step = mix32(mix32(mix32(t.to(torch.int64) & MASK32) ^ (stream & MASK32)) ^ seed)
    bits = mix32((index & MASK32) ^ per_step)
    return mix32(bits.bitwise_xor_(index >> 32)).bitwise_and_(0xFFFF)
