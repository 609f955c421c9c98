"""From runs to rows: one row per set × dtype × candidate, its medians over all timed steps of
all repetitions, and every ratio between medians of the same run (against the fastest peer
Adafactor, against fused AdamW, against the bandwidth floors)."""

from __future__ import annotations

import statistics
from typing import Any

from .candidates import CANDIDATES
from .runner import CaseKey
from .sets import floors


def aggregate(case: CaseKey, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A case's row from its runs: ``ok`` with medians when every run succeeded, else the
    first failure's status and error."""
    set_name, dtype, key = case
    row: dict[str, Any] = {
        "set": set_name,
        "dtype": dtype,
        "candidate": key,
        "label": CANDIDATES[key].label,
        "kind": CANDIDATES[key].kind,
    }
    good = [r for r in runs if r["status"] == "ok"]
    if not good or len(good) < len(runs):
        bad = next(r for r in runs if r["status"] != "ok")
        return {**row, "status": bad["status"], "error": bad.get("error", "")}
    times = [t for r in good for t in r["step_ms"]]
    return {
        **row,
        "status": "ok",
        "median_ms": statistics.median(times),
        "step_ms": times,
        "first_step_s": good[0]["first_step_s"],
        "first_step_s_runs": [r["first_step_s"] for r in good],
        "state_bytes": good[0]["state_bytes"],
        "peak_transient_bytes": max(
            r["peak_transient_bytes"] for r in good if r["peak_transient_bytes"] is not None
        ),
        "peak_rss_delta_bytes": max((r["peak_rss_delta_bytes"] or 0) for r in good),
        "params_finite": all(r["params_finite"] for r in good),
        "threads": good[0]["threads"],
        "load": [r["load"] for r in runs],
    }


def summarize(
    results: list[dict[str, Any]], sets: dict[str, dict[str, Any]], bandwidth: float
) -> list[dict[str, Any]]:
    """The rows with their floors and ratios, grouped by set and dtype (``results`` is changed
    in place)."""
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
            if row["status"] == "ok":
                row.update(ratios(row, ok, fastest, floor))
        rows.extend(group)
    return rows


def ratios(
    row: dict[str, Any],
    ok: dict[str, dict[str, Any]],
    fastest: str | None,
    floor: dict[str, float],
) -> dict[str, Any]:
    """One successful row's ratios to the others of its group, to its floors, and (fused
    only) its compile time."""
    median = row["median_ms"]
    adamw = CANDIDATES[row["candidate"]].kind == "adamw"
    own_floor = "adamw" if adamw else "adafactor"
    out: dict[str, Any] = {
        "ratios": {k: median / r["median_ms"] for k, r in ok.items()},
        "x_fastest_peer": median / ok[fastest]["median_ms"] if fastest else None,
        "x_adamw_fused": median / ok["adamw-fused"]["median_ms"] if "adamw-fused" in ok else None,
        "x_floor": median / floor[f"{own_floor}_ms"],
        # at the minimum traffic
        "achieved_bytes_per_s": floor[f"{own_floor}_bytes"] / (median / 1e3),
        "x_floor_exact_clip": None if adamw else median / floor["adafactor_exact_clip_ms"],
    }
    if row["candidate"] == "ours-fused":
        out["compile_s"] = max(row["first_step_s"] - median / 1e3, 0.0)
        warm = row["first_step_s_runs"][1:]
        out["compile_s_warm_cache"] = (
            max(statistics.median(warm) - median / 1e3, 0.0) if warm else None
        )
    return out


def rows_from_runs(
    runs: dict[CaseKey, list[dict[str, Any]]], sets: dict[str, dict[str, Any]], bandwidth: float
) -> list[dict[str, Any]]:
    """Every case's row, with its floors and ratios."""
    return summarize(
        [aggregate(case, case_runs) for case, case_runs in runs.items()], sets, bandwidth
    )
