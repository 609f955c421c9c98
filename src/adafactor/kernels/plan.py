"""A parameter group laid out for the group-level kernels: one row of numbers per tensor
(where its data, state and sums live, its canonical sizes and dtypes), a table of tiles that
cuts every tensor into blocks of rows and columns, and the layout of the sums that pass
between the phases. Both backends (``cpu.py``, ``triton.py``) walk these same tables, so a
step is a few calls for the whole group, however many tensors it holds.

A factored tensor is a batch of ``S = A·B·C`` matrices of ``n×m`` (``tiling.canonical``):
slice ``s`` starts at ``a·(n·B·m·C) + b·(m·C) + c`` with rows ``B·m·C`` and columns ``C``
apart. Its tiles are ``rows_per_tile × cols_per_tile`` blocks of one slice; an unfactored
tensor's are runs of ``rows_per_tile·cols_per_tile`` elements. Each tile writes partial sums
of its own (for its rows, its columns and its slice), which a second pass adds up in a fixed
order, so the results do not depend on scheduling.

The sums buffer (float32, one region per tensor, laid out by ``SumsLayout``) holds what the
phases hand on, in the shapes of the eager step's sums so that the same ``LocalSum`` views
serve distributed completion: R-shaped ``row`` (the sums of G² over columns, then R_t),
C-shaped ``col`` (over rows, then C_t), ``param_sq`` (Σ X² at the two ``PARAM_SCALES``, per
slice or per tensor), ``total`` (Σ G² per slice, then mean_r(R_t)), ``old_row_mean``
(mean_r(R_{t−1})), ``sum_sq_u`` (Σ U_t²), ``nonfinite`` (a count), and what the step applied:
``alpha`` (α_t), ``update_rms`` and ``finite``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor

from ..options import Hyperparameters
from ..phases import Full, TensorState


class Field(IntEnum):
    """The columns of a tensor's row in the descriptor table (int64)."""

    PARAM = 0  # data pointers
    GRAD = 1
    STAT_A = 2  # R (factored) or V̂ (full)
    STAT_B = 3  # C (factored)
    MOMENTUM = 4
    STEP = 5
    SKIPS = 6
    FACTORED = 7  # 1 factored, 0 full
    PARAM_DTYPE = 8  # DTYPE_CODES
    MOMENTUM_DTYPE = 9  # DTYPE_CODES, -1 for no momentum
    A = 10  # canonical sizes of the local piece; full: A = B = C = m = 1, n = numel
    N = 11
    B = 12
    M = 13
    C = 14
    WHOLE_NUMEL = 15  # of the whole parameter (a DTensor's local piece may be smaller)
    WHOLE_N = 16
    WHOLE_M = 17
    PER_SLICE = 18  # RMS per slice (rms_per_slice) or per tensor
    ROW = 19  # offsets into the sums buffer (floats)
    COL = 20
    PARAM_SQ = 21
    TOTAL = 22
    OLD_ROW_MEAN = 23
    SUM_SQ_U = 24
    NONFINITE = 25
    ALPHA = 26
    UPDATE_RMS = 27
    FINITE = 28
    FIRST_TILE = 29
    TILES = 30
    ROW_TILES = 31  # tiles per slice down the rows, and across the columns
    COL_TILES = 32
    ROW_PARTS = 33  # offsets into the scratch buffer (floats): per-tile partial row sums
    COL_PARTS = 34  # and column sums
    SLICES = 35
    RMS_GROUPS = 36  # how many RMS values: S per slice, 1 per tensor
    GRAD_DTYPE = 37  # GRAD_CODES: a gradient is read in its own dtype
    RESIDUAL = 38  # compensated rounding's residual, of the parameter's dtype (0: none)
    STREAM = 39  # which stream of stochastic rounding's bits is the parameter's (step.Entry)
    FIRST_JOB = 40  # the tensor's rows in the job table (its TENSOR job first)
    JOBS = 41
    ACCESS = 42  # how a tile kernel reads its elements (``Access``, its gradient included)
    ROW_MEAN = 43  # offset into the sums buffer: mean_r(R_t) per slice (Triton; C: in TOTAL)


class Tile(IntEnum):
    """The columns of a tile's row in the tile table (int64)."""

    TENSOR = 0
    SLICE = 1
    ROW0 = 2  # factored: first row and row count; full: first element and count
    ROWS = 3
    COL0 = 4
    COLS = 5
    ROW_TILE = 6  # the tile's place in its slice's grid of tiles
    COL_TILE = 7


class Job(IntEnum):
    """The columns of a job's row in the job table (int64): the work of a group over its
    tensors' statistics and sums, O(rows + columns) per tensor, cut so that no program of the
    Triton kernels that walk it reads more than a few dozen times in a row."""

    TENSOR = 0
    KIND = 1  # JobKind
    SLICE = 2  # the slice of a ROW_LINE or COL_LINE
    START = 3  # its first row or column (lines), entry (ROW_ENTRIES, COL_ENTRIES), slice (SLICES)
    COUNT = 4


class JobKind(IntEnum):
    """What a job covers."""

    TENSOR = 0  # the whole tensor's sums over its tiles and jobs: one per tensor, its first
    SLICES = 1  # up to JOB_LANES slices (one, with lanes over its tiles, past WIDE tiles each)
    ROW_ENTRIES = 2  # up to JOB_LANES entries of R (all slices, flat) / of C
    COL_ENTRIES = 3
    ROW_LINE = 4  # up to LINE rows of a slice whose rows span several column tiles: their sums
    COL_LINE = 5  # from the tiles' partials; likewise columns over several row tiles


JOB_LANES = 1024
"""Entries (of R, C, or slices) one job takes."""
LINE = 128
"""Rows (columns) whose partial sums one line job adds up."""
WIDE = 64
"""A slice of more tiles than this gets a SLICES job of its own, with lanes over its tiles."""
ALIGNMENT = 4
"""Elements read at once from a tensor whose row starts are multiples of this (``access``)."""
VECTOR_BYTES = 16
"""The boundary at which every tensor read by vectors starts (``access``)."""


class Access(IntEnum):
    """How the tile kernels read a tensor's elements: each way is launched apart, compiled for
    it (one program reading two ways would hold both ways' registers)."""

    VECTOR = 0  # rows contiguous and aligned: ``ALIGNMENT`` elements at a time
    CONTIGUOUS = 1  # rows contiguous (a flat tensor, or columns 1 apart), one at a time
    STRIDED = 2  # columns C apart (factored dims not the last two)


DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
"""The dtypes the kernels read and write (statistics are float32)."""
GRAD_CODES = {**DTYPE_CODES, torch.float64: 3}
"""The dtypes the kernels read a gradient in (torch lets it differ from its parameter's); a
float64 one is rounded to float32 as it is read, as the eager step rounds it."""


@dataclass(frozen=True)
class Geometry:
    """Tile sizes: ``rows × cols`` for factored slices, ``rows·cols`` elements for the rest
    (each backend has its own). The scratch for partial sums is ``numel·(1/rows + 1/cols)``
    floats at most (``1/min_rows`` where rows adapt). With ``min_rows``, a tensor cut into
    fewer than ``target_tiles`` tiles has its tile rows halved, down to ``min_rows``, so that
    a GPU's SMs all get work (a 4096² matrix in 512 × 128 tiles is only 256 of them). With
    ``scalar_rows``, tensors not read ``Access.VECTOR`` have at most that many rows per tile
    (the Triton kernels take fewer rows of them at once)."""

    rows: int
    cols: int
    min_rows: int | None = None
    target_tiles: int = 0
    scalar_rows: int | None = None

    def rows_for(self, n: int, col_tiles: int, slices: int, vector: bool = True) -> int:
        """Tile rows for ``slices`` slices of ``n`` rows and ``col_tiles`` column tiles (for
        a flat tensor: ``n`` elements, in tiles of ``rows·cols``), read ``Access.VECTOR`` or
        not."""
        rows = self.rows if vector or self.scalar_rows is None else self.scalar_rows
        while (
            self.min_rows is not None
            and rows > self.min_rows
            and slices * -(-n // rows) * col_tiles < self.target_tiles
        ):
            rows //= 2
        return rows


@dataclass
class Plan:
    """The tables of one group (see the module docstring). ``descriptors`` and ``tiles`` live
    on the group's device; ``sums_numel`` and ``scratch_numel`` size the per-step buffers."""

    descriptors: Tensor
    tiles: Tensor
    tile_orders: tuple[Tensor, ...]  # per ``Access``, the tiles of the tensors read so
    jobs: Tensor
    sums_numel: int
    scratch_numel: int
    layouts: list[SumsLayout]
    geometry: Geometry
    host_descriptors: Tensor  # the same table on the CPU, where the pointers are written
    scalar_offsets: Tensor  # per tensor, where its per-RMS-group step scales start (int64)
    scalars_numel: int
    numel: int  # elements of the group's tensors
    longest: int  # the most entries of any tensor's R, C or per-slice values
    access: list[Access]  # per tensor, but for its gradient (``access``)
    tensors_access: list[Access]  # per tensor, its gradient included (``with_gradients``)


@dataclass(frozen=True)
class SumsLayout:
    """Where one tensor's sums live in the sums buffer, and their shapes (the eager step's:
    ``(A, n, B, 1, C)`` rows, ``(A, 1, B, m, C)`` columns, ``(A, 1, B, 1, C)`` per slice)."""

    factored: bool
    canonical_shape: tuple[int, ...]
    per_slice: bool
    row: int
    col: int
    param_sq: int
    total: int
    old_row_mean: int
    sum_sq_u: int
    nonfinite: int
    alpha: int
    update_rms: int
    finite: int
    row_mean: int
    end: int

    @property
    def longest(self) -> int:
        """The most entries of this tensor's R, C or per-slice values."""
        if not self.factored:
            return 1
        a, n, b, m, c = self.canonical_shape
        return a * b * c * max(n, m, 1)

    @property
    def slice_shape(self) -> tuple[int, ...]:
        a, _, b, _, c = self.canonical_shape
        return (a, 1, b, 1, c)

    @property
    def rms_shape(self) -> tuple[int, ...]:
        """The shape of one RMS value per slice, or ``()`` for one per tensor."""
        return self.slice_shape if self.per_slice else ()

    def view(self, sums: Tensor, name: str) -> Tensor:
        """The named sum of this tensor, a view of ``sums``."""
        a, n, b, m, c = self.canonical_shape
        shapes = {
            "row": (a, n, b, 1, c),
            "col": (a, 1, b, m, c),
            "param_sq": (2, *self.rms_shape),
            "total": self.slice_shape,
            "old_row_mean": self.slice_shape,
            "sum_sq_u": self.rms_shape,
            "nonfinite": (),
            "alpha": self.rms_shape,
            "update_rms": self.rms_shape,
            "finite": (),
            "row_mean": self.slice_shape,
        }
        shape = shapes[name]
        start = getattr(self, name)
        return sums[start : start + math.prod(shape)].view(shape)


def sums_layout(start: int, shape: tuple[int, ...], factored: bool, per_slice: bool) -> SumsLayout:
    """The region of a tensor of canonical ``shape`` starting at ``start``."""
    a, n, b, m, c = shape
    slices = a * b * c if factored else 0
    rms_groups = a * b * c if per_slice else 1
    sizes = [
        ("row", slices * n if factored else 0),
        ("col", slices * m if factored else 0),
        ("param_sq", 2 * rms_groups),
        ("total", slices),
        ("old_row_mean", slices),
        ("sum_sq_u", rms_groups),
        ("nonfinite", 1),
        ("alpha", rms_groups),
        ("update_rms", rms_groups),
        ("finite", 1),
        ("row_mean", slices),
    ]
    offsets, at = {}, start
    for name, size in sizes:
        offsets[name] = at
        at += size
    return SumsLayout(factored, shape, per_slice, end=at, **offsets)


@dataclass(frozen=True)
class Member:
    """One tensor of a group as the kernels see it: ``canonical`` views of its local
    (contiguous) data and state, and the whole parameter's sizes."""

    param: Tensor
    grad: Tensor
    state: TensorState
    dims: tuple[int, int] | None
    whole_numel: int
    whole_n: int
    whole_m: int
    per_slice: bool


def _canonical_shape(x: Tensor, factored: bool) -> tuple[int, int, int, int, int]:
    """``(A, n, B, m, C)`` of a ``canonical`` view; a flat one as ``(1, numel, 1, 1, 1)``."""
    if not factored:
        return (1, x.numel(), 1, 1, 1)
    a, n, b, m, c = x.shape
    return (a, n, b, m, c)


def access(member: Member, geometry: Geometry) -> Access:
    """How ``member``'s elements can be read, but for its gradient (new every step: see
    ``with_gradients``): VECTOR where every row a tile reads starts at a multiple of
    ``ALIGNMENT`` elements from a 16-byte boundary, in X, momentum, a full V̂ and compensated
    rounding's residual (data pointers at 16-byte boundaries; a factored tensor's rows
    ``ALIGNMENT``-multiples apart and its columns contiguous, a flat one's length a multiple,
    so that no tile ends inside a group of elements); else CONTIGUOUS where its columns are
    contiguous, else STRIDED."""
    state = member.state
    second = state.second_moment
    pointers = [member.param] + ([second.v] if isinstance(second, Full) else [])
    pointers += [] if state.momentum is None else [state.momentum]
    pointers += [] if state.residual is None else [state.residual]
    if member.dims is None:
        contiguous, multiple = True, member.param.numel() % ALIGNMENT == 0
    else:
        _, _, _, m, c = _canonical_shape(member.param, True)
        contiguous, multiple = c == 1, m % ALIGNMENT == 0
    if not contiguous:
        return Access.STRIDED
    unaligned = any(t.data_ptr() % VECTOR_BYTES for t in pointers) or geometry.cols % ALIGNMENT
    return Access.CONTIGUOUS if unaligned or not multiple else Access.VECTOR


def with_gradients(static: Sequence[Access], pointers: Sequence[int]) -> list[Access]:
    """Per tensor, its ``access`` (``static``) with its gradient at ``pointers``: VECTOR only
    where the gradient starts at a 16-byte boundary too."""
    return [
        Access.CONTIGUOUS if a == Access.VECTOR and p % VECTOR_BYTES else a
        for a, p in zip(static, pointers)
    ]


def build_plan(members: Sequence[Member], geometry: Geometry, device: torch.device) -> Plan:
    """The tables for ``members`` (every tensor of a group that the kernels step)."""
    rows: list[list[int]] = []
    tiles: list[Tensor] = []
    jobs: list[Tensor] = []
    layouts: list[SumsLayout] = []
    static_access: list[Access] = []
    sums_at = scratch_at = tile_count = job_count = 0
    for index, member in enumerate(members):
        factored = member.dims is not None
        shape = _canonical_shape(member.param, factored)
        layout = sums_layout(sums_at, shape, factored, member.per_slice and factored)
        layouts.append(layout)
        sums_at = layout.end
        a, n, b, m, c = shape
        slices = a * b * c
        static_access.append(access(member, geometry))
        kind = with_gradients(static_access[-1:], [member.grad.data_ptr()])[0]
        vector = kind == Access.VECTOR
        if factored:
            col_tiles = -(-m // geometry.cols) if m else 0
            tile_rows = geometry.rows_for(n, col_tiles, slices, vector)
            row_tiles = -(-n // tile_rows) if n else 0
        else:
            numel = member.param.numel()
            tile_rows = geometry.rows_for(-(-numel // geometry.cols), 1, 1, vector)
            row_tiles, col_tiles = -(-numel // (tile_rows * geometry.cols)), 1
        own = _tiles(index, factored, slices, shape, row_tiles, col_tiles, tile_rows, geometry)
        first_tile = tile_count
        tile_count += own.shape[0]
        tiles.append(own)
        own_jobs = _jobs(index, factored, slices, n, m, row_tiles, col_tiles)
        first_job = job_count
        job_count += own_jobs.shape[0]
        jobs.append(own_jobs)
        row_parts, col_parts = scratch_at, scratch_at + slices * col_tiles * n * factored
        scratch_at = col_parts + slices * row_tiles * m * factored
        state = member.state
        second = state.second_moment
        stat_a, stat_b = (second.v, None) if isinstance(second, Full) else (second.row, second.col)
        mom = state.momentum
        rows.append(
            [
                member.param.data_ptr(),
                member.grad.data_ptr(),
                stat_a.data_ptr(),
                0 if stat_b is None else stat_b.data_ptr(),
                0 if mom is None else mom.data_ptr(),
                state.step.data_ptr(),
                state.nonfinite_skips.data_ptr(),
                int(factored),
                DTYPE_CODES[member.param.dtype],
                -1 if mom is None else DTYPE_CODES[mom.dtype],
                a,
                n,
                b,
                m,
                c,
                member.whole_numel,
                member.whole_n,
                member.whole_m,
                int(layout.per_slice),
                layout.row,
                layout.col,
                layout.param_sq,
                layout.total,
                layout.old_row_mean,
                layout.sum_sq_u,
                layout.nonfinite,
                layout.alpha,
                layout.update_rms,
                layout.finite,
                first_tile,
                own.shape[0],
                row_tiles,
                col_tiles,
                row_parts,
                col_parts,
                slices,
                slices if layout.per_slice else 1,
                GRAD_CODES[member.grad.dtype],
                0 if state.residual is None else state.residual.data_ptr(),
                state.stream & 0xFFFFFFFF,
                first_job,
                own_jobs.shape[0],
                kind,
                layout.row_mean,
            ]
        )
    host = torch.tensor(rows, dtype=torch.int64).reshape(len(members), len(Field))
    tile_table = torch.cat(tiles) if tiles else torch.zeros((0, len(Tile)), dtype=torch.int64)
    job_table = torch.cat(jobs) if jobs else torch.zeros((0, len(Job)), dtype=torch.int64)
    kinds = [Access(row[Field.ACCESS]) for row in rows]
    spans = [(row[Field.FIRST_TILE], row[Field.TILES]) for row in rows]
    tile_orders = tuple(
        torch.cat(
            [torch.zeros(0, dtype=torch.int64)]
            + [torch.arange(f, f + c) for (f, c), k in zip(spans, kinds) if k == kind]
        ).to(device)
        for kind in Access
    )
    groups = [row[Field.RMS_GROUPS] for row in rows]
    offsets = [2 * sum(groups[:i]) for i in range(len(groups))]
    return Plan(
        host.to(device),
        tile_table.to(device),
        tile_orders,
        job_table.to(device),
        max(sums_at, 1),
        max(scratch_at, 1),
        layouts,
        geometry,
        host,
        torch.tensor(offsets, dtype=torch.int64).to(device),
        max(2 * sum(groups), 1),
        sum(member.param.numel() for member in members),
        max((layout.longest for layout in layouts), default=0),
        static_access,
        kinds,
    )


def _tiles(
    tensor: int,
    factored: bool,
    slices: int,
    shape: tuple[int, ...],
    row_tiles: int,
    col_tiles: int,
    tile_rows: int,
    geometry: Geometry,
) -> Tensor:
    """The tile table of one tensor, built with a few tensor ops (a tensor may have
    thousands of tiles: a conv kernel factored over its 3×3 window has one slice per pair of
    channels)."""
    if factored:
        _, n, _, m, _ = shape
        per_slice = row_tiles * col_tiles
        count = slices * per_slice
        index = torch.arange(count, dtype=torch.int64)
        slice_index, in_slice = index // max(per_slice, 1), index % max(per_slice, 1)
        row_tile, col_tile = in_slice // max(col_tiles, 1), in_slice % max(col_tiles, 1)
        row0, col0 = row_tile * tile_rows, col_tile * geometry.cols
        nrows = (n - row0).clamp(max=tile_rows)
        ncols = (m - col0).clamp(max=geometry.cols)
    else:
        numel = shape[1]
        count = row_tiles
        row_tile = torch.arange(count, dtype=torch.int64)
        span = tile_rows * geometry.cols
        row0 = row_tile * span
        nrows = (numel - row0).clamp(max=span)
        slice_index = col_tile = col0 = ncols = torch.zeros(count, dtype=torch.int64)
    columns = [
        torch.full((count,), tensor, dtype=torch.int64),
        slice_index,
        row0,
        nrows,
        col0,
        ncols,
        row_tile,
        col_tile,
    ]
    return torch.stack(columns, dim=1)


def _jobs(
    tensor: int, factored: bool, slices: int, n: int, m: int, row_tiles: int, col_tiles: int
) -> Tensor:
    """The job table of one tensor (see ``Job``, ``JobKind``), its TENSOR job first."""
    parts = [torch.tensor([[tensor, JobKind.TENSOR, 0, 0, 0]], dtype=torch.int64)]
    if factored:
        per = row_tiles * col_tiles
        parts.append(_blocks(tensor, JobKind.SLICES, slices, 1 if per > WIDE else JOB_LANES))
        parts.append(_blocks(tensor, JobKind.ROW_ENTRIES, slices * n, JOB_LANES))
        parts.append(_blocks(tensor, JobKind.COL_ENTRIES, slices * m, JOB_LANES))
        if col_tiles > 1:
            parts.append(_lines(tensor, JobKind.ROW_LINE, slices, n))
        if row_tiles > 1:
            parts.append(_lines(tensor, JobKind.COL_LINE, slices, m))
    return torch.cat(parts)


def _blocks(tensor: int, kind: JobKind, count: int, size: int) -> Tensor:
    """Jobs of ``kind`` over ``count`` entries, ``size`` at a time."""
    start = torch.arange(0, count, size, dtype=torch.int64)
    out = torch.zeros((start.shape[0], len(Job)), dtype=torch.int64)
    out[:, Job.TENSOR], out[:, Job.KIND], out[:, Job.START] = tensor, kind, start
    out[:, Job.COUNT] = (count - start).clamp(max=size)
    return out


def _lines(tensor: int, kind: JobKind, slices: int, length: int) -> Tensor:
    """Line jobs of ``kind`` over every slice's ``length`` rows (columns), ``LINE`` at a time."""
    per = -(-length // LINE)
    index = torch.arange(slices * per, dtype=torch.int64)
    out = torch.zeros((index.shape[0], len(Job)), dtype=torch.int64)
    start = (index % per) * LINE
    out[:, Job.TENSOR], out[:, Job.KIND] = tensor, kind
    out[:, Job.SLICE], out[:, Job.START] = index // per, start
    out[:, Job.COUNT] = (length - start).clamp(max=LINE)
    return out


class HP(IntEnum):
    """The group's numbers, in the order the kernels read them (float64 on CPU)."""

    LR = 0
    EPS1 = 1
    EPS2 = 2
    CLIP_THRESHOLD = 3
    DECAY_RATE = 4
    BETA2_CAP = 5
    DECAY_OFFSET = 6
    BETA1 = 7
    BETA2 = 8
    WEIGHT_DECAY = 9
    SUM_SQ_U = 10  # 1: Σ U_t² is needed (clipping or diagnostics), 0: only whether finite


class Flag(IntEnum):
    """The group's choices, in the order the kernels read them."""

    RELATIVE_STEP = 0
    WARMUP_INIT = 1
    SCALE_PARAMETER = 2
    MAXIMIZE = 3
    STOCHASTIC_ROUNDING = 4
    CLIP = 5  # clip_threshold is not None
    BETA2 = 6  # beta2 is not None
    BETA2_CAP = 7  # beta2_cap is not None
    STEP_MOMENTUM = 8
    GRADIENT_MOMENTUM = 9
    DECAY_SCALE = 10  # DECAY_SCALES


DECAY_SCALES = ("rho", "alpha", "lr", "none")
"""``weight_decay_scale`` as the kernels number it."""


def numbers(hp: Hyperparameters) -> list[float]:
    """``hp``'s numbers in ``HP`` order (0 where an option is ``None``); a Tensor ``lr`` is
    read (a CPU tensor: no device to wait for)."""
    values = {
        HP.LR: hp.lr,
        HP.EPS1: hp.eps1,
        HP.EPS2: hp.eps2,
        HP.CLIP_THRESHOLD: hp.clip_threshold,
        HP.DECAY_RATE: hp.decay_rate,
        HP.BETA2_CAP: hp.beta2_cap,
        HP.DECAY_OFFSET: hp.decay_offset,
        HP.BETA1: hp.beta1,
        HP.BETA2: hp.beta2,
        HP.WEIGHT_DECAY: hp.weight_decay,
        HP.SUM_SQ_U: hp.clip_threshold is not None or hp.diagnostics,
    }
    return [0.0 if values[k] is None else float(values[k]) for k in HP]  # type: ignore[arg-type]


def flags(hp: Hyperparameters) -> list[int]:
    """``hp``'s choices in ``Flag`` order."""
    values = {
        Flag.RELATIVE_STEP: hp.relative_step,
        Flag.WARMUP_INIT: hp.warmup_init,
        Flag.SCALE_PARAMETER: hp.scale_parameter,
        Flag.MAXIMIZE: hp.maximize,
        Flag.STOCHASTIC_ROUNDING: hp.written_as == "stochastic",
        Flag.CLIP: hp.clip_threshold is not None,
        Flag.BETA2: hp.beta2 is not None,
        Flag.BETA2_CAP: hp.beta2_cap is not None,
        Flag.STEP_MOMENTUM: hp.step_momentum,
        Flag.GRADIENT_MOMENTUM: hp.gradient_momentum,
        Flag.DECAY_SCALE: DECAY_SCALES.index(hp.weight_decay_scale),
    }
    return [int(values[k]) for k in Flag]


def c_header() -> str:
    """The tables' indices as C ``#define``s, for ``cpu.c``."""
    lines = [f"#define F_{f.name} {f.value}" for f in Field]
    lines += [f"#define T_{t.name} {t.value}" for t in Tile]
    lines += [f"#define HP_{h.name} {h.value}" for h in HP]
    lines += [f"#define FLAG_{g.name} {g.value}" for g in Flag]
    lines += [f"#define N_FIELDS {len(Field)}", f"#define N_TILE_FIELDS {len(Tile)}"]
    return "\n".join(lines) + "\n"
