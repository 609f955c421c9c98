"""The training benchmark's runs into rows, the targets of the step inside the backward pass
judged on them, and the markdown tables.

Each target compares rows of one model and dtype, measured in the same run:

* (a) memory: in backward, peak ≤ the ordinary mode's peak − 0.9 × (gradient bytes − the
  largest gradient's bytes);
* (b) against AdamW: in backward, peak ≤ 0.5 × fused AdamW's peak;
* (c) time: in backward, the median training step ≤ 1.05 × the ordinary mode's; judged on
  the steps of the two modes in turn in one process (``ours-alternating``: the median of
  each pair's ratio) where it ran, else on the two separate processes' medians.
"""

from __future__ import annotations

import statistics
from typing import Any

from .training import CANDIDATES

MEMORY_SHARE = 0.9  # (a): of the gradients that need not be alive at once
ADAMW_SHARE = 0.5  # (b)
TIME_RATIO = 1.05  # (c)

CaseKey = tuple[str, str, str]  # model, dtype, candidate


def aggregate(case: CaseKey, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One case's row: the median of every timed step of every run; the memory of the run
    that measured it."""
    model, dtype, key = case
    row: dict[str, Any] = {"model": model, "dtype": dtype, "candidate": key}
    row["label"] = CANDIDATES[key]
    bad = [r for r in runs if r["status"] != "ok"]
    if bad or not runs:
        first = bad[0] if bad else {"status": "error", "error": "not run"}
        return {**row, "status": first["status"], "error": first.get("error", "")}
    measured = next((r for r in runs if r["peak_bytes"] is not None), runs[0])
    times = [t for r in runs for t in r["step_ms"]]
    rss = [r["peak_rss_above_built_bytes"] for r in runs if r["peak_rss_above_built_bytes"]]
    in_turn = [
        (o, b)
        for r in runs
        if r["in_backward_ms"]
        for o, b in zip(r["step_ms"], r["in_backward_ms"])
    ]
    fields = ("param_bytes", "gradient_bytes", "largest_gradient_bytes", "tensors", "state_bytes")
    return {
        **row,
        "status": "ok",
        "median_ms": statistics.median(times),
        "step_ms": times,
        "in_backward_ms": [b for _, b in in_turn] or None,
        "pair_ratio": statistics.median(b / o for o, b in in_turn) if in_turn else None,
        "first_step_s": runs[0]["first_step_s"],
        **{f: runs[0][f] for f in fields},
        "peak_bytes": measured["peak_bytes"],
        "peak_rss_above_built_bytes": max(rss) if rss else None,  # None on CUDA
        "breakdown": measured["breakdown"],
        "loss": [r["loss"] for r in runs],
        "threads": runs[0]["threads"],
        "load": [r["load"] for r in runs],
    }


def held_bytes(row: dict[str, Any]) -> int:
    """Parameters, the gradients alive at once (the largest only in backward, else all) and
    the optimizer state: what ``adafactor memory`` predicts, with the state measured."""
    in_backward = row["candidate"] == "ours-in-backward"
    grads = row["largest_gradient_bytes"] if in_backward else row["gradient_bytes"]
    return row["param_bytes"] + grads + row["state_bytes"]


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """The successful rows by model and dtype, then by candidate."""
    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "ok":
            groups.setdefault((row["model"], row["dtype"]), {})[row["candidate"]] = row
    return groups


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each successful row with its ratios to the ordinary mode (time) and to AdamW (peak), and
    the bytes it held beyond ``held_bytes`` at its peak (``rows`` is changed in place)."""
    for group in _groups(rows).values():
        ordinary, adamw = group.get("ours"), group.get("adamw-fused")
        for row in group.values():
            peak = row["peak_bytes"]
            row["x_ordinary_time"] = row["median_ms"] / ordinary["median_ms"] if ordinary else None
            row["x_adamw_peak"] = peak / adamw["peak_bytes"] if adamw and peak else None
            row["held_bytes"] = held_bytes(row)
            row["rest_bytes"] = peak - row["held_bytes"] if peak is not None else None
    return rows


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Targets (a), (b) and (c) for each model and dtype, where their rows were measured."""
    out = []
    for (model, dtype), group in _groups(rows).items():
        keys = ("ours-in-backward", "ours", "adamw-fused", "ours-alternating")
        ib, ordinary, adamw, alternating = (group.get(k) for k in keys)
        where = {"model": model, "dtype": dtype}
        peak = ib["peak_bytes"] if ib else None
        if ib and peak is not None and ordinary and ordinary["peak_bytes"] is not None:
            spared = ib["gradient_bytes"] - ib["largest_gradient_bytes"]
            bound = ordinary["peak_bytes"] - MEMORY_SHARE * spared
            out.append(
                {
                    **where,
                    "target": "a",
                    "value": peak,
                    "bound": bound,
                    "saved": ordinary["peak_bytes"] - peak,
                    "spared": spared,
                    "met": peak <= bound,
                }
            )
        if peak is not None and adamw and adamw["peak_bytes"]:
            ratio = peak / adamw["peak_bytes"]
            out.append({**where, "target": "b", "value": ratio, "met": ratio <= ADAMW_SHARE})
        separate = ib["median_ms"] / ordinary["median_ms"] if ib and ordinary else None
        in_turn = alternating["pair_ratio"] if alternating else None
        ratio = in_turn if in_turn is not None else separate
        if ratio is not None:
            out.append(
                {
                    **where,
                    "target": "c",
                    "value": ratio,
                    "in_turn": in_turn,
                    "separate": separate,
                    "met": ratio <= TIME_RATIO,
                }
            )
    return out


def _mib(nbytes: float | None) -> str:
    return "" if nbytes is None else f"{nbytes / 2**20:,.1f}"


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}×"


def models_table(rows: list[dict[str, Any]]) -> str:
    """Each model's tensors and, per dtype, its parameter, gradient and largest gradient MiB."""
    lines = [
        "| model | dtype | tensors | parameters MiB | gradients MiB | largest gradient MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    seen = set()
    for row in rows:
        key = (row["model"], row["dtype"])
        if row["status"] != "ok" or key in seen:
            continue
        seen.add(key)
        lines.append(
            f"| {row['model']} | {row['dtype']} | {row['tensors']} | {_mib(row['param_bytes'])} "
            f"| {_mib(row['gradient_bytes'])} | {_mib(row['largest_gradient_bytes'])} |"
        )
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One row per model × dtype × optimizer."""
    lines = [
        (
            "| model | dtype | optimizer | median step ms | × ordinary | peak MiB (live tensors) "
            "| × AdamW | parameters + gradients + state MiB | rest at the peak MiB "
            "| peak RSS above the built model MiB | state MiB |"
        ),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["candidate"] == "ours-alternating":
            continue  # its own table: in_turn_table
        head = f"| {row['model']} | {row['dtype']} | {row['label']} |"
        if row["status"] != "ok":
            lines.append(head + f" {row['status']}: {row.get('error', '')} |" + " |" * 7)
            continue
        lines.append(
            head + f" {row['median_ms']:,.1f} | {_x(row['x_ordinary_time'])} "
            f"| {_mib(row['peak_bytes'])} | {_x(row['x_adamw_peak'])} "
            f"| {_mib(row['held_bytes'])} | {_mib(row['rest_bytes'])} "
            f"| {_mib(row['peak_rss_above_built_bytes'])} | {_mib(row['state_bytes'])} |"
        )
    return "\n".join(lines)


def targets_table(judged: list[dict[str, Any]]) -> str:
    """The targets, each with its figures and whether it was met."""
    lines = ["| model | dtype | target | measured | bound | met |", "|---|---|---|---|---|---|"]
    for t in judged:
        if t["target"] == "a":
            what = "(a) peak in backward ≤ ordinary − 0.9 × (gradients − largest)"
            measured = f"{_mib(t['value'])} MiB (saved {_mib(t['saved'])} MiB)"
            bound = f"{_mib(t['bound'])} MiB (0.9 × {_mib(t['spared'])} MiB)"
        elif t["target"] == "b":
            what = "(b) peak in backward ≤ 0.5 × AdamW's"
            measured, bound = _x(t["value"]), f"{ADAMW_SHARE}×"
        else:
            what = "(c) step time in backward ≤ 1.05 × ordinary"
            measured = _x(t["value"]) + (" in turn" if t["in_turn"] is not None else "")
            if t["in_turn"] is not None and t["separate"] is not None:
                measured += f" (separate processes: {_x(t['separate'])})"
            bound = f"{TIME_RATIO}×"
        verdict = "met" if t["met"] else "missed"
        lines.append(f"| {t['model']} | {t['dtype']} | {what} | {measured} | {bound} | {verdict} |")
    return "\n".join(lines)


def in_turn_table(rows: list[dict[str, Any]]) -> str:
    """The two modes' steps taken in turn in one process (``ours-alternating``)."""
    lines = [
        (
            "| model | dtype | pairs of steps | ordinary median ms | in backward median ms "
            "| median of the pairs' ratios |"
        ),
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["candidate"] != "ours-alternating" or row["status"] != "ok":
            continue
        lines.append(
            f"| {row['model']} | {row['dtype']} | {len(row['step_ms'])} | {row['median_ms']:,.1f} "
            f"| {statistics.median(row['in_backward_ms']):,.1f} | {_x(row['pair_ratio'])} |"
        )
    return "\n".join(lines)
