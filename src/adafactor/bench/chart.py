"""The chart: grouped bars of median step time (with the bandwidth floors) and of peak
transient memory, one group per set and dtype (matplotlib, imported only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .candidates import CANDIDATES


def chart(rows: list[dict[str, Any]], path: Path, where: str = "CPU") -> None:
    """Write the chart of ``rows`` to ``path``; ``where`` names the device in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["set"], r["dtype"]) for r in rows))
    keys = [k for k in CANDIDATES if any(r["candidate"] == k for r in rows)]
    by = {(r["set"], r["dtype"], r["candidate"]): r for r in rows}
    width = 0.85 / max(len(keys), 1)
    colours = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20")
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
            ax.bar(xs, ys, width, label=CANDIDATES[key].label, color=colours(i % colours.N))
        if panel == 0:
            _draw_floors(ax, rows, groups)
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=3, loc="upper left")
    axes[1].set_xticks(range(len(groups)))
    axes[1].set_xticklabels([f"{s}\n{d}" for s, d in groups])
    fig.suptitle(f"Optimizer step on {where}: lower is better")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _draw_floors(ax: Any, rows: list[dict[str, Any]], groups: list[tuple[str, str]]) -> None:
    """The three floors as horizontal lines across each group, and their legend entries."""
    for g, (set_name, dtype) in enumerate(groups):
        f = _group_floor(rows, set_name, dtype)
        if f:
            left, right = g - 0.45, g + 0.45
            ax.hlines(f["adafactor_ms"], left, right, colors="k", linewidth=1.5)
            ax.hlines(f["adafactor_exact_clip_ms"], left, right, colors="k", linestyles=":")
            ax.hlines(f["adamw_ms"], left, right, colors="grey", linestyles="--")
    ax.plot([], [], "k-", label="Adafactor floor 5N·b")
    ax.plot([], [], "k:", label="exact-clip floor 6N·b")
    ax.plot([], [], "--", color="grey", label="AdamW floor 7N·b")


def _group_floor(rows: list[dict[str, Any]], set_name: str, dtype: str) -> dict | None:
    for row in rows:
        if row["set"] == set_name and row["dtype"] == dtype and "floor" in row:
            return row["floor"]
    return None
