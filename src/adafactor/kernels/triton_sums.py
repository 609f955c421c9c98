"""Phases 1 and 2 on CUDA: the sums of G², X² and R_{t−1} over every tile of a group
(``sums_tiles``) completed per tensor, slice, row and column by the jobs of the plan
(``sums_jobs``), then R_t and C_t (``statistics``) and the sums of U_t² (``update_sums_tiles``,
``update_sums_jobs``). Each sum is reduced in a fixed order, with no atomics, so a step is
deterministic; no program reads more than a few dozen times in a row (tiles of at most 64
blocks of ``ROWS × BLOCK_C``, jobs over at most ``LANES`` entries or ``KB``-wide blocks of
partials).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_lanes import (
    A_VECTOR,
    BLOCK_C,
    F_COL,
    F_COL_PARTS,
    F_COL_TILES,
    F_FACTORED,
    F_FIRST_JOB,
    F_FIRST_TILE,
    F_GRAD,
    F_GRAD_DTYPE,
    F_JOBS,
    F_M,
    F_MOMENTUM,
    F_MOMENTUM_DTYPE,
    F_N,
    F_NONFINITE,
    F_OLD_ROW_MEAN,
    F_PARAM,
    F_PARAM_DTYPE,
    F_PARAM_SQ,
    F_PER_SLICE,
    F_RMS_GROUPS,
    F_ROW,
    F_ROW_MEAN,
    F_ROW_PARTS,
    F_ROW_TILES,
    F_STAT_A,
    F_STAT_B,
    F_SUM_SQ_U,
    F_TILES,
    F_TOTAL,
    F_WHOLE_M,
    F_WHOLE_N,
    F_WHOLE_NUMEL,
    H_BETA1,
    H_EPS1,
    H_SUM_SQ_U,
    J_COUNT,
    J_KIND,
    J_SLICE,
    J_START,
    J_TENSOR,
    JS_BOUND,
    JS_FIELDS,
    JS_LOW,
    JS_NF,
    K_COL_ENTRIES,
    K_COL_LINE,
    K_ROW_ENTRIES,
    K_ROW_LINE,
    K_SLICES,
    K_TENSOR,
    KB,
    LANES,
    LINE_LANES,
    NF,
    NJ,
    NT,
    ROWS,
    S_DOWN,
    S_FIELDS,
    S_NF,
    S_OLD,
    S_SU,
    S_TOTAL,
    S_UP,
    SCALAR_ROWS,
    T_COL0,
    T_COL_TILE,
    T_COLS,
    T_ROW0,
    T_ROW_TILE,
    T_ROWS,
    T_SLICE,
    T_TENSOR,
    WIDE_TILES,
    block_offsets,
    column_mask,
    div,
    f32_pointer,
    field_of_slices,
    flat_block,
    inverse_sqrt,
    lerp,
    load_f32,
    nonfinite,
    one_slice_sums,
    schedules,
    slice_of_entry,
    slice_start,
    slice_sums,
    step_direction,
    sum_tiles,
    typed,
)

UP: tl.constexpr = tl.constexpr(4294967296.0)  # PARAM_SCALES
DOWN: tl.constexpr = tl.constexpr(2.3283064365386963e-10)
BOUND_LIMIT: tl.constexpr = tl.constexpr(2.0**100)
"""Below this a bound on Σ U_t² proves it finite, with room for rounding and for the sum of the
partial sums of up to 2²⁷ processes (``update_sums_tiles``)."""


# --- Phase 1 ------------------------------------------------------------------------------------


@triton.jit
def sums_tiles(desc, tiles, order, sums, scratch, tile_sums, ACCESS: tl.constexpr):
    """Per tile (the ``order``-th: the plan lists its aligned tiles first, then the others,
    each kind launched with its own ``ACCESS``): Σ X² at both scales, Σ R_{t−1}/n over its
    rows, Σ (G/√numel)², and the sums of (G/√numel)² over its columns (to R's place, or its
    partials) and over its rows (to C's, or partials)."""
    k = tl.load(order + tl.program_id(0))
    tile = tiles + k * NT
    d = desc + tl.load(tile + T_TENSOR) * NF
    pcode, x_at = tl.load(d + F_PARAM_DTYPE), tl.load(d + F_PARAM)
    row0, nrows = tl.load(tile + T_ROW0), tl.load(tile + T_ROWS)
    if tl.load(d + F_FACTORED) == 0:
        up, down = _flat_squares(x_at, pcode, row0, nrows, ACCESS)
        old = up * 0.0
        total = up * 0.0
    else:
        gcode, g_at = tl.load(d + F_GRAD_DTYPE), tl.load(d + F_GRAD)
        s = tl.load(tile + T_SLICE)
        base, rs, cs, row_base, rsr, col_base = slice_start(d, s)
        n, m = tl.load(d + F_N), tl.load(d + F_M)
        row_tiles, col_tiles = tl.load(d + F_ROW_TILES), tl.load(d + F_COL_TILES)
        ct, rt = tl.load(tile + T_COL_TILE), tl.load(tile + T_ROW_TILE)
        col0, ncols = tl.load(tile + T_COL0), tl.load(tile + T_COLS)
        # 1/√numel in float64, rounded once (the eager step's Python number, cpu.c's double).
        numel = tl.maximum(tl.load(d + F_WHOLE_NUMEL), 1).to(tl.float64)
        scale = (1.0 / tl.sqrt(numel)).to(tl.float32)
        whole_n = tl.load(d + F_WHOLE_N).to(tl.float32)
        # A tile's row sums go straight to R's place when it spans all columns, else to its
        # partials; likewise its column sums.
        if col_tiles == 1:
            row_out, row_step = sums + tl.load(d + F_ROW) + row_base, rsr
        else:
            row_out = scratch + tl.load(d + F_ROW_PARTS) + (s * col_tiles + ct) * n
            row_step = 1 + 0 * rsr  # int64, as the other branch's
        if row_tiles == 1:
            col_out, col_step = sums + tl.load(d + F_COL) + col_base, cs
        else:
            col_out = scratch + tl.load(d + F_COL_PARTS) + (s * row_tiles + rt) * m
            col_step = 1 + 0 * cs
        old_at = f32_pointer(tl.load(d + F_STAT_A)) + row_base
        up, down, old, total = _factored_sums(
            x_at, g_at, pcode, gcode, base, rs, cs, col0, ncols, row0, nrows, scale,
            row_out, row_step, col_out, col_step, old_at, rsr, ct == 0, whole_n, ACCESS,
        )  # fmt: skip
    out = tile_sums + k * S_FIELDS
    tl.store(out + S_UP, up)
    tl.store(out + S_DOWN, down)
    tl.store(out + S_OLD, old)
    tl.store(out + S_TOTAL, total)


@triton.jit
def _flat_squares(x_at, pcode, row0, nrows, ACCESS: tl.constexpr):
    """Σ (X·2³²)² and Σ (X·2⁻³²)² over elements ``row0 .. row0 + nrows`` of a flat tensor."""
    R: tl.constexpr = ROWS if ACCESS == A_VECTOR else SCALAR_ROWS
    up = tl.zeros([R, BLOCK_C], dtype=tl.float32)
    down = tl.zeros([R, BLOCK_C], dtype=tl.float32)
    for e in range(row0, row0 + nrows, R * BLOCK_C):
        offs, mask = flat_block(e, row0 + nrows, R, ACCESS)
        x = load_f32(x_at, offs, mask, pcode, ACCESS)
        up += (x * UP) * (x * UP)
        down += (x * DOWN) * (x * DOWN)
    return tl.sum(tl.sum(up, axis=1), axis=0), tl.sum(tl.sum(down, axis=1), axis=0)


@triton.jit
def _factored_sums(
    x_at,
    g_at,
    pcode,
    gcode,
    base,
    rs,
    cs,
    col0,
    ncols,
    row0,
    nrows,
    scale,
    row_out,
    row_step,
    col_out,
    col_step,
    old_at,
    old_step,
    take_old,
    whole_n,
    ACCESS: tl.constexpr,
):
    """One tile of a factored slice: its rows' sums of (G·scale)² stored, its columns' stored
    at the end; Σ X² at both scales, Σ R_{t−1}/n over its rows (``take_old``) and Σ (G·scale)²
    returned. A row lies within one warp: its sum needs no barrier."""
    R: tl.constexpr = ROWS if ACCESS == A_VECTOR else SCALAR_ROWS
    cols = tl.arange(0, BLOCK_C)
    col_mask = column_mask(cols, ncols, ACCESS)
    up = tl.zeros([R, BLOCK_C], dtype=tl.float32)
    down = tl.zeros([R, BLOCK_C], dtype=tl.float32)
    col_acc = tl.zeros([R, BLOCK_C], dtype=tl.float32)
    old = tl.zeros([R], dtype=tl.float32)
    total = tl.zeros([R], dtype=tl.float32)
    for r in range(row0, row0 + nrows, R):
        rows = r + tl.arange(0, R)
        row_mask = rows < row0 + nrows
        mask = row_mask[:, None] & col_mask[None, :]
        offs = block_offsets(base, rs, cs, rows, col0, cols, ACCESS)
        x = load_f32(x_at, offs, mask, pcode, ACCESS)
        g = load_f32(g_at, offs, mask, gcode, ACCESS) * scale
        g2 = g * g
        up += (x * UP) * (x * UP)
        down += (x * DOWN) * (x * DOWN)
        col_acc += g2
        row_sum = tl.sum(g2, axis=1)
        total += row_sum
        tl.store(row_out + rows * row_step, row_sum, mask=row_mask)
        if take_old:
            r_old = tl.load(old_at + rows * old_step, mask=row_mask, other=0.0)
            old += div(r_old, whole_n)
    tl.store(col_out + (col0 + cols) * col_step, tl.sum(col_acc, axis=0), mask=cols < ncols)
    up_sum = tl.sum(tl.sum(up, axis=1), axis=0)
    down_sum = tl.sum(tl.sum(down, axis=1), axis=0)
    return up_sum, down_sum, tl.sum(old, axis=0), tl.sum(total, axis=0)


@triton.jit
def sums_jobs(desc, jobs, sums, scratch, tile_sums):
    """Per job: a tensor's Σ X² (TENSOR, one RMS value per tensor); its slices' Σ (G/√numel)²,
    mean_r(R_{t−1}) and, per slice, Σ X² (SLICES); its rows' sums of G² over columns from the
    column tiles' partials (ROW_LINE), its columns' over rows (COL_LINE)."""
    job = jobs + tl.program_id(0).to(tl.int64) * NJ
    d = desc + tl.load(job + J_TENSOR) * NF
    kind = tl.load(job + J_KIND)
    first, count = tl.load(d + F_FIRST_TILE), tl.load(d + F_TILES)
    psq = sums + tl.load(d + F_PARAM_SQ)
    per_slice, groups = tl.load(d + F_PER_SLICE), tl.load(d + F_RMS_GROUPS)
    if kind == K_TENSOR:
        if per_slice == 0:
            up, down = sum_tiles(tile_sums, first, count, S_UP, S_DOWN)
            tl.store(psq, up)
            tl.store(psq + 1, down)
    elif kind == K_SLICES:
        s0, n_slices = tl.load(job + J_START), tl.load(job + J_COUNT)
        row_tiles, col_tiles = tl.load(d + F_ROW_TILES), tl.load(d + F_COL_TILES)
        per = row_tiles * col_tiles
        total, old = sums + tl.load(d + F_TOTAL), sums + tl.load(d + F_OLD_ROW_MEAN)
        if per > WIDE_TILES:  # one slice, lanes over its tiles
            t_sum, up, down, o_sum = one_slice_sums(tile_sums, first + s0 * per, per, col_tiles)
            tl.store(total + s0, t_sum)
            tl.store(old + s0, o_sum)
            if per_slice == 1:
                tl.store(psq + s0, up)
                tl.store(psq + groups + s0, down)
        else:  # lanes over slices, each over its few tiles
            lanes = tl.arange(0, LANES)
            s, mask = s0 + lanes, lanes < n_slices
            t_sums, ups, downs, o_sums = slice_sums(tile_sums, first, per, col_tiles, s0, n_slices)
            tl.store(total + s, t_sums, mask=mask)
            tl.store(old + s, o_sums, mask=mask)
            if per_slice == 1:
                tl.store(psq + s, ups, mask=mask)
                tl.store(psq + groups + s, downs, mask=mask)
    elif kind == K_ROW_LINE:
        s = tl.load(job + J_SLICE)
        _b, _rs, _cs, row_base, rsr, _cb = slice_start(d, s)
        n, col_tiles = tl.load(d + F_N), tl.load(d + F_COL_TILES)
        part = scratch + tl.load(d + F_ROW_PARTS) + s * col_tiles * n
        out = sums + tl.load(d + F_ROW) + row_base
        _add_parts(part, col_tiles, n, tl.load(job + J_START), tl.load(job + J_COUNT), out, rsr)
    elif kind == K_COL_LINE:
        s = tl.load(job + J_SLICE)
        _b, _rs, cs, _rb, _rsr, col_base = slice_start(d, s)
        m, row_tiles = tl.load(d + F_M), tl.load(d + F_ROW_TILES)
        part = scratch + tl.load(d + F_COL_PARTS) + s * row_tiles * m
        out = sums + tl.load(d + F_COL) + col_base
        _add_parts(part, row_tiles, m, tl.load(job + J_START), tl.load(job + J_COUNT), out, cs)


@triton.jit
def _add_parts(part, parts, length, start, count, out, stride):
    """``out[i·stride] = Σ_p part[p·length + i]`` for ``count`` entries from ``start``, over the
    ``parts`` tiles' partial sums, ``KB`` at a time, in a fixed order."""
    idx = start + tl.arange(0, LINE_LANES)
    mask = tl.arange(0, LINE_LANES) < count
    acc = tl.zeros([KB, LINE_LANES], dtype=tl.float32)
    for p in range(0, parts, KB):
        ps = p + tl.arange(0, KB)
        at = part + ps[:, None].to(tl.int64) * length + idx[None, :]
        acc += tl.load(at, mask=(ps < parts)[:, None] & mask[None, :], other=0.0)
    tl.store(out + idx * stride, tl.sum(acc, axis=0), mask=mask)


# --- Phase 2 --------------------------------------------------------------------------------------


@triton.jit
def statistics(
    desc,
    jobs,
    sums,
    job_sums,
    hp,
    RELATIVE: tl.constexpr,
    WARMUP: tl.constexpr,
    BETA2: tl.constexpr,
    CAP: tl.constexpr,
    GRAD_MOMENTUM: tl.constexpr,
):
    """Per job: R_t or C_t for its entries (in place of their sums) with their count of
    non-finite values, and two numbers that bound Σ U_t² (see ``update_sums_tiles``); for its
    slices mean_r(R_t) (phases.factored_statistics)."""
    j = tl.program_id(0).to(tl.int64)
    job = jobs + j * NJ
    d = desc + tl.load(job + J_TENSOR) * NF
    kind = tl.load(job + J_KIND)
    bad = 0.0
    bound = 0.0
    low = float("inf")
    if (kind == K_SLICES) | (kind == K_ROW_ENTRIES) | (kind == K_COL_ENTRIES):
        beta2_t, _rho, _bias = schedules(d, hp, RELATIVE, WARMUP, BETA2, CAP, GRAD_MOMENTUM)
        w, eps1 = 1.0 - beta2_t, tl.load(hp + H_EPS1)
        # The scales numel/m, numel/n and numel/(n·m) in float64, rounded once (as the eager
        # step's Python numbers).
        numel = tl.load(d + F_WHOLE_NUMEL).to(tl.float64)
        wn, wm = tl.load(d + F_WHOLE_N).to(tl.float64), tl.load(d + F_WHOLE_M).to(tl.float64)
        total_scale = (numel / (wn * wm)).to(tl.float32)
        total, old_mean = sums + tl.load(d + F_TOTAL), sums + tl.load(d + F_OLD_ROW_MEAN)
        lanes = tl.arange(0, LANES)
        k = tl.load(job + J_START) + lanes
        mask = lanes < tl.load(job + J_COUNT)
        if kind == K_SLICES:
            old_k = tl.load(old_mean + k, mask=mask, other=1.0)
            mean = lerp(old_k, total_scale * tl.load(total + k, mask=mask, other=1.0) + eps1, w)
            tl.store(sums + tl.load(d + F_ROW_MEAN) + k, mean, mask=mask)
        else:
            rows = kind == K_ROW_ENTRIES
            if rows:
                length, scale = tl.load(d + F_N), (numel / wm).to(tl.float32)
                old_at, at = tl.load(d + F_STAT_A), sums + tl.load(d + F_ROW)
            else:
                length, scale = tl.load(d + F_M), (numel / wn).to(tl.float32)
                old_at, at = tl.load(d + F_STAT_B), sums + tl.load(d + F_COL)
            sum_sq = tl.load(at + k, mask=mask, other=0.0)
            old = tl.load(f32_pointer(old_at) + k, mask=mask, other=1.0)
            v = lerp(old, scale * sum_sq + eps1, w)
            tl.store(at + k, v, mask=mask)
            bad = tl.sum(tl.where(mask, nonfinite(v), 0.0), axis=0)
            # Σ_j G_ij²·(R̄/R_i) for each row i (Σ U² over its row, but for C's factors), or
            # Σ_i G_ij²/C_j per column; and the least R_i/R̄ (C_j).
            if rows:
                sl = slice_of_entry(d, k, length)
                mean = lerp(
                    tl.load(old_mean + sl, mask=mask, other=1.0),
                    total_scale * tl.load(total + sl, mask=mask, other=1.0) + eps1,
                    w,
                )
                v = div(v, mean)
            weight = div(sum_sq * numel.to(tl.float32), v)
            bound = tl.sum(tl.where(mask, weight, 0.0), axis=0)
            low = tl.min(tl.where(mask, v, float("inf")), axis=0)
    out = job_sums + j * JS_FIELDS
    tl.store(out + JS_NF, bad)
    tl.store(out + JS_BOUND, bound)
    tl.store(out + JS_LOW, low)


@triton.jit
def update_sums_tiles(
    desc,
    tiles,
    order,
    sums,
    tile_sums,
    jobs,
    job_sums,
    hp,
    RELATIVE: tl.constexpr,
    WARMUP: tl.constexpr,
    BETA2: tl.constexpr,
    CAP: tl.constexpr,
    GRAD_MOMENTUM: tl.constexpr,
    ACCESS: tl.constexpr,
):
    """Per tile: Σ U_t² and (full V̂) the count of non-finite V̂_t. A factored tile skips its
    pass (Σ U_t² = 0) where nothing reads Σ U_t² but whether it is finite (no clipping, no
    diagnostics: ``HP.SUM_SQ_U``) and its tensor's bound proves it finite, as the eager
    step's ``finite`` then is (D_t = G_t: with Adam's momentum the pass always runs)."""
    k = tl.load(order + tl.program_id(0))
    tile = tiles + k * NT
    d = desc + tl.load(tile + T_TENSOR) * NF
    gcode, g_at = tl.load(d + F_GRAD_DTYPE), tl.load(d + F_GRAD)
    mcode, m_at = tl.load(d + F_MOMENTUM_DTYPE), tl.load(d + F_MOMENTUM)
    beta2_t, _rho, bias = schedules(d, hp, RELATIVE, WARMUP, BETA2, CAP, GRAD_MOMENTUM)
    w1 = 1.0 - tl.load(hp + H_BETA1)
    row0, nrows = tl.load(tile + T_ROW0), tl.load(tile + T_ROWS)
    su = 0.0
    bad = 0.0
    if tl.load(d + F_FACTORED) == 0:
        w, eps1 = 1.0 - beta2_t, tl.load(hp + H_EPS1)
        v_at = tl.load(d + F_STAT_A)
        su, bad = _full_update_sums(
            g_at, gcode, v_at, m_at, mcode, row0, nrows, w, eps1, bias, w1, GRAD_MOMENTUM,
            ACCESS,
        )  # fmt: skip
    else:
        need = (tl.load(hp + H_SUM_SQ_U) != 0.0) | GRAD_MOMENTUM
        if not GRAD_MOMENTUM:
            proven = tl.where(_bound(d, jobs, job_sums) < BOUND_LIMIT, 1, 0)  # 0 for NaN
            need = need | (proven == 0)
        if need:
            s = tl.load(tile + T_SLICE)
            base, rs, cs, row_base, rsr, col_base = slice_start(d, s)
            col0, ncols = tl.load(tile + T_COL0), tl.load(tile + T_COLS)
            cols = tl.arange(0, BLOCK_C)
            mean = tl.load(sums + tl.load(d + F_ROW_MEAN) + s)
            col_at = sums + tl.load(d + F_COL) + col_base
            cf = inverse_sqrt(tl.load(col_at + (col0 + cols) * cs, mask=cols < ncols, other=1.0))
            row_at = sums + tl.load(d + F_ROW) + row_base
            su = _factored_update_sums(
                g_at, gcode, m_at, mcode, base, rs, cs, col0, ncols, row0, nrows, row_at,
                rsr, mean, cf, bias, w1, GRAD_MOMENTUM, ACCESS,
            )  # fmt: skip
    out = tile_sums + k * S_FIELDS
    tl.store(out + S_SU, su)
    tl.store(out + S_NF, bad)


@triton.jit
def _bound(d, jobs, job_sums):
    """An upper bound on Σ U_t² of the tensor at ``d`` with D_t = G_t, from its entry jobs'
    numbers (``statistics``): U_ij² = G_ij²·(R̄/R_i)·(1/C_j), so Σ U² is at most the rows'
    Σ_i Σ_j G_ij²·(R̄/R_i) over the least C_j, and at most the columns' Σ_j Σ_i G_ij²/C_j over
    the least R_i/R̄; the smaller of the two (NaN or inf where neither is finite: no proof)."""
    first, count = tl.load(d + F_FIRST_JOB), tl.load(d + F_JOBS)
    row_sum = tl.zeros([LANES], dtype=tl.float32)
    col_sum = tl.zeros([LANES], dtype=tl.float32)
    row_low = tl.full([LANES], float("inf"), dtype=tl.float32)
    col_low = tl.full([LANES], float("inf"), dtype=tl.float32)
    for at in range(0, count, LANES):
        idx = at + tl.arange(0, LANES)
        j = first + idx
        kind = tl.load(jobs + j * NJ + J_KIND, mask=idx < count, other=-1)
        b = tl.load(job_sums + j * JS_FIELDS + JS_BOUND, mask=idx < count, other=0.0)
        lo = tl.load(job_sums + j * JS_FIELDS + JS_LOW, mask=idx < count, other=0.0)
        row_sum += tl.where(kind == K_ROW_ENTRIES, b, 0.0)
        col_sum += tl.where(kind == K_COL_ENTRIES, b, 0.0)
        row_low = tl.minimum(row_low, tl.where(kind == K_ROW_ENTRIES, lo, float("inf")))
        col_low = tl.minimum(col_low, tl.where(kind == K_COL_ENTRIES, lo, float("inf")))
    by_rows = div(tl.sum(row_sum, axis=0), tl.min(col_low, axis=0))
    by_cols = div(tl.sum(col_sum, axis=0), tl.min(row_low, axis=0))
    return tl.where(by_rows < by_cols, by_rows, by_cols)


@triton.jit
def _full_update_sums(
    g_at,
    gcode,
    v_at,
    m_at,
    mcode,
    row0,
    nrows,
    w,
    eps1,
    bias,
    w1,
    GRAD_MOMENTUM: tl.constexpr,
    ACCESS: tl.constexpr,
):
    """Σ U_t² and the count of non-finite V̂_t over elements of a flat tensor."""
    R: tl.constexpr = ROWS if ACCESS == A_VECTOR else SCALAR_ROWS
    su = tl.zeros([R, BLOCK_C], dtype=tl.float32)
    bad = tl.zeros([R, BLOCK_C], dtype=tl.float32)
    for e in range(row0, row0 + nrows, R * BLOCK_C):
        offs, mask = flat_block(e, row0 + nrows, R, ACCESS)
        g = load_f32(g_at, offs, mask, gcode, ACCESS)
        direction, _ = step_direction(g, m_at, mcode, offs, mask, bias, w1, GRAD_MOMENTUM, ACCESS)
        v_old = tl.load(typed(v_at, tl.float32, ACCESS) + offs, mask=mask, other=1.0)
        v = lerp(v_old, g * g + eps1, w)
        bad += tl.where(mask, nonfinite(v), 0.0)
        u = tl.where(mask, div(direction, tl.sqrt_rn(v)), 0.0)
        su += u * u
    return tl.sum(tl.sum(su, axis=1), axis=0), tl.sum(tl.sum(bad, axis=1), axis=0)


@triton.jit
def _factored_update_sums(
    g_at,
    gcode,
    m_at,
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
    bias,
    w1,
    GRAD_MOMENTUM: tl.constexpr,
    ACCESS: tl.constexpr,
):
    """Σ U_t² over one tile of a factored slice (``cf``: its columns' C_j^−½)."""
    R: tl.constexpr = ROWS if ACCESS == A_VECTOR else SCALAR_ROWS
    cols = tl.arange(0, BLOCK_C)
    col_mask = column_mask(cols, ncols, ACCESS)
    su = tl.zeros([R, BLOCK_C], dtype=tl.float32)
    for r in range(row0, row0 + nrows, R):
        rows = r + tl.arange(0, R)
        row_mask = rows < row0 + nrows
        mask = row_mask[:, None] & col_mask[None, :]
        offs = block_offsets(base, rs, cs, rows, col0, cols, ACCESS)
        rf = inverse_sqrt(div(tl.load(row_at + rows * rsr, mask=row_mask, other=1.0), mean))
        g = load_f32(g_at, offs, mask, gcode, ACCESS)
        direction, _ = step_direction(g, m_at, mcode, offs, mask, bias, w1, GRAD_MOMENTUM, ACCESS)
        u = tl.where(mask, direction * rf[:, None] * cf[None, :], 0.0)
        su += u * u
    return tl.sum(tl.sum(su, axis=1), axis=0)


@triton.jit
def update_sums_jobs(desc, jobs, sums, tile_sums, job_sums):
    """Per job: Σ U_t² per RMS group (TENSOR for one per tensor, SLICES per slice), and the
    tensor's count of non-finite statistics (TENSOR: its entry jobs' and its tiles')."""
    job = jobs + tl.program_id(0).to(tl.int64) * NJ
    d = desc + tl.load(job + J_TENSOR) * NF
    kind = tl.load(job + J_KIND)
    first, count = tl.load(d + F_FIRST_TILE), tl.load(d + F_TILES)
    su = sums + tl.load(d + F_SUM_SQ_U)
    per_slice = tl.load(d + F_PER_SLICE)
    if kind == K_TENSOR:
        sum_u, tile_bad = sum_tiles(tile_sums, first, count, S_SU, S_NF)
        if per_slice == 0:
            tl.store(su, sum_u)
        first_job, job_count = tl.load(d + F_FIRST_JOB), tl.load(d + F_JOBS)
        acc = tl.zeros([LANES], dtype=tl.float32)
        for at in range(0, job_count, LANES):
            idx = at + tl.arange(0, LANES)
            j = first_job + idx
            acc += tl.load(job_sums + j * JS_FIELDS + JS_NF, mask=idx < job_count, other=0.0)
        bad = tl.sum(acc, axis=0) + tile_bad
        tl.store(sums + tl.load(d + F_NONFINITE), bad)
    elif (kind == K_SLICES) & (per_slice == 1):
        s0, n_slices = tl.load(job + J_START), tl.load(job + J_COUNT)
        per = tl.load(d + F_ROW_TILES) * tl.load(d + F_COL_TILES)
        if per > WIDE_TILES:
            sum_u, _ = sum_tiles(tile_sums, first + s0 * per, per, S_SU, S_SU)
            tl.store(su + s0, sum_u)
        else:
            lanes = tl.arange(0, LANES)
            sums_u = field_of_slices(tile_sums, first, per, S_SU, s0, n_slices)
            tl.store(su + s0 + lanes, sums_u, mask=lanes < n_slices)
