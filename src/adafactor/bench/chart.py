"""The charts (matplotlib, imported only here): the step benchmark's grouped bars of median
step time (with the bandwidth floors) and of peak transient memory, one group per set and
dtype; the training benchmark's peak training memory of AdamW, Adafactor and Adafactor in
backward, one panel per model and dtype."""

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


TRAINING_CHART = ("adamw-fused", "ours", "ours-in-backward")
"""The optimizers of the training chart, in bar order."""
_SHORT = {
    "adamw-fused": "AdamW\n(fused)",
    "ours": "Adafactor",
    "ours-in-backward": "Adafactor\nin backward",
}


def training_chart(rows: list[dict[str, Any]], path: Path, where: str = "CPU") -> None:
    """Write the peak training memory of ``TRAINING_CHART``'s rows (the training benchmark's,
    summarized) to ``path``: one panel per model and dtype, a stacked bar per optimizer of the
    parameters, the gradients alive at once, the optimizer state and the rest of the peak
    (activations, autograd's buffers), the peak written on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {
        (r["model"], r["dtype"], r["candidate"]): r
        for r in rows
        if r["status"] == "ok" and r["peak_bytes"] is not None
    }
    groups = list(dict.fromkeys((m, d) for m, d, k in by if k in TRAINING_CHART))
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(max(4, 3.2 * len(groups)), 4.8))
    axes = list(axes) if len(groups) > 1 else [axes]
    colours = plt.get_cmap("tab10")
    parts = (
        "parameters",
        "gradients alive at once",
        "optimizer state",
        "rest of the peak (autograd's buffers, activations)",
    )
    for ax, (model, dtype) in zip(axes, groups):
        keys = [k for k in TRAINING_CHART if (model, dtype, k) in by]
        for x, key in enumerate(keys):
            row = by[(model, dtype, key)]
            in_backward = key == "ours-in-backward"
            grads = row["largest_gradient_bytes"] if in_backward else row["gradient_bytes"]
            rest = max(row["peak_bytes"] - row["param_bytes"] - grads - row["state_bytes"], 0)
            bottom = 0.0
            for i, nbytes in enumerate((row["param_bytes"], grads, row["state_bytes"], rest)):
                ax.bar(x, nbytes / 2**20, 0.7, bottom=bottom, color=colours(i), label=parts[i])
                bottom += nbytes / 2**20
            ax.text(x, bottom, f"{row['peak_bytes'] / 2**20:,.0f}", ha="center", va="bottom")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([_SHORT[k] for k in keys], fontsize=8)
        ax.set_title(f"{model} {dtype}", fontsize=10)
        ax.margins(y=0.12)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("peak live tensor memory (MiB)")
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(f"Peak memory of a training step on {where}: lower is better")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
