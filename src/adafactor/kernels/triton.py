"""The group step on CUDA: Triton kernels that walk the tables of ``plan.py``, eight launches
per group and step however many tensors the group holds (``LAUNCHES`` counts them).

Each launch takes the whole group: the tile kernels (``_sums_tiles``, ``_update_sums_tiles``,
``_apply_tiles``) have one program per tile, the tensor kernels one program per tensor and
``SPLIT`` slices of it. A data pointer is read from the descriptor table and cast to the
tensor's dtype, chosen at run time (float32, bfloat16, float16). Every sum is reduced in a
fixed order, with no atomics, so a step is deterministic. The group's numbers (lr, ε, β…) are
read from a device tensor and every tensor's step count from its state, so nothing recompiles
when they change and nothing waits for the host; the options that choose what the step does
(momentum, clipping, …) are compile-time constants. The tests run these kernels on CPU
tensors through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import collections
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..options import Hyperparameters
from .plan import HP, Field, Flag, Geometry, Plan, Tile
from .plan import flags as plan_flags
from .plan import numbers as plan_numbers

DEVICE_TYPE = "cuda"
GEOMETRY = Geometry(rows=512, cols=512)
"""Tiles of 512 × 512: one program's block of columns is 512 wide."""
MAX_SPLIT = 32
"""The most programs per tensor in the tensor kernels (``SPLIT``, each taking every
``SPLIT``-th slice or block): a group's longest statistics decide, once per plan."""
TILE_SUMS = 6  # per tile: Σ(X·2^32)², Σ(X·2^−32)², Σ R_{t−1}/n, Σ U², non-finite count

LAUNCHES: collections.Counter[str] = collections.Counter()
"""Kernel launches made, by kernel name (read by the tests)."""

# The tables' columns as compile-time constants of the kernels.
NF: tl.constexpr = tl.constexpr(len(Field))
NT: tl.constexpr = tl.constexpr(len(Tile))
F_PARAM: tl.constexpr = tl.constexpr(Field.PARAM)
F_GRAD: tl.constexpr = tl.constexpr(Field.GRAD)
F_STAT_A: tl.constexpr = tl.constexpr(Field.STAT_A)
F_STAT_B: tl.constexpr = tl.constexpr(Field.STAT_B)
F_MOMENTUM: tl.constexpr = tl.constexpr(Field.MOMENTUM)
F_STEP: tl.constexpr = tl.constexpr(Field.STEP)
F_SKIPS: tl.constexpr = tl.constexpr(Field.SKIPS)
F_FACTORED: tl.constexpr = tl.constexpr(Field.FACTORED)
F_PARAM_DTYPE: tl.constexpr = tl.constexpr(Field.PARAM_DTYPE)
F_MOMENTUM_DTYPE: tl.constexpr = tl.constexpr(Field.MOMENTUM_DTYPE)
F_N: tl.constexpr = tl.constexpr(Field.N)
F_B: tl.constexpr = tl.constexpr(Field.B)
F_M: tl.constexpr = tl.constexpr(Field.M)
F_C: tl.constexpr = tl.constexpr(Field.C)
F_WHOLE_NUMEL: tl.constexpr = tl.constexpr(Field.WHOLE_NUMEL)
F_WHOLE_N: tl.constexpr = tl.constexpr(Field.WHOLE_N)
F_WHOLE_M: tl.constexpr = tl.constexpr(Field.WHOLE_M)
F_PER_SLICE: tl.constexpr = tl.constexpr(Field.PER_SLICE)
F_ROW: tl.constexpr = tl.constexpr(Field.ROW)
F_COL: tl.constexpr = tl.constexpr(Field.COL)
F_PARAM_SQ: tl.constexpr = tl.constexpr(Field.PARAM_SQ)
F_TOTAL: tl.constexpr = tl.constexpr(Field.TOTAL)
F_OLD_ROW_MEAN: tl.constexpr = tl.constexpr(Field.OLD_ROW_MEAN)
F_SUM_SQ_U: tl.constexpr = tl.constexpr(Field.SUM_SQ_U)
F_NONFINITE: tl.constexpr = tl.constexpr(Field.NONFINITE)
F_ALPHA: tl.constexpr = tl.constexpr(Field.ALPHA)
F_UPDATE_RMS: tl.constexpr = tl.constexpr(Field.UPDATE_RMS)
F_FINITE: tl.constexpr = tl.constexpr(Field.FINITE)
F_FIRST_TILE: tl.constexpr = tl.constexpr(Field.FIRST_TILE)
F_TILES: tl.constexpr = tl.constexpr(Field.TILES)
F_ROW_TILES: tl.constexpr = tl.constexpr(Field.ROW_TILES)
F_COL_TILES: tl.constexpr = tl.constexpr(Field.COL_TILES)
F_ROW_PARTS: tl.constexpr = tl.constexpr(Field.ROW_PARTS)
F_COL_PARTS: tl.constexpr = tl.constexpr(Field.COL_PARTS)
F_SLICES: tl.constexpr = tl.constexpr(Field.SLICES)
F_RMS_GROUPS: tl.constexpr = tl.constexpr(Field.RMS_GROUPS)
T_TENSOR: tl.constexpr = tl.constexpr(Tile.TENSOR)
T_SLICE: tl.constexpr = tl.constexpr(Tile.SLICE)
T_ROW0: tl.constexpr = tl.constexpr(Tile.ROW0)
T_ROWS: tl.constexpr = tl.constexpr(Tile.ROWS)
T_COL0: tl.constexpr = tl.constexpr(Tile.COL0)
T_COLS: tl.constexpr = tl.constexpr(Tile.COLS)
T_ROW_TILE: tl.constexpr = tl.constexpr(Tile.ROW_TILE)
T_COL_TILE: tl.constexpr = tl.constexpr(Tile.COL_TILE)
H_LR: tl.constexpr = tl.constexpr(HP.LR)
H_EPS1: tl.constexpr = tl.constexpr(HP.EPS1)
H_EPS2: tl.constexpr = tl.constexpr(HP.EPS2)
H_CLIP: tl.constexpr = tl.constexpr(HP.CLIP_THRESHOLD)
H_DECAY_RATE: tl.constexpr = tl.constexpr(HP.DECAY_RATE)
H_BETA2_CAP: tl.constexpr = tl.constexpr(HP.BETA2_CAP)
H_DECAY_OFFSET: tl.constexpr = tl.constexpr(HP.DECAY_OFFSET)
H_BETA1: tl.constexpr = tl.constexpr(HP.BETA1)
H_BETA2: tl.constexpr = tl.constexpr(HP.BETA2)
H_WEIGHT_DECAY: tl.constexpr = tl.constexpr(HP.WEIGHT_DECAY)
S_UP: tl.constexpr = tl.constexpr(0)
S_DOWN: tl.constexpr = tl.constexpr(1)
S_OLD: tl.constexpr = tl.constexpr(2)
S_SU: tl.constexpr = tl.constexpr(3)
S_NF: tl.constexpr = tl.constexpr(4)
S_FIELDS: tl.constexpr = tl.constexpr(TILE_SUMS)


def available() -> bool:
    """Whether the kernels can run: a CUDA device (Triton is imported)."""
    return torch.cuda.is_available()


# --- Reading and writing the group's tensors --------------------------------------------------


@triton.jit
def _load(addr, offs, mask, code):
    """Elements ``offs`` of the tensor at address ``addr`` of dtype ``code``, as float32."""
    if code == 0:
        x = tl.load(addr.to(tl.pointer_type(tl.float32)) + offs, mask=mask, other=0.0)
    elif code == 1:
        x = tl.load(addr.to(tl.pointer_type(tl.bfloat16)) + offs, mask=mask, other=0.0)
        x = x.to(tl.float32)
    else:
        x = tl.load(addr.to(tl.pointer_type(tl.float16)) + offs, mask=mask, other=0.0)
        x = x.to(tl.float32)
    return x


@triton.jit
def _round_bf16(x):
    """float32 ``x`` rounded to the nearest bfloat16 (ties to even), as float32: done on the
    bits, so that the result is torch's on every Triton (the interpreter's cast truncates)."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _store(addr, offs, x, mask, code):
    """Store float32 ``x`` as dtype ``code``, rounded to nearest even."""
    if code == 0:
        tl.store(addr.to(tl.pointer_type(tl.float32)) + offs, x, mask=mask)
    elif code == 1:
        y = _round_bf16(x).to(tl.bfloat16)  # exact: the value is a bfloat16 already
        tl.store(addr.to(tl.pointer_type(tl.bfloat16)) + offs, y, mask=mask)
    else:
        tl.store(addr.to(tl.pointer_type(tl.float16)) + offs, x.to(tl.float16), mask=mask)


@triton.jit
def _stored(x, code):
    """``x`` as a state of dtype ``code`` keeps it (phases.stored)."""
    if code == 1:
        x = _round_bf16(x)
    elif code == 2:
        x = x.to(tl.float16).to(tl.float32)
    return x


@triton.jit
def _f32(addr):
    return addr.to(tl.pointer_type(tl.float32))


@triton.jit
def _nonfinite(x):
    """1.0 where ``x`` is NaN or infinite (x − x is 0 only for finite x), else 0.0."""
    return tl.where((x - x) != 0.0, 1.0, 0.0)


@triton.jit
def _pow(x, y):
    """``x^y`` for x ≥ 0 (``x^0 = 1``)."""
    return tl.where(y == 0.0, 1.0, tl.exp2(y * tl.log2(x)))


@triton.jit
def _lerp(start, end, w):
    """torch.lerp's formula."""
    return tl.where(w < 0.5, start + w * (end - start), end - (end - start) * (1.0 - w))


@triton.jit
def _schedule(
    d,
    hp,
    RELATIVE: tl.constexpr,
    WARMUP: tl.constexpr,
    BETA2: tl.constexpr,
    CAP: tl.constexpr,
    GRAD_MOMENTUM: tl.constexpr,
):
    """β̂2_t, ρ_t and the bias correction of the tensor with descriptor row ``d`` (schedules.py)."""
    t = tl.load(_f32(tl.load(d + F_STEP))) + 1.0
    td = tl.maximum(t - tl.load(hp + H_DECAY_OFFSET), 1.0)
    if BETA2:
        b2 = tl.load(hp + H_BETA2)
        beta2_t = b2 * (1.0 - _pow(b2, td - 1.0)) / (1.0 - _pow(b2, td))
    else:
        beta2_t = 1.0 - _pow(td, -tl.load(hp + H_DECAY_RATE))
    if CAP:
        beta2_t = tl.minimum(beta2_t, tl.load(hp + H_BETA2_CAP))
    lr = tl.load(hp + H_LR)
    if RELATIVE:
        rho = tl.minimum(1.0 / tl.sqrt(t), lr)
        if WARMUP:
            rho = tl.minimum(rho, 1e-6 * t)
    else:
        rho = lr + 0.0 * t
    bias = 1.0 / (1.0 - _pow(tl.load(hp + H_BETA1), t)) if GRAD_MOMENTUM else 1.0 + 0.0 * t
    return beta2_t, rho, bias


@triton.jit
def _slice(d, s):
    """Where slice ``s`` of a factored tensor starts in X (rows and columns apart by the two
    strides), in R-shaped buffers (rows apart by the third) and in C-shaped ones."""
    n, bb, m, cc = tl.load(d + F_N), tl.load(d + F_B), tl.load(d + F_M), tl.load(d + F_C)
    a, b, c = s // (bb * cc), (s // cc) % bb, s % cc
    base = a * n * bb * m * cc + b * m * cc + c
    row_base = a * n * bb * cc + b * cc + c
    col_base = a * bb * m * cc + b * m * cc + c
    return base, bb * m * cc, cc, row_base, bb * cc, col_base


# --- Phase 1 --------------------------------------------------------------------------------------


@triton.jit
def _sums_tiles(desc, tiles, sums, scratch, tile_sums, BLOCK_C: tl.constexpr, ROWS: tl.constexpr):
    """Per tile: Σ X² at both scales, Σ R_{t−1}/n over its rows, the sums of (G/√numel)² over
    its columns (to R's place, or its partials) and over its rows (to C's, or partials)."""
    k = tl.program_id(0).to(tl.int64)
    tile = tiles + k * NT
    d = desc + tl.load(tile + T_TENSOR) * NF
    pcode = tl.load(d + F_PARAM_DTYPE)
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
            x = _load(x_at, offs, mask, pcode)
            up += (x * 4294967296.0) * (x * 4294967296.0)
            down += (x * 2.3283064365386963e-10) * (x * 2.3283064365386963e-10)
    else:
        s = tl.load(tile + T_SLICE)
        base, rs, cs, row_base, rsr, col_base = _slice(d, s)
        n, m = tl.load(d + F_N), tl.load(d + F_M)
        row_tiles, col_tiles = tl.load(d + F_ROW_TILES), tl.load(d + F_COL_TILES)
        ct, rt = tl.load(tile + T_COL_TILE), tl.load(tile + T_ROW_TILE)
        col0, ncols = tl.load(tile + T_COL0), tl.load(tile + T_COLS)
        scale = 1.0 / tl.sqrt(tl.maximum(tl.load(d + F_WHOLE_NUMEL), 1).to(tl.float32))
        whole_n = tl.load(d + F_WHOLE_N).to(tl.float32)
        old_row = _f32(tl.load(d + F_STAT_A))
        cols = tl.arange(0, BLOCK_C)
        col_mask = cols < ncols
        col_acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for r in range(row0, row0 + nrows, ROWS):
            rows = r + tl.arange(0, ROWS)
            row_mask = rows < row0 + nrows
            mask = row_mask[:, None] & col_mask[None, :]
            offs = base + rows[:, None].to(tl.int64) * rs + (col0 + cols)[None, :] * cs
            x = _load(x_at, offs, mask, pcode)
            g = _load(g_at, offs, mask, pcode) * scale
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
                old += tl.sum(r_old / whole_n, axis=0)
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
def _sums_tensors(desc, sums, scratch, tile_sums, BLOCK: tl.constexpr, SPLIT: tl.constexpr):
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
            _base, _rs, cs, row_base, rsr, col_base = _slice(d, s)
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
def _statistics(
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
        beta2_t, _rho, _bias = _schedule(d, hp, RELATIVE, WARMUP, BETA2, CAP, GRAD_MOMENTUM)
        w, eps1 = 1.0 - beta2_t, tl.load(hp + H_EPS1)
        numel = tl.load(d + F_WHOLE_NUMEL).to(tl.float32)
        wn, wm = tl.load(d + F_WHOLE_N).to(tl.float32), tl.load(d + F_WHOLE_M).to(tl.float32)
        slices, n, m = tl.load(d + F_SLICES), tl.load(d + F_N), tl.load(d + F_M)
        old_row, old_col = _f32(tl.load(d + F_STAT_A)), _f32(tl.load(d + F_STAT_B))
        row, col = sums + tl.load(d + F_ROW), sums + tl.load(d + F_COL)
        lanes = tl.arange(0, BLOCK)
        for k in range(j * BLOCK, slices * n, SPLIT * BLOCK):
            idx = k + lanes
            mask = idx < slices * n
            r = _lerp(
                tl.load(old_row + idx, mask=mask, other=0.0),
                (numel / wm) * tl.load(row + idx, mask=mask, other=0.0) + eps1,
                w,
            )
            tl.store(row + idx, r, mask=mask)
            bad += tl.where(mask, _nonfinite(r), 0.0)
        for k in range(j * BLOCK, slices * m, SPLIT * BLOCK):
            idx = k + lanes
            mask = idx < slices * m
            c = _lerp(
                tl.load(old_col + idx, mask=mask, other=0.0),
                (numel / wn) * tl.load(col + idx, mask=mask, other=0.0) + eps1,
                w,
            )
            tl.store(col + idx, c, mask=mask)
            bad += tl.where(mask, _nonfinite(c), 0.0)
        total, old_mean = sums + tl.load(d + F_TOTAL), sums + tl.load(d + F_OLD_ROW_MEAN)
        for k in range(j * BLOCK, slices, SPLIT * BLOCK):
            idx = k + lanes
            mask = idx < slices
            mean = _lerp(
                tl.load(old_mean + idx, mask=mask, other=0.0),
                (numel / (wn * wm)) * tl.load(total + idx, mask=mask, other=0.0) + eps1,
                w,
            )
            tl.store(total + idx, mean, mask=mask)
    tl.store(partials + i * SPLIT + j, tl.sum(bad, axis=0))


@triton.jit
def _direction(d, g, offs, mask, bias, hp, GRAD_MOMENTUM: tl.constexpr):
    """D_t (G, or Adam's m̂_t as the state will store it) and m_t."""
    if GRAD_MOMENTUM:
        mcode = tl.load(d + F_MOMENTUM_DTYPE)
        m_old = _load(tl.load(d + F_MOMENTUM), offs, mask, mcode)
        m = _stored(_lerp(m_old, g, 1.0 - tl.load(hp + H_BETA1)), mcode)
        direction = m * bias
    else:
        m = g
        direction = g
    return direction, m


@triton.jit
def _update_sums_tiles(
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
    pcode = tl.load(d + F_PARAM_DTYPE)
    g_at = tl.load(d + F_GRAD)
    beta2_t, _rho, bias = _schedule(d, hp, RELATIVE, WARMUP, BETA2, CAP, GRAD_MOMENTUM)
    row0, nrows = tl.load(tile + T_ROW0), tl.load(tile + T_ROWS)
    su = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
    bad = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
    if tl.load(d + F_FACTORED) == 0:
        w, eps1 = 1.0 - beta2_t, tl.load(hp + H_EPS1)
        v_old = _f32(tl.load(d + F_STAT_A))
        lane = tl.arange(0, ROWS)[:, None] * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
        for e in range(row0, row0 + nrows, ROWS * BLOCK_C):
            offs = e + lane
            mask = offs < row0 + nrows
            g = _load(g_at, offs, mask, pcode)
            direction, _ = _direction(d, g, offs, mask, bias, hp, GRAD_MOMENTUM)
            v = _lerp(tl.load(v_old + offs, mask=mask, other=1.0), g * g + eps1, w)
            bad += tl.where(mask, _nonfinite(v), 0.0)
            u = tl.where(mask, direction / tl.sqrt(v), 0.0)
            su += u * u
    else:
        s = tl.load(tile + T_SLICE)
        base, rs, cs, row_base, rsr, col_base = _slice(d, s)
        col0, ncols = tl.load(tile + T_COL0), tl.load(tile + T_COLS)
        cols = tl.arange(0, BLOCK_C)
        col_mask = cols < ncols
        mean = tl.load(sums + tl.load(d + F_TOTAL) + s)
        cf = 1.0 / tl.sqrt(
            tl.load(
                sums + tl.load(d + F_COL) + col_base + (col0 + cols) * cs, mask=col_mask, other=1.0
            )
        )
        for r in range(row0, row0 + nrows, ROWS):
            rows = r + tl.arange(0, ROWS)
            row_mask = rows < row0 + nrows
            mask = row_mask[:, None] & col_mask[None, :]
            offs = base + rows[:, None].to(tl.int64) * rs + (col0 + cols)[None, :] * cs
            rf = 1.0 / tl.sqrt(
                tl.load(sums + tl.load(d + F_ROW) + row_base + rows * rsr, mask=row_mask, other=1.0)
                / mean
            )
            g = _load(g_at, offs, mask, pcode)
            direction, _m = _direction(d, g, offs, mask, bias, hp, GRAD_MOMENTUM)
            u = tl.where(mask, direction * rf[:, None] * cf[None, :], 0.0)
            su += u * u
    out = tile_sums + k * S_FIELDS
    tl.store(out + S_SU, tl.sum(tl.sum(su, axis=1), axis=0))
    tl.store(out + S_NF, tl.sum(tl.sum(bad, axis=1), axis=0))


@triton.jit
def _update_sums_tensors(desc, sums, partials, tile_sums, BLOCK: tl.constexpr, SPLIT: tl.constexpr):
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


# --- Phase 3 --------------------------------------------------------------------------------------


@triton.jit
def _apply_scalars(
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
    _beta2_t, rho, _bias = _schedule(d, hp, RELATIVE, WARMUP, BETA2, CAP, GRAD_MOMENTUM)
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
            up = tl.sqrt(tl.load(psq + g, mask=mask, other=0.0) / count)
            down = tl.sqrt(tl.load(psq + groups + g, mask=mask, other=0.0) / count)
            rms_x = tl.where(_nonfinite(up) == 0.0, up / 4294967296.0, down * 4294967296.0)
            alpha = rho * tl.maximum(rms_x, tl.load(hp + H_EPS2))
        else:
            alpha = rho + 0.0 * lanes
        update_rms = tl.sqrt(tl.load(su + g, mask=mask, other=0.0) / count)
        step_scale = alpha / tl.maximum(update_rms / tl.load(hp + H_CLIP), 1.0) if CLIP else alpha
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
            bad += tl.where(mask, tl.maximum(_nonfinite(u), _nonfinite(x)), 0.0)
        finite = (tl.sum(bad, axis=0) == 0.0) & (tl.load(sums + tl.load(d + F_NONFINITE)) == 0.0)
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
    seed,
    GRAD_MOMENTUM: tl.constexpr,
    STEP_MOMENTUM: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    STOCHASTIC_ROUNDING: tl.constexpr,
):
    """X_t = X − (step + decay·X) for a block of elements, with momentum and a full V̂ stored."""
    pcode = tl.load(d + F_PARAM_DTYPE)
    g = _load(tl.load(d + F_GRAD), offs, mask, pcode)
    direction, m = _direction(d, g, offs, mask, bias, hp, GRAD_MOMENTUM)
    if GRAD_MOMENTUM:
        _store(tl.load(d + F_MOMENTUM), offs, m, mask, tl.load(d + F_MOMENTUM_DTYPE))
    if factored:
        u = direction * inverse_sqrt_v
    else:
        v_at = _f32(tl.load(d + F_STAT_A))
        v = _lerp(
            tl.load(v_at + v_offs, mask=mask, other=1.0),
            g * g + tl.load(hp + H_EPS1),
            1.0 - beta2_t,
        )
        tl.store(v_at + v_offs, v, mask=mask)
        u = direction / tl.sqrt(v)
    step = u * step_scale
    if STEP_MOMENTUM:
        mcode = tl.load(d + F_MOMENTUM_DTYPE)
        m_at = tl.load(d + F_MOMENTUM)
        m_new = _lerp(_load(m_at, offs, mask, mcode), step, 1.0 - tl.load(hp + H_BETA1))
        _store(m_at, offs, m_new, mask, mcode)
        step = _stored(m_new, mcode)
    if MAXIMIZE:
        step = -step
    x_at = tl.load(d + F_PARAM)
    x = _load(x_at, offs, mask, pcode)
    x_new = x - (step + x * decay)
    if STOCHASTIC_ROUNDING and pcode == 1:
        noise = (tl.randint(seed, offs.to(tl.uint32)) & 0xFFFF).to(tl.int32)
        bits = (x_new.to(tl.int32, bitcast=True) + noise) & -65536
        x_new = bits.to(tl.float32, bitcast=True)
    _store(x_at, offs, x_new, mask, pcode)


@triton.jit
def _apply_tiles(
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
        beta2_t, _rho, bias = _schedule(d, hp, RELATIVE, WARMUP, BETA2, CAP, GRAD_MOMENTUM)
        seed = tl.load(seed_at) + index
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
                    seed,
                    GRAD_MOMENTUM,
                    STEP_MOMENTUM,
                    MAXIMIZE,
                    STOCHASTIC_ROUNDING,
                )
        else:
            s = tl.load(tile + T_SLICE)
            group = s * tl.load(d + F_PER_SLICE)
            step_scale, decay = tl.load(scale_at + 2 * group), tl.load(scale_at + 2 * group + 1)
            base, rs, cs, row_base, rsr, col_base = _slice(d, s)
            col0, ncols = tl.load(tile + T_COL0), tl.load(tile + T_COLS)
            cols = tl.arange(0, BLOCK_C)
            col_mask = cols < ncols
            mean = tl.load(sums + tl.load(d + F_TOTAL) + s)
            cf = 1.0 / tl.sqrt(
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
                rf = 1.0 / tl.sqrt(
                    tl.load(
                        sums + tl.load(d + F_ROW) + row_base + rows * rsr, mask=row_mask, other=1.0
                    )
                    / mean
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
                    seed,
                    GRAD_MOMENTUM,
                    STEP_MOMENTUM,
                    MAXIMIZE,
                    STOCHASTIC_ROUNDING,
                )


@triton.jit
def _commit(desc, sums, BLOCK: tl.constexpr, SPLIT: tl.constexpr):
    """Per tensor: R_t and C_t into the state where the step was taken, and the counters."""
    i, j = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    d = desc + i * NF
    finite = tl.load(sums + tl.load(d + F_FINITE)) != 0.0
    if finite and tl.load(d + F_FACTORED) == 1:
        slices, n, m = tl.load(d + F_SLICES), tl.load(d + F_N), tl.load(d + F_M)
        lanes = tl.arange(0, BLOCK)
        row, col = sums + tl.load(d + F_ROW), sums + tl.load(d + F_COL)
        old_row, old_col = _f32(tl.load(d + F_STAT_A)), _f32(tl.load(d + F_STAT_B))
        for k in range(j * BLOCK, slices * n, SPLIT * BLOCK):
            idx = k + lanes
            mask = idx < slices * n
            tl.store(old_row + idx, tl.load(row + idx, mask=mask), mask=mask)
        for k in range(j * BLOCK, slices * m, SPLIT * BLOCK):
            idx = k + lanes
            mask = idx < slices * m
            tl.store(old_col + idx, tl.load(col + idx, mask=mask), mask=mask)
    if j == 0:
        step = _f32(tl.load(d + F_STEP))
        skips = tl.load(d + F_SKIPS).to(tl.pointer_type(tl.int64))
        tl.store(step, tl.load(step) + tl.where(finite, 1.0, 0.0))
        tl.store(skips, tl.load(skips) + tl.where(finite, 0, 1).to(tl.int64))


# --- The host side ------------------------------------------------------------------------------


class Buffers(NamedTuple):
    """What the kernels keep for one step: the sums, the tiles' partial sums and scratch."""

    sums: Tensor
    scratch: Tensor
    tile_sums: Tensor
    partials: Tensor
    scales: Tensor


class Numbers(NamedTuple):
    """A group's numbers on the device, its choices as compile-time flags, and a seed."""

    numbers: Tensor
    flags: dict[str, Any]
    seed: Tensor


def make_buffers(plan: Plan) -> Buffers:
    """Fresh buffers for one step of ``plan`` on its device (each entry written before read)."""
    device = plan.descriptors.device
    tensors = plan.descriptors.shape[0]

    def empty(numel: int) -> Tensor:
        return torch.empty(max(numel, 1), dtype=torch.float32, device=device)

    return Buffers(
        empty(plan.sums_numel),
        empty(plan.scratch_numel),
        empty(plan.tiles.shape[0] * TILE_SUMS),
        empty(tensors * _split(plan)),
        empty(plan.scalars_numel),
    )


def numbers(hp: Hyperparameters, device: torch.device) -> Numbers:
    """``hp`` on ``device`` with no wait: the numbers go through pinned memory, a Tensor
    ``lr`` on the device is copied there on the device; a seed for stochastic rounding is
    drawn on the device."""
    lr_on_device = isinstance(hp.lr, Tensor) and hp.lr.device == device
    values = torch.tensor(
        plan_numbers(hp) if not lr_on_device else _numbers_without_lr(hp), dtype=torch.float32
    )
    if device.type == "cuda":
        values = values.pin_memory()
    on_device = torch.empty(len(HP), dtype=torch.float32, device=device)
    on_device.copy_(values, non_blocking=True)
    if lr_on_device:
        on_device[HP.LR].copy_(hp.lr.detach().reshape(()))  # type: ignore[union-attr]
    if hp.stochastic_rounding:
        seed = torch.randint(0, 2**31 - 1, (1,), device=device, dtype=torch.int32)
    else:
        seed = torch.zeros(1, device=device, dtype=torch.int32)
    choice = plan_flags(hp)
    flags = {
        "RELATIVE": bool(choice[Flag.RELATIVE_STEP]),
        "WARMUP": bool(choice[Flag.WARMUP_INIT]),
        "BETA2": bool(choice[Flag.BETA2]),
        "CAP": bool(choice[Flag.BETA2_CAP]),
        "GRAD_MOMENTUM": bool(choice[Flag.GRADIENT_MOMENTUM]),
    }
    apply_flags = {
        "SCALE_PARAMETER": bool(choice[Flag.SCALE_PARAMETER]),
        "CLIP": bool(choice[Flag.CLIP]),
        "DECAY_SCALE": choice[Flag.DECAY_SCALE],
        "STEP_MOMENTUM": bool(choice[Flag.STEP_MOMENTUM]),
        "MAXIMIZE": bool(choice[Flag.MAXIMIZE]),
        "STOCHASTIC_ROUNDING": bool(choice[Flag.STOCHASTIC_ROUNDING]),
    }
    return Numbers(on_device, {"schedule": flags, "apply": apply_flags}, seed)


def _numbers_without_lr(hp: Hyperparameters) -> list[float]:
    import dataclasses

    return plan_numbers(dataclasses.replace(hp, lr=0.0))


def sums_of(buffers: Buffers) -> Tensor:
    """The sums that pass between the phases."""
    return buffers.sums


def _launch(kernel: Any, grid: tuple[int, ...], *args: Any, **constants: Any) -> None:
    LAUNCHES[kernel.__name__] += 1
    kernel[grid](*args, **constants)


def _tile_constants(plan: Plan) -> dict[str, int]:
    block_c = triton.next_power_of_2(plan.geometry.cols)
    return {"BLOCK_C": block_c, "ROWS": max(1, 2048 // block_c)}


BLOCK = 256  # lanes of the tensor kernels' loops


def _split(plan: Plan) -> int:
    """Programs per tensor in the tensor kernels: enough for the group's longest statistics
    (``BLOCK`` entries each), a power of two up to ``MAX_SPLIT``."""
    return min(MAX_SPLIT, triton.next_power_of_2(max(1, -(-plan.longest // BLOCK))))


def sums(plan: Plan, buffers: Buffers) -> None:
    """Phase 1 for every tensor of the plan: two launches."""
    tiles, tensors, split = plan.tiles.shape[0], plan.descriptors.shape[0], _split(plan)
    if tiles:
        _launch(
            _sums_tiles,
            (tiles,),
            plan.descriptors,
            plan.tiles,
            buffers.sums,
            buffers.scratch,
            buffers.tile_sums,
            **_tile_constants(plan),
        )
    _launch(
        _sums_tensors,
        (tensors, split),
        plan.descriptors,
        buffers.sums,
        buffers.scratch,
        buffers.tile_sums,
        BLOCK=BLOCK,
        SPLIT=split,
    )


def update_sums(plan: Plan, buffers: Buffers, options: Numbers) -> None:
    """Phase 2, from complete sums: three launches."""
    tiles, tensors, split = plan.tiles.shape[0], plan.descriptors.shape[0], _split(plan)
    schedule = options.flags["schedule"]
    _launch(
        _statistics,
        (tensors, split),
        plan.descriptors,
        buffers.sums,
        buffers.partials,
        options.numbers,
        **schedule,
        BLOCK=BLOCK,
        SPLIT=split,
    )
    if tiles:
        _launch(
            _update_sums_tiles,
            (tiles,),
            plan.descriptors,
            plan.tiles,
            buffers.sums,
            buffers.tile_sums,
            options.numbers,
            **schedule,
            **_tile_constants(plan),
        )
    _launch(
        _update_sums_tensors,
        (tensors, split),
        plan.descriptors,
        buffers.sums,
        buffers.partials,
        buffers.tile_sums,
        BLOCK=BLOCK,
        SPLIT=split,
    )


def apply(plan: Plan, buffers: Buffers, options: Numbers) -> None:
    """Phase 3, from complete sums: three launches."""
    tiles, tensors, split = plan.tiles.shape[0], plan.descriptors.shape[0], _split(plan)
    schedule, chosen = options.flags["schedule"], options.flags["apply"]
    _launch(
        _apply_scalars,
        (tensors, split),
        plan.descriptors,
        buffers.sums,
        buffers.scales,
        plan.scalar_offsets,
        options.numbers,
        **schedule,
        SCALE_PARAMETER=chosen["SCALE_PARAMETER"],
        CLIP=chosen["CLIP"],
        DECAY_SCALE=chosen["DECAY_SCALE"],
        BLOCK=BLOCK,
        SPLIT=split,
    )
    if tiles:
        _launch(
            _apply_tiles,
            (tiles,),
            plan.descriptors,
            plan.tiles,
            buffers.sums,
            buffers.scales,
            plan.scalar_offsets,
            options.numbers,
            options.seed,
            **schedule,
            STEP_MOMENTUM=chosen["STEP_MOMENTUM"],
            MAXIMIZE=chosen["MAXIMIZE"],
            STOCHASTIC_ROUNDING=chosen["STOCHASTIC_ROUNDING"],
            **_tile_constants(plan),
        )
    _launch(_commit, (tensors, split), plan.descriptors, buffers.sums, BLOCK=BLOCK, SPLIT=split)
