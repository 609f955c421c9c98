"""Phase 3 on CUDA: each tensor's α_t and clipping scale (``apply_scalars``), the update
written tile by tile (``apply_tiles``), then the step count and the skip count (``commit``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_lanes import (
    F_ALPHA,
    F_COL,
    F_FACTORED,
    F_FINITE,
    F_GRAD,
    F_GRAD_DTYPE,
    F_M,
    F_MOMENTUM,
    F_MOMENTUM_DTYPE,
    F_N,
    F_NONFINITE,
    F_PARAM,
    F_PARAM_DTYPE,
    F_PARAM_SQ,
    F_PER_SLICE,
    F_RESIDUAL,
    F_RMS_GROUPS,
    F_ROW,
    F_SKIPS,
    F_SLICES,
    F_STAT_A,
    F_STAT_B,
    F_STEP,
    F_STREAM,
    F_SUM_SQ_U,
    F_TOTAL,
    F_UPDATE_RMS,
    F_WHOLE_M,
    F_WHOLE_N,
    F_WHOLE_NUMEL,
    H_BETA1,
    H_CLIP,
    H_EPS1,
    H_EPS2,
    H_LR,
    H_WEIGHT_DECAY,
    NF,
    NT,
    T_COL0,
    T_COLS,
    T_ROW0,
    T_ROWS,
    T_SLICE,
    T_TENSOR,
    as_stored,
    div,
    f32_pointer,
    inverse_sqrt,
    lerp,
    load_f32,
    noise_stream,
    nonfinite,
    rounding_noise,
    schedules,
    slice_start,
    step_direction,
    store_as,
    store_stochastic,
)


@triton.jit
def apply_scalars(
    desc,
    sums,
    scales,
    scale_offsets,
    hp,
    RELATIVE: tl.constexpr,
    WARMUP: tl.constexpr,
    BETA2: tl.constexpr,
    CAP: tl.constexpr,
    GRAD_MOMENTUM: tl.constexpr,
    SCALE_PARAMETER: tl.constexpr,
    CLIP: tl.constexpr,
    DECAY_SCALE: tl.constexpr,
    BLOCK: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Per tensor: α_t and RMS(U_t) per RMS group (to the sums), the step scale and decay (to
    ``scales``), and, by program (i, 0), whether the step is taken."""
    i, j = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    d = desc + i * NF
    _beta2_t, rho, _bias = schedules(d, hp, RELATIVE, WARMUP, BETA2, CAP, GRAD_MOMENTUM)
    groups = tl.load(d + F_RMS_GROUPS)
    if tl.load(d + F_PER_SLICE) == 1:
        count = (tl.load(d + F_WHOLE_N) * tl.load(d + F_WHOLE_M)).to(tl.float32)
    else:
        count = tl.load(d + F_WHOLE_NUMEL).to(tl.float32)
    count = tl.maximum(count, 1.0)
    psq, su = sums + tl.load(d + F_PARAM_SQ), sums + tl.load(d + F_SUM_SQ_U)
    lanes = tl.arange(0, BLOCK)
    scale_at = scales + tl.load(scale_offsets + i)
    for k in range(j * BLOCK, groups, SPLIT * BLOCK):
        g = k + lanes
        mask = g < groups
        if SCALE_PARAMETER:
            up = tl.sqrt_rn(div(tl.load(psq + g, mask=mask, other=0.0), count))
            down = tl.sqrt_rn(div(tl.load(psq + groups + g, mask=mask, other=0.0), count))
            rms_x = tl.where(nonfinite(up) == 0.0, up * 2.3283064365386963e-10, down * 4294967296.0)
            alpha = rho * tl.maximum(rms_x, tl.load(hp + H_EPS2))
        else:
            alpha = rho + 0.0 * lanes
        update_rms = tl.sqrt_rn(div(tl.load(su + g, mask=mask, other=0.0), count))
        if CLIP:
            step_scale = div(alpha, tl.maximum(div(update_rms, tl.load(hp + H_CLIP)), 1.0))
        else:
            step_scale = alpha
        if DECAY_SCALE == 0:
            s = rho + 0.0 * alpha
        elif DECAY_SCALE == 1:
            s = alpha
        elif DECAY_SCALE == 2:
            s = tl.load(hp + H_LR) + 0.0 * alpha
        else:
            s = 1.0 + 0.0 * alpha
        tl.store(sums + tl.load(d + F_ALPHA) + g, alpha, mask=mask)
        tl.store(sums + tl.load(d + F_UPDATE_RMS) + g, update_rms, mask=mask)
        tl.store(scale_at + 2 * g, step_scale, mask=mask)
        tl.store(scale_at + 2 * g + 1, tl.load(hp + H_WEIGHT_DECAY) * s, mask=mask)
    if j == 0:
        bad = tl.zeros([BLOCK], dtype=tl.float32)
        for k in range(0, groups, BLOCK):
            g = k + lanes
            mask = g < groups
            u = tl.load(su + g, mask=mask, other=0.0)
            x = tl.load(psq + groups + g, mask=mask, other=0.0)
            bad += tl.where(mask, tl.maximum(nonfinite(u), nonfinite(x)), 0.0)
        finite = (tl.sum(bad, axis=0) == 0.0) & (tl.load(sums + tl.load(d + F_NONFINITE)) == 0.0)
        finite = finite & (nonfinite(tl.load(hp + H_LR)) == 0.0)  # equations.lr_is_finite
        tl.store(sums + tl.load(d + F_FINITE), tl.where(finite, 1.0, 0.0))


@triton.jit
def _apply_block(
    d,
    hp,
    offs,
    mask,
    v_offs,
    inverse_sqrt_v,
    factored,
    step_scale,
    decay,
    beta2_t,
    bias,
    per_step,
    GRAD_MOMENTUM: tl.constexpr,
    STEP_MOMENTUM: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    STOCHASTIC_ROUNDING: tl.constexpr,
):
    """X_t = X − (step + decay·X) for a block of elements, with momentum and a full V̂ stored."""
    pcode = tl.load(d + F_PARAM_DTYPE)
    g = load_f32(tl.load(d + F_GRAD), offs, mask, tl.load(d + F_GRAD_DTYPE))
    direction, m = step_direction(d, g, offs, mask, bias, hp, GRAD_MOMENTUM)
    if GRAD_MOMENTUM:
        store_as(tl.load(d + F_MOMENTUM), offs, m, mask, tl.load(d + F_MOMENTUM_DTYPE))
    if factored:
        u = direction * inverse_sqrt_v
    else:
        v_at = f32_pointer(tl.load(d + F_STAT_A))
        v = lerp(
            tl.load(v_at + v_offs, mask=mask, other=1.0),
            g * g + tl.load(hp + H_EPS1),
            1.0 - beta2_t,
        )
        tl.store(v_at + v_offs, v, mask=mask)
        u = div(direction, tl.sqrt_rn(v))
    step = u * step_scale
    if STEP_MOMENTUM:
        mcode = tl.load(d + F_MOMENTUM_DTYPE)
        m_at = tl.load(d + F_MOMENTUM)
        m_new = lerp(load_f32(m_at, offs, mask, mcode), step, 1.0 - tl.load(hp + H_BETA1))
        store_as(m_at, offs, m_new, mask, mcode)
        step = as_stored(m_new, mcode)
    if MAXIMIZE:
        step = -step
    x_at, r_at = tl.load(d + F_PARAM), tl.load(d + F_RESIDUAL)
    x = load_f32(x_at, offs, mask, pcode)
    if r_at != 0:  # compensated: X is the parameter and what rounding it dropped
        x = x + load_f32(r_at, offs, mask, pcode)
    x_new = x - (step + x * decay)
    if r_at != 0:
        store_as(x_at, offs, x_new, mask, pcode)
        store_as(r_at, offs, x_new - as_stored(x_new, pcode), mask, pcode)
    elif STOCHASTIC_ROUNDING and pcode != 0:
        store_stochastic(x_at, offs, x_new, rounding_noise(per_step, offs), mask, pcode)
    else:
        store_as(x_at, offs, x_new, mask, pcode)


@triton.jit
def apply_tiles(
    desc,
    tiles,
    sums,
    scales,
    scale_offsets,
    hp,
    seed_at,
    RELATIVE: tl.constexpr,
    WARMUP: tl.constexpr,
    BETA2: tl.constexpr,
    CAP: tl.constexpr,
    GRAD_MOMENTUM: tl.constexpr,
    STEP_MOMENTUM: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    STOCHASTIC_ROUNDING: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ROWS: tl.constexpr,
):
    """Per tile whose tensor's step is taken: the update of X, momentum and a full V̂."""
    k = tl.program_id(0).to(tl.int64)
    tile = tiles + k * NT
    index = tl.load(tile + T_TENSOR)
    d = desc + index * NF
    if tl.load(sums + tl.load(d + F_FINITE)) != 0.0:
        beta2_t, _rho, bias = schedules(d, hp, RELATIVE, WARMUP, BETA2, CAP, GRAD_MOMENTUM)
        t = tl.load(f32_pointer(tl.load(d + F_STEP))) + 1.0
        per_step = noise_stream(tl.load(seed_at), tl.load(d + F_STREAM), t)
        scale_at = scales + tl.load(scale_offsets + index)
        row0, nrows = tl.load(tile + T_ROW0), tl.load(tile + T_ROWS)
        if tl.load(d + F_FACTORED) == 0:
            step_scale, decay = tl.load(scale_at), tl.load(scale_at + 1)
            lane = tl.arange(0, ROWS)[:, None] * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
            for e in range(row0, row0 + nrows, ROWS * BLOCK_C):
                offs = e + lane
                mask = offs < row0 + nrows
                _apply_block(
                    d,
                    hp,
                    offs,
                    mask,
                    offs,
                    1.0,
                    False,
                    step_scale,
                    decay,
                    beta2_t,
                    bias,
                    per_step,
                    GRAD_MOMENTUM,
                    STEP_MOMENTUM,
                    MAXIMIZE,
                    STOCHASTIC_ROUNDING,
                )
        else:
            s = tl.load(tile + T_SLICE)
            group = s * tl.load(d + F_PER_SLICE)
            step_scale, decay = tl.load(scale_at + 2 * group), tl.load(scale_at + 2 * group + 1)
            base, rs, cs, row_base, rsr, col_base = slice_start(d, s)
            col0, ncols = tl.load(tile + T_COL0), tl.load(tile + T_COLS)
            cols = tl.arange(0, BLOCK_C)
            col_mask = cols < ncols
            mean = tl.load(sums + tl.load(d + F_TOTAL) + s)
            cf = inverse_sqrt(
                tl.load(
                    sums + tl.load(d + F_COL) + col_base + (col0 + cols) * cs,
                    mask=col_mask,
                    other=1.0,
                )
            )
            for r in range(row0, row0 + nrows, ROWS):
                rows = r + tl.arange(0, ROWS)
                row_mask = rows < row0 + nrows
                mask = row_mask[:, None] & col_mask[None, :]
                offs = base + rows[:, None].to(tl.int64) * rs + (col0 + cols)[None, :] * cs
                rf = inverse_sqrt(
                    div(
                        tl.load(
                            sums + tl.load(d + F_ROW) + row_base + rows * rsr,
                            mask=row_mask,
                            other=1.0,
                        ),
                        mean,
                    )
                )
                _apply_block(
                    d,
                    hp,
                    offs,
                    mask,
                    offs,
                    rf[:, None] * cf[None, :],
                    True,
                    step_scale,
                    decay,
                    beta2_t,
                    bias,
                    per_step,
                    GRAD_MOMENTUM,
                    STEP_MOMENTUM,
                    MAXIMIZE,
                    STOCHASTIC_ROUNDING,
                )


@triton.jit
def commit(desc, sums, BLOCK: tl.constexpr, SPLIT: tl.constexpr):
    """Per tensor: R_t and C_t into the state where the step was taken, and the counters."""
    i, j = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    d = desc + i * NF
    finite = tl.load(sums + tl.load(d + F_FINITE)) != 0.0
    if finite and tl.load(d + F_FACTORED) == 1:
        slices, n, m = tl.load(d + F_SLICES), tl.load(d + F_N), tl.load(d + F_M)
        lanes = tl.arange(0, BLOCK)
        row, col = sums + tl.load(d + F_ROW), sums + tl.load(d + F_COL)
        old_row, old_col = f32_pointer(tl.load(d + F_STAT_A)), f32_pointer(tl.load(d + F_STAT_B))
        for k in range(j * BLOCK, slices * n, SPLIT * BLOCK):
            idx = k + lanes
            mask = idx < slices * n
            tl.store(old_row + idx, tl.load(row + idx, mask=mask), mask=mask)
        for k in range(j * BLOCK, slices * m, SPLIT * BLOCK):
            idx = k + lanes
            mask = idx < slices * m
            tl.store(old_col + idx, tl.load(col + idx, mask=mask), mask=mask)
    if j == 0:
        step = f32_pointer(tl.load(d + F_STEP))
        skips = tl.load(d + F_SKIPS).to(tl.pointer_type(tl.int64))
        tl.store(step, tl.load(step) + tl.where(finite, 1.0, 0.0))
        tl.store(skips, tl.load(skips) + tl.where(finite, 0, 1).to(tl.int64))
