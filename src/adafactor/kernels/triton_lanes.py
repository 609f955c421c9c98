"""Device functions that every Triton kernel of the group step shares: the tables' columns as
compile-time constants, a tensor read and written in its own dtype (chosen at run time from
the descriptor table), 4 elements at a time where the plan found it aligned, values rounded
as the state stores them, each tensor's schedules, and sums over a tensor's tiles.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .plan import ALIGNMENT, HP, JOB_LANES, LINE, WIDE, Access, Field, Job, JobKind, Tile

TILE_SUMS = 6
"""Per tile: Σ(X·2^32)², Σ(X·2^−32)², Σ R_{t−1}/n, Σ U², non-finite count, Σ (G/√numel)²."""
JOB_SUMS = 3
"""Per job of R or C entries: their non-finite count, and the two numbers that bound Σ U_t²
(``triton_sums.statistics``)."""
BLOCK_C: tl.constexpr = tl.constexpr(128)
"""Columns a tile kernel takes at once: a warp's 32 lanes × 4, so that a row's sum stays in
one warp (no barrier)."""
ROWS: tl.constexpr = tl.constexpr(8)
"""Rows a tile kernel takes at once from a tensor read VECTOR (one per warp of 8: 4 elements
per thread and tensor, one vector)."""
SCALAR_ROWS: tl.constexpr = tl.constexpr(4)
"""Rows it takes at once otherwise (2 elements per thread and tensor: each element's own
64-bit address is live until it is read, so as many registers as a vector of 4 would take)."""
APPLY_SCALAR_ROWS: tl.constexpr = tl.constexpr(2)
"""Rows the update takes at once from a tensor not read VECTOR: 1 element per thread, since
it reads and writes up to five tensors (compensated rounding's residual among them)."""
KB: tl.constexpr = tl.constexpr(16)
"""Tiles' partial sums a line job adds at once (``LINE`` rows or columns of each)."""

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
F_GRAD_DTYPE: tl.constexpr = tl.constexpr(Field.GRAD_DTYPE)
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
F_RESIDUAL: tl.constexpr = tl.constexpr(Field.RESIDUAL)
F_STREAM: tl.constexpr = tl.constexpr(Field.STREAM)
F_FIRST_JOB: tl.constexpr = tl.constexpr(Field.FIRST_JOB)
F_JOBS: tl.constexpr = tl.constexpr(Field.JOBS)
F_ACCESS: tl.constexpr = tl.constexpr(Field.ACCESS)
F_ROW_MEAN: tl.constexpr = tl.constexpr(Field.ROW_MEAN)
NJ: tl.constexpr = tl.constexpr(len(Job))
J_TENSOR: tl.constexpr = tl.constexpr(Job.TENSOR)
J_KIND: tl.constexpr = tl.constexpr(Job.KIND)
J_SLICE: tl.constexpr = tl.constexpr(Job.SLICE)
J_START: tl.constexpr = tl.constexpr(Job.START)
J_COUNT: tl.constexpr = tl.constexpr(Job.COUNT)
K_TENSOR: tl.constexpr = tl.constexpr(JobKind.TENSOR)
K_SLICES: tl.constexpr = tl.constexpr(JobKind.SLICES)
K_ROW_ENTRIES: tl.constexpr = tl.constexpr(JobKind.ROW_ENTRIES)
K_COL_ENTRIES: tl.constexpr = tl.constexpr(JobKind.COL_ENTRIES)
K_ROW_LINE: tl.constexpr = tl.constexpr(JobKind.ROW_LINE)
K_COL_LINE: tl.constexpr = tl.constexpr(JobKind.COL_LINE)
LANES: tl.constexpr = tl.constexpr(JOB_LANES)
LINE_LANES: tl.constexpr = tl.constexpr(LINE)
WIDE_TILES: tl.constexpr = tl.constexpr(WIDE)
VECTOR: tl.constexpr = tl.constexpr(ALIGNMENT)
A_VECTOR: tl.constexpr = tl.constexpr(Access.VECTOR)
A_CONTIGUOUS: tl.constexpr = tl.constexpr(Access.CONTIGUOUS)
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
H_SUM_SQ_U: tl.constexpr = tl.constexpr(HP.SUM_SQ_U)
S_UP: tl.constexpr = tl.constexpr(0)
S_DOWN: tl.constexpr = tl.constexpr(1)
S_OLD: tl.constexpr = tl.constexpr(2)
S_SU: tl.constexpr = tl.constexpr(3)
S_NF: tl.constexpr = tl.constexpr(4)
S_TOTAL: tl.constexpr = tl.constexpr(5)
S_FIELDS: tl.constexpr = tl.constexpr(TILE_SUMS)
JS_NF: tl.constexpr = tl.constexpr(0)
JS_BOUND: tl.constexpr = tl.constexpr(1)
JS_LOW: tl.constexpr = tl.constexpr(2)
JS_FIELDS: tl.constexpr = tl.constexpr(JOB_SUMS)


# --- Reading and writing the group's tensors --------------------------------------------------


@triton.jit
def typed(addr, dtype, ACCESS: tl.constexpr):
    """The address ``addr`` (int64, from the descriptor table) as a pointer to ``dtype``; read
    with ``ACCESS`` (``plan.Access``) VECTOR, known to sit at a 16-byte boundary (the plan
    checked it), so that offsets hinted ``VECTOR``-aligned read ``VECTOR`` elements at once."""
    pointer = addr.to(tl.pointer_type(dtype))
    if ACCESS == A_VECTOR:
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@triton.jit
def load_f32(addr, offs, mask, code, ACCESS: tl.constexpr):
    """Elements ``offs`` of the tensor at address ``addr`` of dtype ``code``, as float32 (code
    3, float64, only for gradients: rounded to nearest, as the eager step's ``.to``)."""
    if code == 3:
        x = tl.load(typed(addr, tl.float64, ACCESS) + offs, mask=mask, other=0.0)
        x = x.to(tl.float32)
    elif code == 0:
        x = tl.load(typed(addr, tl.float32, ACCESS) + offs, mask=mask, other=0.0)
    elif code == 1:  # its bits are float32's top half (the interpreter's cast flushes subnormals)
        x = tl.load(typed(addr, tl.int16, ACCESS) + offs, mask=mask, other=0)
        x = (x.to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        x = tl.load(typed(addr, tl.float16, ACCESS) + offs, mask=mask, other=0.0)
        x = x.to(tl.float32)
    return x


@triton.jit
def round_bf16(x):
    """float32 ``x`` rounded to the nearest bfloat16 (ties to even), as float32: done on the
    bits, so that the result is torch's on every Triton (the interpreter's cast truncates). A
    NaN stays a NaN, made quiet (as torch and cpu.c's ``float_to_bf16``): rounding its bits
    would carry a NaN such as the GPU's canonical 0x7FFFFFFF into the sign (−0.0) and round
    0x7F800001 down to +inf."""
    bits = x.to(tl.int32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    quiet = (bits | 0x00400000) & -65536
    bits = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, quiet, rounded)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def store_as(addr, offs, x, mask, code, ACCESS: tl.constexpr):
    """Store float32 ``x`` as dtype ``code``, rounded to nearest even."""
    if code == 0:
        tl.store(typed(addr, tl.float32, ACCESS) + offs, x, mask=mask)
    elif code == 1:  # the top half of the rounded bits (no float cast: see load_f32)
        y = (round_bf16(x).to(tl.int32, bitcast=True) >> 16).to(tl.int16)
        tl.store(typed(addr, tl.int16, ACCESS) + offs, y, mask=mask)
    else:
        tl.store(typed(addr, tl.float16, ACCESS) + offs, x.to(tl.float16), mask=mask)


@triton.jit
def mix32(x):
    """equations.mix32 on uint32 ``x`` (its products wrap around at 2³²)."""
    x = x ^ (x >> 16)
    x = x * 0x21F0AAAD
    x = x ^ (x >> 15)
    x = x * 0x735A2D97
    return x ^ (x >> 15)


@triton.jit
def noise_stream(seed, stream, t):
    """equations.rounding_noise, the part of one tensor and step (uint32): the ``seed``, the
    parameter's ``stream`` and the step ``t`` (float32, whole)."""
    per_step = mix32(mix32(t.to(tl.uint32)) ^ stream.to(tl.uint32))
    return mix32(per_step ^ seed.to(tl.uint32))


@triton.jit
def rounding_noise(per_step, index):
    """equations.rounding_noise: 16 random bits (uint32) for the elements at flat positions
    ``index`` (int64) of the parameter whose ``noise_stream`` is ``per_step``."""
    index = index.to(tl.int64)
    low, high = index.to(tl.uint32), (index >> 32).to(tl.uint32)  # casts truncate
    return mix32(mix32(low ^ per_step) ^ high) & 0xFFFF


@triton.jit
def store_stochastic(addr, offs, x, noise, mask, code, ACCESS: tl.constexpr):
    """Store float32 ``x`` as 16-bit dtype ``code`` rounded up or down at random
    (equations.stochastic_round), with 16 random bits ``noise`` per element: added below the
    bits that bfloat16 keeps; for float16 their top 13 below its 10 mantissa bits, and below
    its normal range a random rounding of ``|x|·2²⁴`` to a whole number, never an overflow
    that rounding to nearest would not make."""
    bits = x.to(tl.uint32, bitcast=True)
    if code == 1:
        y = ((bits + noise) >> 16).to(tl.int32, bitcast=True).to(tl.int16)
        tl.store(typed(addr, tl.int16, ACCESS) + offs, y, mask=mask)
    else:
        small = tl.abs(x) < 6.103515625e-05  # 2⁻¹⁴
        # scaled by powers of two: exact, and no division (see div); below 2¹⁰ + 1 and not
        # negative, so that the cast's truncation is the floor (tl.floor flushes subnormals)
        scaled = tl.where(small, tl.abs(x), 0.0) * 16777216.0
        whole = (scaled + noise.to(tl.float32) * (1.0 / 65536.0)).to(tl.int32).to(tl.float32)
        sign = (bits >> 31) << 31
        tiny = (whole * 5.9604644775390625e-08).to(tl.uint32, bitcast=True) | sign
        normal = ((bits + (noise >> 3)) >> 13) << 13
        out = tl.where(small, tiny, normal).to(tl.float32, bitcast=True)
        h = out.to(tl.float16)
        nearest = x.to(tl.float16)
        wide = h.to(tl.float32)
        infinite = (nonfinite(wide) != 0.0) & (wide == wide)
        overflow = infinite & (nonfinite(nearest.to(tl.float32)) == 0.0)
        h = tl.where(overflow, nearest, h)
        tl.store(typed(addr, tl.float16, ACCESS) + offs, h, mask=mask)


@triton.jit
def as_stored(x, code):
    """``x`` as a state of dtype ``code`` keeps it (phases.stored)."""
    if code == 1:
        x = round_bf16(x)
    elif code == 2:
        x = x.to(tl.float16).to(tl.float32)
    return x


@triton.jit
def f32_pointer(addr):
    return addr.to(tl.pointer_type(tl.float32))


@triton.jit
def nonfinite(x):
    """1.0 where ``x`` is NaN or infinite (x − x is 0 only for finite x), else 0.0."""
    return tl.where((x - x) != 0.0, 1.0, 0.0)


@triton.jit
def power(x, y):
    """``x^y`` for float32 x ≥ 0 (``x^0 = 1``), as float32: formed in float64 and rounded once,
    as the eager step's float32 ``pow`` (float32 ``exp2``/``log2`` lower to approximate,
    subnormal-flushing instructions)."""
    z = tl.exp2(y.to(tl.float64) * tl.log2(x.to(tl.float64))).to(tl.float32)
    return tl.where(y == 0.0, 1.0, z)


@triton.jit
def div(x, y):
    """``x / y`` rounded to nearest, subnormals kept: the eager step's float32 division. (``/``
    lowers to ``div.full.f32``, which flushes subnormals to zero: a row ratio R/mean_r(R) of
    ~1e-40 would become 0, its factor infinite, and 0·inf a NaN that skips the tensor.)"""
    return tl.div_rn(x, y)


@triton.jit
def inverse_sqrt(x):
    """``1/√x`` with both operations rounded to nearest, subnormals kept (``tl.sqrt`` lowers to
    ``sqrt.approx.ftz.f32``): as the eager step's ``rsqrt`` and cpu.c's ``1.0f / sqrtf``."""
    return tl.div_rn(1.0, tl.sqrt_rn(x))


@triton.jit
def lerp(start, end, w):
    """torch.lerp's formula."""
    return tl.where(w < 0.5, start + w * (end - start), end - (end - start) * (1.0 - w))


@triton.jit
def schedules(
    d,
    hp,
    RELATIVE: tl.constexpr,
    WARMUP: tl.constexpr,
    BETA2: tl.constexpr,
    CAP: tl.constexpr,
    GRAD_MOMENTUM: tl.constexpr,
):
    """β̂2_t, ρ_t and the bias correction of the tensor with descriptor row ``d`` (schedules.py)."""
    t = tl.load(f32_pointer(tl.load(d + F_STEP))) + 1.0
    td = tl.maximum(t - tl.load(hp + H_DECAY_OFFSET), 1.0)
    if BETA2:
        b2 = tl.load(hp + H_BETA2)
        beta2_t = div(b2 * (1.0 - power(b2, td - 1.0)), 1.0 - power(b2, td))
    else:
        beta2_t = 1.0 - power(td, -tl.load(hp + H_DECAY_RATE))
    if CAP:
        beta2_t = tl.minimum(beta2_t, tl.load(hp + H_BETA2_CAP))
    lr = tl.load(hp + H_LR)
    if RELATIVE:
        rho = tl.minimum(inverse_sqrt(t), lr)
        if WARMUP:
            rho = tl.minimum(rho, 1e-6 * t)
    else:
        rho = lr + 0.0 * t
    bias = div(1.0, 1.0 - power(tl.load(hp + H_BETA1), t)) if GRAD_MOMENTUM else 1.0 + 0.0 * t
    return beta2_t, rho, bias


@triton.jit
def slice_start(d, s):
    """Where slice ``s`` of a factored tensor starts in X (rows and columns apart by the two
    strides), in R-shaped buffers (rows apart by the third) and in C-shaped ones."""
    n, bb, m, cc = tl.load(d + F_N), tl.load(d + F_B), tl.load(d + F_M), tl.load(d + F_C)
    a, b, c = s // (bb * cc), (s // cc) % bb, s % cc
    base = a * n * bb * m * cc + b * m * cc + c
    row_base = a * n * bb * cc + b * cc + c
    col_base = a * bb * m * cc + b * m * cc + c
    return base, bb * m * cc, cc, row_base, bb * cc, col_base


@triton.jit
def slice_of_entry(d, k, rows):
    """The slice of entry ``k`` of an R-shaped (``rows``: n) or C-shaped (m) buffer laid out
    ``(A, rows, B, 1, C)`` (or ``(A, 1, B, rows, C)``, the same order)."""
    bb, cc = tl.load(d + F_B), tl.load(d + F_C)
    a = k // (rows * bb * cc)
    return a * bb * cc + k % (bb * cc)


@triton.jit
def block_offsets(base, rs, cs, rows, col0, cols, ACCESS: tl.constexpr):
    """Offsets of a block of ``rows`` × ``col0 + cols`` of a slice starting at ``base`` (rows
    ``rs`` apart, columns ``cs``): VECTOR (columns contiguous, every row start a multiple of
    ``VECTOR``) hinted so that ``VECTOR`` columns are read at once; CONTIGUOUS known to run
    along the columns (so that a warp reads a row's consecutive elements); else strided."""
    if ACCESS == A_VECTOR:
        offs = base + rows[:, None].to(tl.int64) * rs + (col0 + cols)[None, :]
        offs = tl.multiple_of(offs, [1, VECTOR])
    elif ACCESS == A_CONTIGUOUS:
        offs = base + rows[:, None].to(tl.int64) * rs + (col0 + cols)[None, :]
    else:
        offs = base + rows[:, None].to(tl.int64) * rs + ((col0 + cols) * cs)[None, :]
    return offs


@triton.jit
def column_mask(cols, ncols, ACCESS: tl.constexpr):
    """``cols < ncols``; read VECTOR (``ncols`` then a multiple of ``VECTOR``), written so that
    the compiler sees it constant over each group of ``VECTOR`` columns."""
    return (cols // VECTOR) * VECTOR < ncols if ACCESS == A_VECTOR else cols < ncols


@triton.jit
def flat_block(e, end, R: tl.constexpr, ACCESS: tl.constexpr):
    """Offsets and mask of the ``R × BLOCK_C`` elements of a flat tensor from ``e`` (before
    ``end``); read VECTOR (``e`` and ``end`` multiples of ``VECTOR``) hinted as above."""
    lane = tl.arange(0, R)[:, None] * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    if ACCESS == A_VECTOR:
        offs = tl.multiple_of(e + lane, [1, VECTOR])
        mask = e + (lane // VECTOR) * VECTOR < end
    else:
        offs = e + lane
        mask = offs < end
    return offs, mask


@triton.jit
def step_direction(
    g, m_at, mcode, offs, mask, bias, w1, GRAD_MOMENTUM: tl.constexpr, ACCESS: tl.constexpr
):
    """D_t (G, or Adam's m̂_t as the state will store it) and m_t (``w1 = 1 − β1``)."""
    if GRAD_MOMENTUM:
        m_old = load_f32(m_at, offs, mask, mcode, ACCESS)
        m = as_stored(lerp(m_old, g, w1), mcode)
        direction = m * bias
    else:
        m = g
        direction = g
    return direction, m


# --- Sums over a tensor's tiles, in a fixed order ---------------------------------------------


@triton.jit
def sum_tiles(tile_sums, first, count, field_a, field_b):
    """The sums of ``field_a`` and of ``field_b`` over ``count`` tiles from ``first``, in a
    fixed order, ``LANES`` tiles at a time (one pass)."""
    a = tl.zeros([LANES], dtype=tl.float32)
    b = tl.zeros([LANES], dtype=tl.float32)
    for k in range(0, count, LANES):
        idx = k + tl.arange(0, LANES)
        at = (first + idx.to(tl.int64)) * S_FIELDS
        a += tl.load(tile_sums + at + field_a, mask=idx < count, other=0.0)
        b += tl.load(tile_sums + at + field_b, mask=idx < count, other=0.0)
    return tl.sum(a, axis=0), tl.sum(b, axis=0)


@triton.jit
def slice_sums(tile_sums, first, per, col_tiles, s0, n_slices):
    """Per slice ``s0 + lane`` (``n_slices`` of them, each of ``per`` tiles from ``first +
    s·per``, ``col_tiles`` to a row of tiles), in one pass over their tiles (``per ≤ WIDE``):
    Σ (G/√numel)², Σ X² at both scales, and Σ R_{t−1}/n over its first column of tiles."""
    lanes = tl.arange(0, LANES)
    at = (first + (s0 + lanes) * per) * S_FIELDS
    mask = lanes < n_slices
    total = tl.zeros([LANES], dtype=tl.float32)
    up = tl.zeros([LANES], dtype=tl.float32)
    down = tl.zeros([LANES], dtype=tl.float32)
    old = tl.zeros([LANES], dtype=tl.float32)
    for k in range(0, per):
        here = at + k * S_FIELDS
        total += tl.load(tile_sums + here + S_TOTAL, mask=mask, other=0.0)
        up += tl.load(tile_sums + here + S_UP, mask=mask, other=0.0)
        down += tl.load(tile_sums + here + S_DOWN, mask=mask, other=0.0)
        first_column = (k % col_tiles) == 0
        old += tl.where(first_column, tl.load(tile_sums + here + S_OLD, mask=mask, other=0.0), 0.0)
    return total, up, down, old


@triton.jit
def one_slice_sums(tile_sums, first, per, col_tiles):
    """``slice_sums`` of one slice of ``per`` tiles from ``first`` (``per > WIDE``), with
    lanes over its tiles."""
    total = tl.zeros([LANES], dtype=tl.float32)
    up = tl.zeros([LANES], dtype=tl.float32)
    down = tl.zeros([LANES], dtype=tl.float32)
    old = tl.zeros([LANES], dtype=tl.float32)
    for k in range(0, per, LANES):
        idx = k + tl.arange(0, LANES)
        mask = idx < per
        here = (first + idx.to(tl.int64)) * S_FIELDS
        total += tl.load(tile_sums + here + S_TOTAL, mask=mask, other=0.0)
        up += tl.load(tile_sums + here + S_UP, mask=mask, other=0.0)
        down += tl.load(tile_sums + here + S_DOWN, mask=mask, other=0.0)
        old += tl.load(tile_sums + here + S_OLD, mask=mask & (idx % col_tiles == 0), other=0.0)
    return tl.sum(total, axis=0), tl.sum(up, axis=0), tl.sum(down, axis=0), tl.sum(old, axis=0)


@triton.jit
def field_of_slices(tile_sums, first, per, field, s0, n_slices):
    """Per slice ``s0 + lane`` the sum of ``field`` over its ``per`` tiles (one pass)."""
    lanes = tl.arange(0, LANES)
    at = (first + (s0 + lanes) * per) * S_FIELDS + field
    acc = tl.zeros([LANES], dtype=tl.float32)
    for k in range(0, per):
        acc += tl.load(tile_sums + at + k * S_FIELDS, mask=lanes < n_slices, other=0.0)
    return acc
