"""Phases 1 and 2 on CUDA: the sums of G², X² and R_{t−1} over every tile of a group
(``sums_tiles``) completed per tensor (``sums_tensors``), then R_t and C_t (``statistics``)
and the sums of U_t² (``update_sums_tiles``, ``update_sums_tensors``). Each sum is reduced
in a fixed order, with no atomics, so a step is deterministic.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_lanes import (
    F_COL,
    F_COL_PARTS,
    F_COL_TILES,
    F_FACTORED,
    F_FIRST_TILE,
    F_GRAD,
    F_GRAD_DTYPE,
    F_M,
    F_N,
    F_NONFINITE,
    F_OLD_ROW_MEAN,
    F_PARAM,
    F_PARAM_DTYPE,
    F_PARAM_SQ,
    F_PER_SLICE,
    F_RMS_GROUPS,
    F_ROW,
    F_ROW_PARTS,
    F_ROW_TILES,
    F_SLICES,
    F_STAT_A,
    F_STAT_B,
    F_SUM_SQ_U,
    F_TILES,
    F_TOTAL,
    F_WHOLE_M,
    F_WHOLE_N,
    F_WHOLE_NUMEL,
    H_EPS1,
    NF,
    NT,
    S_DOWN,
    S_FIELDS,
    S_NF,
    S_OLD,
    S_SU,
    S_UP,
    T_COL0,
    T_COL_TILE,
    T_COLS,
    T_ROW0,
    T_ROW_TILE,
    T_ROWS,
    T_SLICE,
    T_TENSOR,
    div,
    f32_pointer,
    inverse_sqrt,
    lerp,
    load_f32,
    nonfinite,
    schedules,
    slice_start,
    step_direction,
)


@triton.jit
def sums_tiles(desc, tiles, sums, scratch, tile_sums, BLOCK_C: tl.constexpr, ROWS: tl.constexpr):
    """Per tile: Σ X² at both scales, Σ R_{t−1}/n over its rows, the sums of (G/√numel)² over
    its columns (to R's place, or its partials) and over its rows (to C's, or partials)."""
    k = tl.program_id(0).to(tl.int64)
    tile = tiles + k * NT
    d = desc + tl.load(tile + T_TENSOR) * NF
    pcode, gcode = tl.load(d + F_PARAM_DTYPE), tl.load(d + F_GRAD_DTYPE)
    x_at, g_at = tl.load(d + F_PARAM), tl.load(d + F_GRAD)
    row0, nrows = tl.load(tile + T_ROW0), tl.load(tile + T_ROWS)
    up = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
    down = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
    old = 0.0
    if tl.load(d + F_FACTORED) == 0:
        lane = tl.arange(0, ROWS)[:, None] * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
        for e in range(row0, row0 + nrows, ROWS * BLOCK_C):
            offs = e + lane
            mask = offs < row0 + nrows
            x = load_f32(x_at, offs, mask, pcode)
            up += (x * 4294967296.0) * (x * 4294967296.0)
            down += (x * 2.3283064365386963e-10) * (x * 2.3283064365386963e-10)
    else:
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
        old_row = f32_pointer(tl.load(d + F_STAT_A))
        cols = tl.arange(0, BLOCK_C)
        col_mask = cols < ncols
        col_acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for r in range(row0, row0 + nrows, ROWS):
            rows = r + tl.arange(0, ROWS)
            row_mask = rows < row0 + nrows
            mask = row_mask[:, None] & col_mask[None, :]
            offs = base + rows[:, None].to(tl.int64) * rs + (col0 + cols)[None, :] * cs
            x = load_f32(x_at, offs, mask, pcode)
            g = load_f32(g_at, offs, mask, gcode) * scale
            g2 = g * g
            up += (x * 4294967296.0) * (x * 4294967296.0)
            down += (x * 2.3283064365386963e-10) * (x * 2.3283064365386963e-10)
            col_acc += tl.sum(g2, axis=0)
            row_sum = tl.sum(g2, axis=1)
            if col_tiles == 1:
                tl.store(sums + tl.load(d + F_ROW) + row_base + rows * rsr, row_sum, mask=row_mask)
            else:
                part = scratch + tl.load(d + F_ROW_PARTS) + (s * col_tiles + ct) * n
                tl.store(part + rows, row_sum, mask=row_mask)
            if ct == 0:
                r_old = tl.load(old_row + row_base + rows * rsr, mask=row_mask, other=0.0)
                old += tl.sum(div(r_old, whole_n), axis=0)
        if row_tiles == 1:
            tl.store(
                sums + tl.load(d + F_COL) + col_base + (col0 + cols) * cs, col_acc, mask=col_mask
            )
        else:
            part = scratch + tl.load(d + F_COL_PARTS) + (s * row_tiles + rt) * m
            tl.store(part + col0 + cols, col_acc, mask=col_mask)
    out = tile_sums + k * S_FIELDS
    tl.store(out + S_UP, tl.sum(tl.sum(up, axis=1), axis=0))
    tl.store(out + S_DOWN, tl.sum(tl.sum(down, axis=1), axis=0))
    tl.store(out + S_OLD, old)


@triton.jit
def _sum_tiles(tile_sums, first, count, field, BLOCK: tl.constexpr):
    """The sum of one field of ``count`` tiles from ``first``, in a fixed order."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(0, count, BLOCK):
        idx = k + tl.arange(0, BLOCK)
        acc += tl.load(tile_sums + (first + idx) * S_FIELDS + field, mask=idx < count, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def sums_tensors(desc, sums, scratch, tile_sums, BLOCK: tl.constexpr, SPLIT: tl.constexpr):
    """Per tensor: its sums from the tiles' partials (program (i, j) takes every SPLIT-th
    slice from j; program (i, 0) also the whole-tensor Σ X²)."""
    i, j = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    d = desc + i * NF
    first, count = tl.load(d + F_FIRST_TILE), tl.load(d + F_TILES)
    psq = sums + tl.load(d + F_PARAM_SQ)
    per_slice = tl.load(d + F_PER_SLICE)
    slices, groups = tl.load(d + F_SLICES), tl.load(d + F_RMS_GROUPS)
    if (j == 0) & (per_slice == 0):
        tl.store(psq, _sum_tiles(tile_sums, first, count, S_UP, BLOCK))
        tl.store(psq + 1, _sum_tiles(tile_sums, first, count, S_DOWN, BLOCK))
    if tl.load(d + F_FACTORED) == 1:
        n, m = tl.load(d + F_N), tl.load(d + F_M)
        row_tiles, col_tiles = tl.load(d + F_ROW_TILES), tl.load(d + F_COL_TILES)
        per = row_tiles * col_tiles
        lanes = tl.arange(0, BLOCK)
        for s in range(j, slices, SPLIT):
            _base, _rs, cs, row_base, rsr, col_base = slice_start(d, s)
            if per_slice == 1:
                tl.store(psq + s, _sum_tiles(tile_sums, first + s * per, per, S_UP, BLOCK))
                tl.store(
                    psq + groups + s, _sum_tiles(tile_sums, first + s * per, per, S_DOWN, BLOCK)
                )
            row = sums + tl.load(d + F_ROW) + row_base
            total = tl.zeros([BLOCK], dtype=tl.float32)
            for r in range(0, n, BLOCK):
                rows = r + lanes
                mask = rows < n
                if col_tiles > 1:
                    part = scratch + tl.load(d + F_ROW_PARTS) + s * col_tiles * n + rows
                    acc = tl.zeros([BLOCK], dtype=tl.float32)
                    for ct in range(0, col_tiles):
                        acc += tl.load(part + ct * n, mask=mask, other=0.0)
                    tl.store(row + rows * rsr, acc, mask=mask)
                total += tl.load(row + rows * rsr, mask=mask, other=0.0)
            tl.store(sums + tl.load(d + F_TOTAL) + s, tl.sum(total, axis=0))
            if row_tiles > 1:
                col = sums + tl.load(d + F_COL) + col_base
                for c in range(0, m, BLOCK):
                    cols = c + lanes
                    mask = cols < m
                    part = scratch + tl.load(d + F_COL_PARTS) + s * row_tiles * m + cols
                    acc = tl.zeros([BLOCK], dtype=tl.float32)
                    for rt in range(0, row_tiles):
                        acc += tl.load(part + rt * m, mask=mask, other=0.0)
                    tl.store(col + cols * cs, acc, mask=mask)
            old = tl.zeros([BLOCK], dtype=tl.float32)
            for rt in range(0, row_tiles, BLOCK):
                idx = rt + lanes
                tile_index = first + s * per + idx * col_tiles  # the slice's tiles in column 0
                old += tl.load(
                    tile_sums + tile_index * S_FIELDS + S_OLD, mask=idx < row_tiles, other=0.0
                )
            tl.store(sums + tl.load(d + F_OLD_ROW_MEAN) + s, tl.sum(old, axis=0))


# --- Phase 2 --------------------------------------------------------------------------------------


@triton.jit
def statistics(
    desc,
    sums,
    partials,
    hp,
    RELATIVE: tl.constexpr,
    WARMUP: tl.constexpr,
    BETA2: tl.constexpr,
    CAP: tl.constexpr,
    GRAD_MOMENTUM: tl.constexpr,
    BLOCK: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Per tensor: R_t, C_t (in place of their sums) and mean_r(R_t) (in place of the total),
    and a partial count of non-finite statistics (phases.factored_statistics)."""
    i, j = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    d = desc + i * NF
    bad = tl.zeros([BLOCK], dtype=tl.float32)
    if tl.load(d + F_FACTORED) == 1:
        beta2_t, _rho, _bias = schedules(d, hp, RELATIVE, WARMUP, BETA2, CAP, GRAD_MOMENTUM)
        w, eps1 = 1.0 - beta2_t, tl.load(hp + H_EPS1)
        # The scales numel/m, numel/n and numel/(n·m) in float64, rounded once (as the eager
        # step's Python numbers).
        numel = tl.load(d + F_WHOLE_NUMEL).to(tl.float64)
        wn, wm = tl.load(d + F_WHOLE_N).to(tl.float64), tl.load(d + F_WHOLE_M).to(tl.float64)
        slices, n, m = tl.load(d + F_SLICES), tl.load(d + F_N), tl.load(d + F_M)
        old_row, old_col = f32_pointer(tl.load(d + F_STAT_A)), f32_pointer(tl.load(d + F_STAT_B))
        row, col = sums + tl.load(d + F_ROW), sums + tl.load(d + F_COL)
        total, old_mean = sums + tl.load(d + F_TOTAL), sums + tl.load(d + F_OLD_ROW_MEAN)
        row_scale = (numel / wm).to(tl.float32)
        col_scale = (numel / wn).to(tl.float32)
        total_scale = (numel / (wn * wm)).to(tl.float32)
        bad += _statistic(old_row, row, slices * n, row_scale, eps1, w, j, BLOCK, SPLIT)
        bad += _statistic(old_col, col, slices * m, col_scale, eps1, w, j, BLOCK, SPLIT)
        _statistic(old_mean, total, slices, total_scale, eps1, w, j, BLOCK, SPLIT)
    tl.store(partials + i * SPLIT + j, tl.sum(bad, axis=0))


@triton.jit
def _statistic(old, sums, count, scale, eps1, w, j, BLOCK: tl.constexpr, SPLIT: tl.constexpr):
    """``lerp(old, scale·sums + ε1, 1 − β̂2_t)`` in place of ``sums`` for this program's share of
    ``count`` entries (equations.second_moment_statistic); per lane, how many are not finite."""
    lanes = tl.arange(0, BLOCK)
    bad = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(j * BLOCK, count, SPLIT * BLOCK):
        idx = k + lanes
        mask = idx < count
        v = lerp(
            tl.load(old + idx, mask=mask, other=0.0),
            scale * tl.load(sums + idx, mask=mask, other=0.0) + eps1,
            w,
        )
        tl.store(sums + idx, v, mask=mask)
        bad += tl.where(mask, nonfinite(v), 0.0)
    return bad


@triton.jit
def update_sums_tiles(
    desc,
    tiles,
    sums,
    tile_sums,
    hp,
    RELATIVE: tl.constexpr,
    WARMUP: tl.constexpr,
    BETA2: tl.constexpr,
    CAP: tl.constexpr,
    GRAD_MOMENTUM: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ROWS: tl.constexpr,
):
    """Per tile: Σ U_t² and (full V̂) the count of non-finite V̂_t."""
    k = tl.program_id(0).to(tl.int64)
    tile = tiles + k * NT
    d = desc + tl.load(tile + T_TENSOR) * NF
    gcode = tl.load(d + F_GRAD_DTYPE)
    g_at = tl.load(d + F_GRAD)
    beta2_t, _rho, bias = schedules(d, hp, RELATIVE, WARMUP, BETA2, CAP, GRAD_MOMENTUM)
    row0, nrows = tl.load(tile + T_ROW0), tl.load(tile + T_ROWS)
    su = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
    bad = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
    if tl.load(d + F_FACTORED) == 0:
        w, eps1 = 1.0 - beta2_t, tl.load(hp + H_EPS1)
        v_old = f32_pointer(tl.load(d + F_STAT_A))
        lane = tl.arange(0, ROWS)[:, None] * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
        for e in range(row0, row0 + nrows, ROWS * BLOCK_C):
            offs = e + lane
            mask = offs < row0 + nrows
            g = load_f32(g_at, offs, mask, gcode)
            direction, _ = step_direction(d, g, offs, mask, bias, hp, GRAD_MOMENTUM)
            v = lerp(tl.load(v_old + offs, mask=mask, other=1.0), g * g + eps1, w)
            bad += tl.where(mask, nonfinite(v), 0.0)
            u = tl.where(mask, div(direction, tl.sqrt_rn(v)), 0.0)
            su += u * u
    else:
        s = tl.load(tile + T_SLICE)
        base, rs, cs, row_base, rsr, col_base = slice_start(d, s)
        col0, ncols = tl.load(tile + T_COL0), tl.load(tile + T_COLS)
        cols = tl.arange(0, BLOCK_C)
        col_mask = cols < ncols
        mean = tl.load(sums + tl.load(d + F_TOTAL) + s)
        cf = inverse_sqrt(
            tl.load(
                sums + tl.load(d + F_COL) + col_base + (col0 + cols) * cs, mask=col_mask, other=1.0
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
                        sums + tl.load(d + F_ROW) + row_base + rows * rsr, mask=row_mask, other=1.0
                    ),
                    mean,
                )
            )
            g = load_f32(g_at, offs, mask, gcode)
            direction, _m = step_direction(d, g, offs, mask, bias, hp, GRAD_MOMENTUM)
            u = tl.where(mask, direction * rf[:, None] * cf[None, :], 0.0)
            su += u * u
    out = tile_sums + k * S_FIELDS
    tl.store(out + S_SU, tl.sum(tl.sum(su, axis=1), axis=0))
    tl.store(out + S_NF, tl.sum(tl.sum(bad, axis=1), axis=0))


@triton.jit
def update_sums_tensors(desc, sums, partials, tile_sums, BLOCK: tl.constexpr, SPLIT: tl.constexpr):
    """Per tensor: Σ U_t² per RMS group and the count of non-finite statistics."""
    i, j = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    d = desc + i * NF
    first, count = tl.load(d + F_FIRST_TILE), tl.load(d + F_TILES)
    su = sums + tl.load(d + F_SUM_SQ_U)
    if tl.load(d + F_PER_SLICE) == 1:
        per = tl.load(d + F_ROW_TILES) * tl.load(d + F_COL_TILES)
        for s in range(j, tl.load(d + F_SLICES), SPLIT):
            tl.store(su + s, _sum_tiles(tile_sums, first + s * per, per, S_SU, BLOCK))
    elif j == 0:
        tl.store(su, _sum_tiles(tile_sums, first, count, S_SU, BLOCK))
    if j == 0:
        lanes = tl.arange(0, SPLIT)
        bad = tl.sum(tl.load(partials + i * SPLIT + lanes), axis=0)
        bad += _sum_tiles(tile_sums, first, count, S_NF, BLOCK)
        tl.store(sums + tl.load(d + F_NONFINITE), bad)
