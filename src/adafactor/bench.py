"""``adafactor bench`` / ``python -m adafactor.bench``: step time, state and transient memory of
this Adafactor next to its peers and AdamW, on realistic parameter sets built without downloads.

Every candidate × parameter set × dtype runs in a subprocess of its own, so that its memory is
its own and one candidate's allocations cannot warm the allocator for the next. The parent runs
them round-robin (repetition 1 of every candidate, then repetition 2, ...), so that a change of
machine load hits every candidate alike; medians are over all timed steps of all repetitions
and every ratio is between medians of the same run.

What a child measures, after building the parameters and gradients (seeded random values):

* ``first_step_s``: the first ``step()`` (allocates the state; for ``fused`` it compiles the
  kernels: the compile cost is ``first_step_s`` minus the median step);
* ``step_ms``: each timed ``step()`` after the warm-up steps (``time.perf_counter``; CPU
  operators are synchronous);
* ``state_bytes``: bytes of the tensors in ``optimizer.state``;
* ``peak_transient_bytes``: the highest amount of memory that one ``step()`` holds allocated
  beyond what existed when it started, from the allocation events of PyTorch's CPU allocator
  recorded by ``torch.profiler`` (``profile_memory=True``) in one extra, untimed step. It counts
  every tensor buffer, those that compiled kernels allocate included; it does not count
  non-tensor memory (Python objects, compiler scratch), which is small for a step.
  ``peak_rss_delta_bytes`` is a cross-check from the kernel: the peak RSS (``VmHWM``, reset
  through ``/proc/self/clear_refs``) minus the RSS before the step; it is a lower bound, as the
  C allocator reuses memory freed by earlier steps without new page faults.

The parent measures the machine's copy bandwidth (``dst.copy_(src)`` of 256 MiB, counted as
read + write) and divides each set's minimum step traffic by it: the bandwidth floor.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHILD_MARKER = "ADAFACTOR_BENCH_RESULT "
DTYPES = ("fp32", "bf16")
DTYPE_BYTES = {"fp32": 4, "bf16": 2}
DEFAULT_SETS = ("t5-small", "gpt2-small", "4096x4096")
QUICK_SETS = ("256x128",)


@dataclass(frozen=True)
class Candidate:
    key: str
    label: str
    kind: str  # "ours", "peer" (another Adafactor) or "adamw"
    package: str | None = None  # the module that must be importable


CANDIDATES: dict[str, Candidate] = {
    c.key: c
    for c in (
        Candidate("ours-eager", "adafactor (eager)", "ours"),
        Candidate("ours-fused", "adafactor (fused)", "ours"),
        Candidate("torch", "torch.optim.Adafactor", "peer"),
        Candidate("torch-foreach", "torch.optim.Adafactor (foreach)", "peer"),
        Candidate("hf", "transformers Adafactor", "peer", "transformers"),
        Candidate("timm", "timm Adafactor", "peer", "timm"),
        Candidate("pytorch_optimizer", "pytorch_optimizer AdaFactor", "peer", "pytorch_optimizer"),
        Candidate("adamw-foreach", "AdamW (foreach)", "adamw"),
        Candidate("adamw-fused", "AdamW (fused)", "adamw"),
    )
}


# ---------------------------------------------------------------------------------------------
# Parameter sets


def set_shapes(name: str) -> list[tuple[int, ...]]:
    """The parameter shapes of a set: ``t5-small``, ``gpt2-small`` (``model_shapes``) or
    ``NxM`` (one matrix)."""
    from .model_shapes import MODELS

    if name in MODELS:
        return [tuple(t.shape) for t in MODELS[name]().values()]
    match = re.fullmatch(r"(\d+)x(\d+)", name)
    if match:
        return [(int(match[1]), int(match[2]))]
    raise ValueError(f"unknown parameter set {name!r}: use {', '.join(MODELS)} or NxM")


def set_info(name: str) -> dict[str, Any]:
    shapes = set_shapes(name)
    sizes = [math.prod(s) for s in shapes]
    return {
        "tensors": len(shapes),
        "numel": sum(sizes),
        "largest_param_numel": max(sizes),
        "matrices": sum(len(s) >= 2 for s in shapes),
    }


def floors(numel: int, dtype: str, bandwidth: float) -> dict[str, float]:
    """Minimum bytes a step moves, and the time that takes at ``bandwidth`` (bytes/s).

    Adafactor (no momentum): read G and X twice (statistics, then the update), write X once:
    5·N·b. With exact update clipping the RMS of the update needs one more read of G before
    anything is written: 6·N·b (what ours does: G 3×, X 2×, X written 1×). AdamW: read X, G,
    m, v and write X, m, v: 7·N·b (torch keeps m and v in the parameter's dtype).
    """
    b = DTYPE_BYTES[dtype]
    out = {
        "adafactor_bytes": 5 * numel * b,
        "adafactor_exact_clip_bytes": 6 * numel * b,
        "adamw_bytes": 7 * numel * b,
    }
    for key in list(out):
        out[key.replace("_bytes", "_ms")] = out[key] / bandwidth * 1e3
    return out


# ---------------------------------------------------------------------------------------------
# The child: one candidate on one set in one dtype


def _make_optimizer(key: str, params: list[Any]) -> Any:
    import torch

    if key in ("ours-eager", "ours-fused"):
        from .optimizer import Adafactor

        return Adafactor(params, fused=key == "ours-fused")
    if key == "torch":
        return torch.optim.Adafactor(params)
    if key == "torch-foreach":
        return torch.optim.Adafactor(params, foreach=True)
    if key in ("hf", "timm"):
        from .presets import peer_optimizer_class

        return peer_optimizer_class(key)(params)  # their defaults: relative step, no momentum
    if key == "pytorch_optimizer":
        from pytorch_optimizer import AdaFactor

        return AdaFactor(params, betas=(None, 0.999))  # momentum off, like the others
    if key == "adamw-foreach":
        return torch.optim.AdamW(params, lr=1e-3, foreach=True)
    if key == "adamw-fused":
        return torch.optim.AdamW(params, lr=1e-3, fused=True)
    raise ValueError(f"unknown candidate {key!r}")


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _profiled_peak(step: Any) -> int:
    """The highest net allocation (bytes) of the CPU allocator during ``step()``."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocations: list[tuple[int, int]] = []
    pending = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        node = pending.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))
        pending.extend(node.children)
    live = peak = 0
    for _, size in sorted(allocations):
        live += size
        peak = max(peak, live)
    return peak


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the set, step the candidate, measure; returns the measurements."""
    import torch

    from .memory import optimizer_state_bytes

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    generator = torch.Generator().manual_seed(spec.get("seed", 0))
    params = []
    for shape in set_shapes(spec["set"]):
        p = torch.empty(shape, dtype=torch.float32).normal_(0.0, 0.02, generator=generator)
        g = torch.empty(shape, dtype=torch.float32).normal_(0.0, 1e-3, generator=generator)
        p = torch.nn.Parameter(p.to(dtype))
        p.grad = g.to(dtype)
        params.append(p)
    optimizer = _make_optimizer(spec["candidate"], params)

    start = time.perf_counter()
    optimizer.step()
    first_step_s = time.perf_counter() - start
    for _ in range(max(spec["warmup"] - 1, 0)):
        optimizer.step()
    step_ms = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        optimizer.step()
        step_ms.append((time.perf_counter() - start) * 1e3)

    peak = peak_rss_delta = None
    if spec.get("measure_memory", True):
        rss_before = _rss_bytes("VmRSS")
        reset = _reset_peak_rss()
        optimizer.step()
        peak_rss_delta = _rss_bytes("VmHWM") - rss_before if reset else None
        peak = _profiled_peak(optimizer.step)
    finite = all(bool(torch.isfinite(p).all()) for p in params)
    return {
        "first_step_s": first_step_s,
        "step_ms": step_ms,
        "state_bytes": optimizer_state_bytes(optimizer),
        "peak_transient_bytes": peak,
        "peak_rss_delta_bytes": peak_rss_delta,
        "params_finite": finite,
        "threads": torch.get_num_threads(),
    }


def _child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    try:
        result = {"status": "ok", **run_child(spec)}
    except ImportError as error:
        result = {"status": "not installed", "error": f"{type(error).__name__}: {error}"}
    except Exception as error:  # noqa: BLE001 (a peer that cannot run a case: report it)
        message = str(error).strip().splitlines()
        result = {
            "status": "error",
            "error": f"{type(error).__name__}: {message[0] if message else ''}",
        }
    print(CHILD_MARKER + json.dumps(result), flush=True)
    return 0


def _spawn(spec: dict[str, Any], env: dict[str, str], timeout: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "adafactor.bench", "--child", json.dumps(spec)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(CHILD_MARKER):
            return json.loads(line[len(CHILD_MARKER) :])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "error", "error": f"exit code {done.returncode}: {tail}"}


# ---------------------------------------------------------------------------------------------
# The parent


def copy_bandwidth(nbytes: int = 256 << 20, repeats: int = 15) -> float:
    """The machine's copy bandwidth in bytes/s: ``dst.copy_(src)`` counted as 2·nbytes moved
    (read + write), median over ``repeats``."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.zeros_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(times)


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    try:
        lscpu = subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "L3 cache", "Hypervisor vendor"):
                info[key.strip().lower().replace(" ", "_")] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/meminfo") as f:
            info["memory_bytes"] = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    versions = {}
    from importlib.metadata import PackageNotFoundError, version

    for package in ("transformers", "timm", "pytorch_optimizer"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    info["peers"] = versions
    return info


def _installed(candidate: Candidate) -> bool:
    return candidate.package is None or importlib.util.find_spec(candidate.package) is not None


def summarize(
    results: list[dict[str, Any]], sets: dict[str, dict[str, Any]], bandwidth: float
) -> list[dict[str, Any]]:
    """One row per set × dtype × candidate, with medians, ratios and floors."""
    rows = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in results:
        groups.setdefault((row["set"], row["dtype"]), []).append(row)
    for (set_name, dtype), group in groups.items():
        floor = floors(sets[set_name]["numel"], dtype, bandwidth)
        ok = {r["candidate"]: r for r in group if r["status"] == "ok"}
        peers = {k: r for k, r in ok.items() if CANDIDATES[k].kind == "peer"}
        fastest = min(peers, key=lambda k: peers[k]["median_ms"]) if peers else None
        for row in group:
            row["floor"] = floor
            row["fastest_peer"] = fastest
            if row["status"] != "ok":
                continue
            median = row["median_ms"]
            row["ratios"] = {k: median / r["median_ms"] for k, r in ok.items()}
            row["x_fastest_peer"] = median / peers[fastest]["median_ms"] if fastest else None
            row["x_adamw_fused"] = (
                median / ok["adamw-fused"]["median_ms"] if "adamw-fused" in ok else None
            )
            kind = CANDIDATES[row["candidate"]].kind
            own_floor = floor["adamw_ms"] if kind == "adamw" else floor["adafactor_ms"]
            row["x_floor"] = median / own_floor
            own_bytes = floor["adamw_bytes"] if kind == "adamw" else floor["adafactor_bytes"]
            row["achieved_bytes_per_s"] = own_bytes / (median / 1e3)  # at the minimum traffic
            row["x_floor_exact_clip"] = (
                None if kind == "adamw" else median / floor["adafactor_exact_clip_ms"]
            )
            if row["candidate"] == "ours-fused":
                row["compile_s"] = max(row["first_step_s"] - median / 1e3, 0.0)
                warm = row["first_step_s_runs"][1:]
                row["compile_s_warm_cache"] = (
                    max(statistics.median(warm) - median / 1e3, 0.0) if warm else None
                )
        rows.extend(group)
    return rows


def _mib(nbytes: float | None) -> str:
    return "" if nbytes is None else f"{nbytes / 2**20:,.2f}"


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


def markdown_table(rows: list[dict[str, Any]], sets: dict[str, dict[str, Any]]) -> str:
    """The results as a markdown table, one block of rows per set and dtype."""
    lines = [
        (
            "| set | dtype | candidate | median ms | × fastest peer Adafactor | × AdamW (fused) "
            "| × floor | × floor (6N) | state MiB | peak transient MiB | 1st step s |"
        ),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        head = f"| {row['set']} | {row['dtype']} | {row['label']} |"
        if row["status"] != "ok":
            lines.append(head + f" {row['status']}: {row.get('error', '')} |" + " |" * 7)
            continue
        lines.append(
            head
            + f" {row['median_ms']:,.1f} | {_x(row['x_fastest_peer'])} | {_x(row['x_adamw_fused'])}"
            f" | {_x(row['x_floor'])} | {_x(row['x_floor_exact_clip'])}"
            f" | {_mib(row['state_bytes'])} | {_mib(row['peak_transient_bytes'])}"
            f" | {row['first_step_s']:.2f} |"
        )
    return "\n".join(lines)


def floors_table(sets: dict[str, dict[str, Any]], dtypes: Sequence[str], bandwidth: float) -> str:
    lines = [
        (
            "| set | tensors | parameters | largest tensor (fp32 MiB) | dtype "
            "| Adafactor floor 5N·b ms | exact-clip floor 6N·b ms | AdamW floor 7N·b ms |"
        ),
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name, info in sets.items():
        for dtype in dtypes:
            f = floors(info["numel"], dtype, bandwidth)
            lines.append(
                f"| {name} | {info['tensors']} | {info['numel']:,} "
                f"| {_mib(info['largest_param_numel'] * 4)} | {dtype} | {f['adafactor_ms']:.2f} "
                f"| {f['adafactor_exact_clip_ms']:.2f} | {f['adamw_ms']:.2f} |"
            )
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: median step time (with the bandwidth floors) and peak transient memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["set"], r["dtype"]) for r in rows))
    keys = [k for k in CANDIDATES if any(r["candidate"] == k for r in rows)]
    by = {(r["set"], r["dtype"], r["candidate"]): r for r in rows}
    width = 0.85 / max(len(keys), 1)
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 2.2 * len(groups) + 3), 9), sharex=True)
    for panel, (ax, field, scale, ylabel) in enumerate(
        zip(
            axes,
            ("median_ms", "peak_transient_bytes"),
            (1.0, 1 / 2**20),
            ("median step time (ms, log)", "peak transient of step() (MiB, log)"),
        )
    ):
        for i, key in enumerate(keys):
            xs, ys = [], []
            for g, (set_name, dtype) in enumerate(groups):
                row = by.get((set_name, dtype, key))
                if row and row["status"] == "ok" and row[field]:
                    xs.append(g + (i - (len(keys) - 1) / 2) * width)
                    ys.append(row[field] * scale)
            ax.bar(xs, ys, width, label=CANDIDATES[key].label, color=colours(i % 10))
        if panel == 0:
            for g, (set_name, dtype) in enumerate(groups):
                f = by_group_floor(rows, set_name, dtype)
                if f:
                    left, right = g - 0.45, g + 0.45
                    ax.hlines(f["adafactor_ms"], left, right, colors="k", linewidth=1.5)
                    ax.hlines(f["adafactor_exact_clip_ms"], left, right, colors="k", linestyles=":")
                    ax.hlines(f["adamw_ms"], left, right, colors="grey", linestyles="--")
            ax.plot([], [], "k-", label="Adafactor floor 5N·b")
            ax.plot([], [], "k:", label="exact-clip floor 6N·b")
            ax.plot([], [], "--", color="grey", label="AdamW floor 7N·b")
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=3, loc="upper left")
    axes[1].set_xticks(range(len(groups)))
    axes[1].set_xticklabels([f"{s}\n{d}" for s, d in groups])
    fig.suptitle("Optimizer step on CPU: lower is better")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def by_group_floor(rows: list[dict[str, Any]], set_name: str, dtype: str) -> dict | None:
    for row in rows:
        if row["set"] == set_name and row["dtype"] == dtype and "floor" in row:
            return row["floor"]
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adafactor bench",
        description="Benchmark this Adafactor against torch, transformers, timm and "
        "pytorch_optimizer Adafactors and AdamW: step time, state, peak transient memory, "
        "bandwidth floor. Each case runs in its own subprocess, round-robin.",
    )
    parser.add_argument(
        "--sets",
        nargs="+",
        metavar="SET",
        help=f"parameter sets: t5-small, gpt2-small or NxM "
        f"(default: {' '.join(DEFAULT_SETS)}; with --quick: {' '.join(QUICK_SETS)})",
    )
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, help="default: fp32 bf16")
    parser.add_argument(
        "--candidates",
        nargs="+",
        choices=list(CANDIDATES),
        metavar="NAME",
        help=f"default: all ({', '.join(CANDIDATES)})",
    )
    parser.add_argument("--repeats", type=int, help="subprocess runs per case (default 3)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default 5)")
    parser.add_argument(
        "--warmup", type=int, help="untimed steps per run, first included (default 2)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads in each child (default: torch's own)"
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    parser.add_argument(
        "--out", default="bench", metavar="DIR", help="output directory (default: %(default)s)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a CI-sized run: a 256x128 matrix, fp32, 1 repeat, 3 steps (explicit options win)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; write results.json and chart.png under ``--out``."""
    args = build_parser().parse_args(argv)
    if args.child:
        return _child_main(args.child)
    quick = args.quick
    set_names = args.sets or list(QUICK_SETS if quick else DEFAULT_SETS)
    dtypes = args.dtypes or (["fp32"] if quick else list(DTYPES))
    keys = args.candidates or list(CANDIDATES)
    repeats = args.repeats or (1 if quick else 3)
    steps = args.steps or (3 if quick else 5)
    warmup = args.warmup or (1 if quick else 2)
    try:
        sets = {name: set_info(name) for name in set_names}
    except ValueError as error:
        print(f"adafactor bench: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.threads:  # the bandwidth is measured with the children's thread count
        import torch

        torch.set_num_threads(args.threads)
    machine = machine_info()
    load_start = os.getloadavg()
    bandwidth = copy_bandwidth()
    print(
        f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; load {load_start[0]:.2f}; "
        f"{len(sets) * len(dtypes) * len(keys)} cases × {repeats} repeats",
        flush=True,
    )
    cache = tempfile.mkdtemp(prefix="adafactor-bench-inductor-")
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cases = {
        (s, d, k): {"set": s, "dtype": d, "candidate": k, "runs": []}
        for s in set_names
        for d in dtypes
        for k in keys
    }
    try:
        for repeat in range(repeats):
            for (s, d, k), case in cases.items():
                if repeat and case["runs"] and case["runs"][-1]["status"] != "ok":
                    continue  # an error or a missing package will not go away
                if not _installed(CANDIDATES[k]):
                    case["runs"].append({"status": "not installed", "error": "not installed"})
                    continue
                spec = {
                    "set": s,
                    "dtype": d,
                    "candidate": k,
                    "warmup": warmup,
                    "steps": steps,
                    "seed": 0,
                    "threads": args.threads,
                    "measure_memory": not any(r["status"] == "ok" for r in case["runs"]),
                }
                load = os.getloadavg()[0]
                # Each case compiles into a cache of its own: cold in repeat 1, warm after.
                case_env = {**env, "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, f"{s}-{d}-{k}")}
                result = _spawn(spec, case_env, args.timeout)
                result["load"] = load
                case["runs"].append(result)
                summary = (
                    f"{statistics.median(result['step_ms']):9.1f} ms"
                    if result["status"] == "ok"
                    else f"{result['status']}: {result['error']}"
                )
                print(
                    f"[{repeat + 1}/{repeats}] {s:>10} {d} {CANDIDATES[k].label:<32} {summary}",
                    flush=True,
                )
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    results = []
    for (s, d, k), case in cases.items():
        runs = case["runs"]
        good = [r for r in runs if r["status"] == "ok"]
        row: dict[str, Any] = {
            "set": s,
            "dtype": d,
            "candidate": k,
            "label": CANDIDATES[k].label,
            "kind": CANDIDATES[k].kind,
        }
        if good and len(good) == len(runs):
            times = [t for r in good for t in r["step_ms"]]
            row.update(
                status="ok",
                median_ms=statistics.median(times),
                step_ms=times,
                first_step_s=good[0]["first_step_s"],
                first_step_s_runs=[r["first_step_s"] for r in good],
                state_bytes=good[0]["state_bytes"],
                peak_transient_bytes=max(
                    r["peak_transient_bytes"] for r in good if r["peak_transient_bytes"] is not None
                ),
                peak_rss_delta_bytes=max((r["peak_rss_delta_bytes"] or 0) for r in good),
                params_finite=all(r["params_finite"] for r in good),
                threads=good[0]["threads"],
                load=[r["load"] for r in runs],
            )
        else:
            bad = next(r for r in runs if r["status"] != "ok")
            row.update(status=bad["status"], error=bad.get("error", ""))
        results.append(row)
    rows = summarize(results, sets, bandwidth)
    load_end = os.getloadavg()
    command = "python -m adafactor.bench " + " ".join(sys.argv[1:] if argv is None else list(argv))
    report = {
        "command": command.strip(),
        "machine": machine,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "config": {
            "sets": set_names,
            "dtypes": dtypes,
            "candidates": keys,
            "repeats": repeats,
            "steps": steps,
            "warmup": warmup,
            "threads": args.threads,
        },
        "sets": sets,
        "results": rows,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    table = markdown_table(rows, sets)
    (out / "table.md").write_text(floors_table(sets, dtypes, bandwidth) + "\n\n" + table + "\n")
    chart(rows, out / "chart.png")
    print()
    print(
        f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; load average "
        f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end"
    )
    print(floors_table(sets, dtypes, bandwidth))
    print()
    print(table)
    print(f"\nWrote {out / 'results.json'}, {out / 'table.md'}, {out / 'chart.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
