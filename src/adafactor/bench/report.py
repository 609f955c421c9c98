"""The results as markdown: the floors of each set, and one row per set × dtype × candidate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .sets import floors


def _mib(nbytes: float | None) -> str:
    return "" if nbytes is None else f"{nbytes / 2**20:,.2f}"


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


def markdown_table(rows: list[dict[str, Any]]) -> str:
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
    """Each set's size and its bandwidth floors at ``bandwidth`` (bytes/s), per dtype."""
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
