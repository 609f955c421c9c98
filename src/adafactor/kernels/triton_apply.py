"""Phase 3 on CUDA: each tensor's α_t, clipping scale and whether its step is taken
(``apply_scalars``), the update written tile by tile (``apply_tiles``), then R_t and C_t into
the state and the step and skip counts (``commit``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_lanes import (
    A_VECTOR,
    APPLY_SCALAR_ROWS,
    BLOCK_C,
    F_ALPHA,
    F_COL,
    F_FACTORED,
    F_FINITE,
    F_GRAD,
    F_GRAD_DTYPE,
    F_MOMENTUM,
    F_MOMENTUM_DTYPE,
    F_NONFINITE,
    F_PARAM,
    F_PARAM_DTYPE,
    F_PARAM_SQ,
    F_PER_SLICE,
    F_RESIDUAL,
    F_RMS_GROUPS,
    F_ROW,
    F_ROW_MEAN,
    F_SKIPS,
    F_STAT_A,
    F_STAT_B,
    F_STEP,
    F_STREAM,
    F_SUM_SQ_U,
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
    J_COUNT,
    J_KIND,
    J_START,
    J_TENSOR,
    K_COL_ENTRIES,
    K_ROW_ENTRIES,
    K_SLICES,
    K_TENSOR,
    LANES,
    NF,
    NJ,
    NT,
    ROWS,
    T_COL0,
    T_COLS,
    T_ROW0,
    T_ROWS,
    T_SLICE,
    T_TENSOR,
    as_stored,
    block_offsets,
    column_mask,
    div,
    f32_pointer,
    flat_block,
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
    typed,
)


@triton.jit
def apply_scalars(
    desc,
    jobs,
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
):
    """Per job: α_t and RMS(U_t) per RMS group (to the sums), the step scale and decay (to
    ``scales``) of a tensor's one group (TENSOR) or of its slices (SLICES, ``rms_per_slice``);
    and (TENSOR) whether the step is taken."""
    job = jobs + tl.program_id(0).to(tl.int64) * NJ
    index = tl.load(job + J_TENSOR)
    d = desc + index * NF
    kind = tl.load(job + J_KIND)
    per_slice = tl.load(d + F_PER_SLICE)
    groups = tl.load(d + F_RMS_GROUPS)
    psq, su = sums + tl.load(d + F_PARAM_SQ), sums + tl.load(d + F_SUM_SQ_U)
    lanes = tl.arange(0, LANES)
    mine = ((kind == K_TENSOR) & (per_slice == 0)) | ((kind == K_SLICES) & (per_slice == 1))
    if mine:
        _beta2_t, rho, _bias = schedules(d, hp, RELATIVE, WARMUP, BETA2, CAP, GRAD_MOMENTUM)
        if per_slice == 1:
            count = (tl.load(d + F_WHOLE_N) * tl.load(d + F_WHOLE_M)).to(tl.float32)
            g0, n_groups = tl.load(job + J_START), tl.load(job + J_COUNT)
        else:
            count = tl.load(d + F_WHOLE_NUMEL).to(tl.float32)
            g0, n_groups = tl.load(job + J_START), 1 + 0 * groups
        count = tl.maximum(count, 1.0)
        g = g0 + lanes
        mask = lanes < n_groups
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
        scale_at = scales + tl.load(scale_offsets + index)
        tl.store(sums + tl.load(d + F_ALPHA) + g, alpha, mask=mask)
        tl.store(sums + tl.load(d + F_UPDATE_RMS) + g, update_rms, mask=mask)
        tl.store(scale_at + 2 * g, step_scale, mask=mask)
        tl.store(scale_at + 2 * g + 1, tl.load(hp + H_WEIGHT_DECAY) * s, mask=mask)
    if kind == K_TENSOR:
        bad = tl.zeros([LANES], dtype=tl.float32)
        for k in range(0, groups, LANES):
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
    x_at,
    g_at,
    m_at,
    v_at,
    pcode,
    gcode,
    mcode,
    offs,
    mask,
    inverse_sqrt_v,
    step_scale,
    decay,
    w,
    eps1,
    w1,
    bias,
    r_at,
    per_step,
    FACTORED: tl.constexpr,
    GRAD_MOMENTUM: tl.constexpr,
    STEP_MOMENTUM: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    STOCHASTIC_ROUNDING: tl.constexpr,
    ACCESS: tl.constexpr,
):
    """X_t = X − (step + decay·X) for a block of elements, with momentum and a full V̂ stored
    (``w = 1 − β̂2_t``, ``w1 = 1 − β1``)."""
    g = load_f32(g_at, offs, mask, gcode, ACCESS)
    direction, m = step_direction(g, m_at, mcode, offs, mask, bias, w1, GRAD_MOMENTUM, ACCESS)
    if GRAD_MOMENTUM:
        store_as(m_at, offs, m, mask, mcode, ACCESS)
    if FACTORED:
        u = direction * inverse_sqrt_v
    else:
        v_ptr = typed(v_at, tl.float32, ACCESS)
        v = lerp(tl.load(v_ptr + offs, mask=mask, other=1.0), g * g + eps1, w)
        tl.store(v_ptr + offs, v, mask=mask)
        u = div(direction, tl.sqrt_rn(v))
    step = u * step_scale
    if STEP_MOMENTUM:
        m_new = lerp(load_f32(m_at, offs, mask, mcode, ACCESS), step, w1)
        store_as(m_at, offs, m_new, mask, mcode, ACCESS)
        step = as_stored(m_new, mcode)
    if MAXIMIZE:
        step = -step
    x = load_f32(x_at, offs, mask, pcode, ACCESS)
    if r_at != 0:  # compensated: X is the parameter and what rounding it dropped
        x = x + load_f32(r_at, offs, mask, pcode, ACCESS)
    x_new = x - (step + x * decay)
    if r_at != 0:
        store_as(x_at, offs, x_new, mask, pcode, ACCESS)
        store_as(r_at, offs, x_new - as_stored(x_new, pcode), mask, pcode, ACCESS)
    elif STOCHASTIC_ROUNDING and pcode != 0:
        noise = rounding_noise(per_step, offs)
        store_stochastic(x_at, offs, x_new, noise, mask, pcode, ACCESS)
    else:
        store_as(x_at, offs, x_new, mask, pcode, ACCESS)


@triton.jit
def _apply_flat(
    x_at,
    g_at,
    m_at,
    v_at,
    pcode,
    gcode,
    mcode,
    row0,
    nrows,
    step_scale,
    decay,
    w,
    eps1,
    w1,
    bias,
    r_at,
    per_step,
    GRAD_MOMENTUM: tl.constexpr,
    STEP_MOMENTUM: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    STOCHASTIC_ROUNDING: tl.constexpr,
    ACCESS: tl.constexpr,
):
    """The update of elements ``row0 .. row0 + nrows`` of a flat tensor (a full V̂)."""
    R: tl.constexpr = ROWS if ACCESS == A_VECTOR else APPLY_SCALAR_ROWS
    for e in range(row0, row0 + nrows, R * BLOCK_C):
        offs, mask = flat_block(e, row0 + nrows, R, ACCESS)
        _apply_block(
            x_at, g_at, m_at, v_at, pcode, gcode, mcode, offs, mask, 1.0, step_scale, decay,
            w, eps1, w1, bias, r_at, per_step, False, GRAD_MOMENTUM, STEP_MOMENTUM, MAXIMIZE,
            STOCHASTIC_ROUNDING, ACCESS,
        )  # fmt: skip


@triton.jit
def _apply_factored(
    x_at,
    g_at,
    m_at,
    pcode,
    gcode,
    mcode,
    base,
    rs,
    cs,
    col0,
    ncols,
    row0,
    nrows,
    row_at,
    rsr,
    mean,
    cf,
    step_scale,
    decay,
    w1,
    bias,
    r_at,
    per_step,
    GRAD_MOMENTUM: tl.constexpr,
    STEP_MOMENTUM: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    STOCHASTIC_ROUNDING: tl.constexpr,
    ACCESS: tl.constexpr,
):
    """The update of one tile of a factored slice (``cf``: its columns' C_j^−½)."""
    R: tl.constexpr = ROWS if ACCESS == A_VECTOR else APPLY_SCALAR_ROWS
    cols = tl.arange(0, BLOCK_C)
    col_mask = column_mask(cols, ncols, ACCESS)
    for r in range(row0, row0 + nrows, R):
        rows = r + tl.arange(0, R)
        row_mask = rows < row0 + nrows
        mask = row_mask[:, None] & col_mask[None, :]
        offs = block_offsets(base, rs, cs, rows, col0, cols, ACCESS)
        rf = inverse_sqrt(div(tl.load(row_at + rows * rsr, mask=row_mask, other=1.0), mean))
        _apply_block(
            x_at, g_at, m_at, 0, pcode, gcode, mcode, offs, mask, rf[:, None] * cf[None, :],
            step_scale, decay, 0.0, 0.0, w1, bias, r_at, per_step, True, GRAD_MOMENTUM,
            STEP_MOMENTUM, MAXIMIZE, STOCHASTIC_ROUNDING, ACCESS,
        )  # fmt: skip


@triton.jit
def apply_tiles(
    desc,
    tiles,
    order,
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
    ACCESS: tl.constexpr,
):
    """Per tile whose tensor's step is taken: the update of X, momentum and a full V̂."""
    k = tl.load(order + tl.program_id(0))
    tile = tiles + k * NT
    index = tl.load(tile + T_TENSOR)
    d = desc + index * NF
    if tl.load(sums + tl.load(d + F_FINITE)) != 0.0:
        beta2_t, _rho, bias = schedules(d, hp, RELATIVE, WARMUP, BETA2, CAP, GRAD_MOMENTUM)
        t = tl.load(f32_pointer(tl.load(d + F_STEP))) + 1.0
        per_step = noise_stream(tl.load(seed_at), tl.load(d + F_STREAM), t)
        scale_at = scales + tl.load(scale_offsets + index)
        pcode, gcode = tl.load(d + F_PARAM_DTYPE), tl.load(d + F_GRAD_DTYPE)
        mcode = tl.load(d + F_MOMENTUM_DTYPE)
        x_at, g_at, m_at = tl.load(d + F_PARAM), tl.load(d + F_GRAD), tl.load(d + F_MOMENTUM)
        r_at = tl.load(d + F_RESIDUAL)
        w1 = 1.0 - tl.load(hp + H_BETA1)
        row0, nrows = tl.load(tile + T_ROW0), tl.load(tile + T_ROWS)
        if tl.load(d + F_FACTORED) == 0:
            step_scale, decay = tl.load(scale_at), tl.load(scale_at + 1)
            v_at, w, eps1 = tl.load(d + F_STAT_A), 1.0 - beta2_t, tl.load(hp + H_EPS1)
            _apply_flat(
                x_at, g_at, m_at, v_at, pcode, gcode, mcode, row0, nrows, step_scale, decay, w,
                eps1, w1, bias, r_at, per_step, GRAD_MOMENTUM, STEP_MOMENTUM, MAXIMIZE,
                STOCHASTIC_ROUNDING, ACCESS,
            )  # fmt: skip
        else:
            s = tl.load(tile + T_SLICE)
            group = s * tl.load(d + F_PER_SLICE)
            step_scale, decay = tl.load(scale_at + 2 * group), tl.load(scale_at + 2 * group + 1)
            base, rs, cs, row_base, rsr, col_base = slice_start(d, s)
            col0, ncols = tl.load(tile + T_COL0), tl.load(tile + T_COLS)
            cols = tl.arange(0, BLOCK_C)
            mean = tl.load(sums + tl.load(d + F_ROW_MEAN) + s)
            col_at = sums + tl.load(d + F_COL) + col_base
            cf = inverse_sqrt(tl.load(col_at + (col0 + cols) * cs, mask=cols < ncols, other=1.0))
            row_at = sums + tl.load(d + F_ROW) + row_base
            _apply_factored(
                x_at, g_at, m_at, pcode, gcode, mcode, base, rs, cs, col0, ncols, row0, nrows,
                row_at, rsr, mean, cf, step_scale, decay, w1, bias, r_at, per_step,
                GRAD_MOMENTUM, STEP_MOMENTUM, MAXIMIZE, STOCHASTIC_ROUNDING, ACCESS,
            )  # fmt: skip


@triton.jit
def commit(desc, jobs, sums):
    """Per job: R_t or C_t into the state where the step was taken (ROW_ENTRIES,
    COL_ENTRIES), the step count and the skip count (TENSOR)."""
    job = jobs + tl.program_id(0).to(tl.int64) * NJ
    d = desc + tl.load(job + J_TENSOR) * NF
    kind = tl.load(job + J_KIND)
    finite = tl.load(sums + tl.load(d + F_FINITE)) != 0.0
    if finite & ((kind == K_ROW_ENTRIES) | (kind == K_COL_ENTRIES)):
        lanes = tl.arange(0, LANES)
        idx = tl.load(job + J_START) + lanes
        mask = lanes < tl.load(job + J_COUNT)
        if kind == K_ROW_ENTRIES:
            new, state = sums + tl.load(d + F_ROW), f32_pointer(tl.load(d + F_STAT_A))
        else:
            new, state = sums + tl.load(d + F_COL), f32_pointer(tl.load(d + F_STAT_B))
        tl.store(state + idx, tl.load(new + idx, mask=mask), mask=mask)
    if kind == K_TENSOR:
        step = f32_pointer(tl.load(d + F_STEP))
        skips = tl.load(d + F_SKIPS).to(tl.pointer_type(tl.int64))
        tl.store(step, tl.load(step) + tl.where(finite, 1.0, 0.0))
        tl.store(skips, tl.load(skips) + tl.where(finite, 0, 1).to(tl.int64))
