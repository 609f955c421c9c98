"""The group step on CUDA, its host side: Triton kernels that walk the tables of ``plan.py``,
eight launches per group and step however many tensors the group holds (``LAUNCHES`` counts
them). The kernels are in ``triton_sums.py`` (phases 1 and 2) and ``triton_apply.py`` (phase
3), on the device functions of ``triton_lanes.py``.

Each launch takes the whole group: the tile kernels (``sums_tiles``, ``update_sums_tiles``,
``apply_tiles``) have one program per tile of at most 512 × 128 elements (fewer rows where a
tensor would otherwise leave SMs idle: ``GEOMETRY``), the job kernels one program per job of
the plan's job table (a tensor's sums over its tiles, blocks of its R and C, lines of partial
sums). A data pointer is read from the descriptor table and cast to the tensor's dtype, chosen
at run time (float32, bfloat16, float16), and read 4 elements at a time where the plan found
the tensor aligned. Every sum is reduced in a fixed order, with no atomics, so a step is
deterministic. The group's numbers (lr, ε, β…) are read from a device tensor and every
tensor's step count from its state, so nothing recompiles when they change and nothing waits
for the host; the options that choose what the step does (momentum, clipping, …) are
compile-time constants. The tests run these kernels on CPU tensors through Triton's
interpreter (``TRITON_INTERPRET=1``)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..factoring import state_layout
from ..options import Hyperparameters
from ..phases import TensorState
from ..tiling import canonical
from .errors import KernelBuildError
from .plan import HP, Access, Flag, Geometry, Member, Plan, build_plan
from .plan import flags as plan_flags
from .plan import numbers as plan_numbers
from .triton_apply import apply_scalars, apply_tiles, commit
from .triton_lanes import JOB_SUMS, TILE_SUMS
from .triton_sums import (
    statistics,
    sums_jobs,
    sums_tiles,
    update_sums_jobs,
    update_sums_tiles,
)

DEVICE_TYPE = "cuda"
SMS = 132
"""Streaming multiprocessors of an H100/H200 SXM, which the tiles are sized for."""
GEOMETRY = Geometry(rows=256, cols=128, min_rows=64, target_tiles=2 * SMS, scalar_rows=64)
"""Tiles of up to 256 rows of 128 columns: a tile kernel takes 8 rows × 128 columns at once
(4 rows, 2 in the update, of a tensor not read 4 elements at a time, whose tiles have at most
64 rows), so no program reads more than 32 blocks in a row; fewer rows (down to 64) for a
tensor that would otherwise be fewer than two tiles per SM. The partial sums of a tall
matrix's columns are then one per 256 rows: a line job adds 16 of them at once (``KB``)."""

LAUNCHES: collections.Counter[str] = collections.Counter()
"""Kernel launches made, by kernel name (read by the tests)."""
KERNELS = (
    sums_tiles,
    sums_jobs,
    statistics,
    update_sums_tiles,
    update_sums_jobs,
    apply_scalars,
    apply_tiles,
    commit,
)
"""Every kernel a step launches, in launch order (read by the tests and ``gpu_check.sh``)."""
TILE_KERNELS = (sums_tiles, update_sums_tiles, apply_tiles)
"""The kernels that stream the elements, one program per tile: launched once per way of
reading (``plan.Access``) that a group's tensors need."""
LAUNCHES_PER_STEP = len(KERNELS)
"""Launches per group and step where its tensors are all read one way, whatever their number;
three more per further way, up to ``MAX_LAUNCHES_PER_STEP``."""
MAX_LAUNCHES_PER_STEP = len(KERNELS) + 2 * len(TILE_KERNELS)


def available() -> bool:
    """Whether the kernels can run: a CUDA device (Triton is imported)."""
    return torch.cuda.is_available()


# --- The host side ------------------------------------------------------------------------------


class Buffers(NamedTuple):
    """What the kernels keep for one step: the sums, the tiles' partial sums of rows and
    columns (scratch), each tile's and each job's sums, and the step scales."""

    sums: Tensor
    scratch: Tensor
    tile_sums: Tensor
    job_sums: Tensor
    scales: Tensor


class Numbers(NamedTuple):
    """A group's numbers on the device, its choices as compile-time flags, the seed of
    stochastic rounding's bits (``rounding_seed``: with each tensor's stream and step, as
    ``equations.rounding_noise``), and the host buffers they were copied from (pinned on
    CUDA: a CUDA graph captured from this step copies from them at every replay, so they are
    kept as long as the graph is: ``PlanCache.hold``)."""

    numbers: Tensor
    flags: dict[str, Any]
    seed: Tensor  # int64, one number
    host: Tensor
    host_seed: Tensor


def make_buffers(plan: Plan) -> Buffers:
    """Fresh buffers for one step of ``plan`` on its device (each entry written before read)."""
    device = plan.descriptors.device

    def empty(numel: int) -> Tensor:
        return torch.empty(max(numel, 1), dtype=torch.float32, device=device)

    return Buffers(
        empty(plan.sums_numel),
        empty(plan.scratch_numel),
        empty(plan.tiles.shape[0] * TILE_SUMS),
        empty(plan.jobs.shape[0] * JOB_SUMS),
        empty(plan.scalars_numel),
    )


def numbers(hp: Hyperparameters, device: torch.device) -> Numbers:
    """``hp`` on ``device`` with no wait: the numbers go through pinned memory, a Tensor
    ``lr`` on the device is copied there on the device. The first time ``hp``'s compile-time
    flags meet ``device`` the kernels are compiled for them and launched once on a tiny plan
    (``prepare``), before this step launches anything.

    Raises:
        KernelBuildError: the kernels cannot be compiled or launched with these flags (found
            once per process, device and flags; nothing of the step has run).
    """
    flags = compile_flags(hp)
    prepare(hp, flags, device)
    return _numbers(hp, device, flags)


def _numbers(hp: Hyperparameters, device: torch.device, flags: dict[str, Any]) -> Numbers:
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
    host_seed = torch.tensor([hp.rounding_seed or 0], dtype=torch.int64)
    if device.type == "cuda":
        host_seed = host_seed.pin_memory()
    seed = torch.empty(1, dtype=torch.int64, device=device)
    seed.copy_(host_seed, non_blocking=True)
    return Numbers(on_device, flags, seed, values, host_seed)


def compile_flags(hp: Hyperparameters) -> dict[str, dict[str, Any]]:
    """``hp``'s choices as the kernels' compile-time constants, by name: ``"schedule"``, those
    every kernel that forms the schedules takes, and ``"apply"``, phase 3's own."""
    choice = plan_flags(hp)
    schedule_flags = {
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
    return {"schedule": schedule_flags, "apply": apply_flags}


def _numbers_without_lr(hp: Hyperparameters) -> list[float]:
    return plan_numbers(dataclasses.replace(hp, lr=0.0))


def sums_of(buffers: Buffers) -> Tensor:
    """The sums that pass between the phases."""
    return buffers.sums


def _launch(kernel: Any, grid: tuple[int, ...], *args: Any, **constants: Any) -> None:
    if _warming is None:
        LAUNCHES[kernel.__name__] += 1
        kernel[grid](*args, num_warps=warps(kernel), **constants)
        return
    try:
        if _warming == "compile":
            kernel.warmup(*args, grid=grid, num_warps=warps(kernel), **constants)
        else:
            kernel[grid](*args, num_warps=warps(kernel), **constants)
    except Exception as error:  # any failure of Triton's, its compilers' or the driver's
        raise KernelBuildError(f"{kernel.__name__}: {type(error).__name__}: {error}") from error


# --- Compiled and launched once before a step needs them --------------------------------------

_warming: str | None = None
"""While ``_warm_up`` runs: "launch", or "compile" (during a CUDA-graph capture, where a launch
would be captured and a wait is not allowed); launches then go uncounted."""
_prepared: dict[tuple[str, Any], KernelBuildError | None] = {}
"""Per device and set of compile-time flags: None where the kernels compiled and ran on a
tiny plan, else why not (not tried again in this process). ``forget()`` clears it."""


def prepare_device(device: torch.device) -> None:
    """Compile every kernel for the default options and launch it once on ``device`` (when the
    backend is chosen for it).

    Raises:
        KernelBuildError: a kernel cannot be compiled, loaded or launched; the kernel and the
            cause in the message.
    """
    hp = Hyperparameters()
    prepare(hp, compile_flags(hp), device)


def prepare(hp: Hyperparameters, flags: dict[str, Any], device: torch.device) -> None:
    """Make sure every kernel runs on ``device`` with ``flags`` (``hp``'s): the first time,
    compiled and launched on a tiny plan of its own, so that a failure (Triton's compiler,
    ptxas, the C compiler Triton ≤ 3.6 builds its launchers with, the module load, the launch
    itself) is found before a step has changed anything; remembered per process.

    Raises:
        KernelBuildError: they cannot run (again each time: the outcome is remembered).
    """
    key = (str(device), tuple((part, tuple(sorted(f.items()))) for part, f in flags.items()))
    if key not in _prepared:
        try:
            _warm_up(hp, device)
            _prepared[key] = None
        except KernelBuildError as error:
            _prepared[key] = KernelBuildError(
                f"the Triton kernels cannot be compiled or launched on {device} with "
                f"{_describe(flags)}: {error}"
            )
        except Exception as error:  # setting up the tiny plan: the device itself fails
            _prepared[key] = KernelBuildError(
                f"the Triton kernels cannot be tried on {device}: {type(error).__name__}: {error}"
            )
    failure = _prepared[key]
    if failure is not None:
        raise KernelBuildError(*failure.args)  # a new one: raising one again grows its traceback


def forget() -> None:
    """Forget which devices and flags the kernels were prepared for (``kernels.reset``)."""
    _prepared.clear()


def _describe(flags: dict[str, Any]) -> str:
    chosen = [f"{k}={v}" for part in flags.values() for k, v in part.items()]
    return "the compile-time flags " + ", ".join(chosen)


def _warm_up(hp: Hyperparameters, device: torch.device) -> None:
    """Every kernel compiled for ``hp``'s flags, and launched on a tiny plan of tensors of its
    own: a factored matrix, a vector, with momentum where ``hp`` has it (nothing of the
    user's is read or written, and torch's random state is left as it was)."""
    global _warming
    members = [_tiny_member((3, 5), hp, device), _tiny_member((4,), hp, device)]
    plan = build_plan(members, GEOMETRY, device)
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        options = _numbers(dataclasses.replace(hp, lr=1e-3), device, compile_flags(hp))
    buffers = make_buffers(plan)
    _warming = "compile" if capturing else "launch"
    try:
        sums(plan, buffers)
        update_sums(plan, buffers, options)
        apply(plan, buffers, options)
    finally:
        _warming = None
    if device.type == "cuda" and not capturing:
        torch.cuda.synchronize(device)  # a fault in a launch is reported here, not later


def _tiny_member(shape: tuple[int, ...], hp: Hyperparameters, device: torch.device) -> Member:
    """A parameter of ``shape`` (factored if 2-D) with a gradient and a fresh state."""
    dims = (0, 1) if len(shape) == 2 else None
    layout = state_layout(
        shape,
        torch.float32,
        factored=dims is not None,
        factor_dims="last",
        min_dim_size_to_factor=1,
        momentum=hp.beta1 is not None,
        momentum_dtype=hp.momentum_dtype,
    )
    state = {
        k: torch.zeros(spec.shape, dtype=spec.dtype, device=device) for k, spec in layout.items()
    }
    for k in ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"):
        if k in state:
            state[k].fill_(1.0)
    param = torch.ones(shape, device=device)
    n, m = (shape[0], shape[1]) if dims is not None else (1, 1)
    return Member(
        canonical(param, dims),
        canonical(torch.ones(shape, device=device), dims),
        TensorState.of(state, dims),
        dims,
        param.numel(),
        n,
        m,
        hp.rms_per_slice and dims is not None,
    )


TILE_WARPS = 8
"""Warps per program of the tile kernels: 4 elements per thread and tensor of a block of
8 × 128, one row per warp (a row's sum needs no barrier)."""


def warps(kernel: Any) -> int:
    """The ``num_warps`` ``kernel`` is launched (and compiled) with."""
    return TILE_WARPS if kernel in TILE_KERNELS else 4


def _tile_launches(plan: Plan) -> list[tuple[Tensor, int]]:
    """The tile kernels' launches: one per way of reading (``plan.Access``) that the group's
    tensors need, over their tiles."""
    return [(order, int(kind)) for order, kind in zip(plan.tile_orders, Access) if order.numel()]


def sums(plan: Plan, buffers: Buffers) -> None:
    """Phase 1 for every tensor of the plan: one launch per way of reading, then one."""
    for order, access in _tile_launches(plan):
        _launch(
            sums_tiles,
            (order.shape[0],),
            plan.descriptors,
            plan.tiles,
            order,
            buffers.sums,
            buffers.scratch,
            buffers.tile_sums,
            ACCESS=access,
        )
    _launch(
        sums_jobs,
        (plan.jobs.shape[0],),
        plan.descriptors,
        plan.jobs,
        buffers.sums,
        buffers.scratch,
        buffers.tile_sums,
    )


def update_sums(plan: Plan, buffers: Buffers, options: Numbers) -> None:
    """Phase 2, from complete sums: one launch, one per way of reading, one."""
    jobs = plan.jobs.shape[0]
    schedule = options.flags["schedule"]
    _launch(
        statistics,
        (jobs,),
        plan.descriptors,
        plan.jobs,
        buffers.sums,
        buffers.job_sums,
        options.numbers,
        **schedule,
    )
    for order, access in _tile_launches(plan):
        _launch(
            update_sums_tiles,
            (order.shape[0],),
            plan.descriptors,
            plan.tiles,
            order,
            buffers.sums,
            buffers.tile_sums,
            plan.jobs,
            buffers.job_sums,
            options.numbers,
            **schedule,
            ACCESS=access,
        )
    _launch(
        update_sums_jobs,
        (jobs,),
        plan.descriptors,
        plan.jobs,
        buffers.sums,
        buffers.tile_sums,
        buffers.job_sums,
    )


def apply(plan: Plan, buffers: Buffers, options: Numbers) -> None:
    """Phase 3, from complete sums: one launch, one per way of reading, one."""
    jobs = plan.jobs.shape[0]
    schedule, chosen = options.flags["schedule"], options.flags["apply"]
    _launch(
        apply_scalars,
        (jobs,),
        plan.descriptors,
        plan.jobs,
        buffers.sums,
        buffers.scales,
        plan.scalar_offsets,
        options.numbers,
        **schedule,
        SCALE_PARAMETER=chosen["SCALE_PARAMETER"],
        CLIP=chosen["CLIP"],
        DECAY_SCALE=chosen["DECAY_SCALE"],
    )
    for order, access in _tile_launches(plan):
        _launch(
            apply_tiles,
            (order.shape[0],),
            plan.descriptors,
            plan.tiles,
            order,
            buffers.sums,
            buffers.scales,
            plan.scalar_offsets,
            options.numbers,
            options.seed,
            **schedule,
            STEP_MOMENTUM=chosen["STEP_MOMENTUM"],
            MAXIMIZE=chosen["MAXIMIZE"],
            STOCHASTIC_ROUNDING=chosen["STOCHASTIC_ROUNDING"],
            ACCESS=access,
        )
    _launch(commit, (jobs,), plan.descriptors, plan.jobs, buffers.sums)


# --- What each program does, counted from the plan (tests and gpu_check read it) ----------------


def programs(plan: Plan) -> dict[str, list[int]]:
    """Programs per launch of a step of ``plan``, by kernel (a tile kernel once per way of
    reading its tensors)."""
    tiles = [order.numel() for order, _ in _tile_launches(plan)]
    jobs = [plan.jobs.shape[0]]
    return {
        k.__name__: tiles if k in TILE_KERNELS else jobs
        for k in KERNELS  # in launch order
    }


def longest_chains(plan: Plan) -> dict[str, int]:
    """Per kernel, the most loads any of its programs makes one after another on ``plan``: the
    iterations of its loops that read memory, added up over the loops of one program (a
    model of the kernels' loops, kept beside them; each iteration's loads are independent
    of one another and issued together)."""
    from .plan import JOB_LANES, WIDE, Field, Job, JobKind, Tile
    from .triton_lanes import APPLY_SCALAR_ROWS, BLOCK_C, KB, ROWS, SCALAR_ROWS

    def up(a: Tensor, b: int | Tensor) -> Tensor:
        return -(-a // b)

    d = plan.host_descriptors
    tiles = plan.tiles.cpu()
    jobs = plan.jobs.cpu()
    access = torch.tensor([int(a) for a in plan.tensors_access] or [0])
    tensor = tiles[:, Tile.TENSOR]
    vector = access[tensor] == Access.VECTOR
    factored = d[tensor, Field.FACTORED] == 1

    def tile_loop(scalar_rows: int) -> Tensor:
        # A factored tile's rows, R at a time; a flat tile's elements, R·BLOCK_C at a time.
        rows = torch.where(vector, ROWS.value, scalar_rows)
        return up(tiles[:, Tile.ROWS], torch.where(factored, rows, rows * BLOCK_C.value))

    bound = torch.where(factored, up(d[tensor, Field.JOBS], JOB_LANES), 0)
    owner = jobs[:, Job.TENSOR]
    kind = jobs[:, Job.KIND]
    per = d[owner, Field.ROW_TILES] * d[owner, Field.COL_TILES]
    slices = torch.where(per > WIDE, up(per, JOB_LANES), per)
    all_tiles = up(d[owner, Field.TILES], JOB_LANES)
    own_jobs = up(d[owner, Field.JOBS], JOB_LANES)
    groups = up(d[owner, Field.RMS_GROUPS], JOB_LANES)
    lines = torch.where(
        kind == JobKind.ROW_LINE,
        up(d[owner, Field.COL_TILES], KB.value),
        up(d[owner, Field.ROW_TILES], KB.value),
    )
    is_tensor, is_slices = kind == JobKind.TENSOR, kind == JobKind.SLICES
    is_line = (kind == JobKind.ROW_LINE) | (kind == JobKind.COL_LINE)
    zero = torch.zeros_like(kind)

    def most(x: Tensor) -> int:
        return int(x.max()) if x.numel() else 0

    return {
        "sums_tiles": most(tile_loop(SCALAR_ROWS.value)),
        "sums_jobs": most(
            torch.where(is_tensor, all_tiles, torch.where(is_slices, slices, zero))
            + torch.where(is_line, lines, zero)
        ),
        "statistics": 1 if jobs.shape[0] else 0,
        "update_sums_tiles": most(tile_loop(SCALAR_ROWS.value) + bound),
        "update_sums_jobs": most(
            torch.where(is_tensor, all_tiles + own_jobs, torch.where(is_slices, slices, zero))
        ),
        "apply_scalars": most(torch.where(is_tensor, 1 + groups, torch.ones_like(kind))),
        "apply_tiles": most(tile_loop(APPLY_SCALAR_ROWS.value)),
        "commit": 1 if jobs.shape[0] else 0,
    }
