"""The plots: training-loss curves and the Figure 1 diagnostic RMS(U_t), one panel per section
of the results and rate; a diverged run ends in a cross."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

from .configs import RUNS, SECTIONS, RunConfig  # noqa: E402
from .diagnostics import SMOOTHING, moving_average  # noqa: E402
from .runner import RunResult  # noqa: E402

RATE_TITLES = {"paper": "paper's rate", "stress": "stress rate"}
LOSS_CEILING = 10.0
"""Losses above this (an untrained model's is ln 2000 ≈ 7.6) are cut off the plot."""


def _panels(results: Mapping[str, RunResult]) -> list[tuple[str, list[RunConfig]]]:
    """(title, runs) for each section and rate with a run; relative-step runs, which have no
    absolute rate, join the panels of both rates of their section."""
    panels = []
    for section in SECTIONS:
        configs = [c for c in RUNS.values() if c.section == section and c.name in results]
        for rate, title in RATE_TITLES.items():
            absolute = [c for c in configs if c.rate == rate]
            relative = [c for c in configs if c.rate == "relative"]
            if absolute or (relative and rate == "paper"):
                panels.append((f"{section}, {title}", absolute + relative))
    return panels


def _update_rms(result: RunResult) -> list[float]:
    """Per step, the largest RMS(U_t) of the watched tensors."""
    columns = [v for k, v in result.curves.items() if k.startswith("rms ")]
    return [max((x for x in xs if x is not None), default=float("nan")) for xs in zip(*columns)]


def _figure(
    results: Mapping[str, RunResult],
    series: str,
    path: Path,
) -> Path:
    panels = _panels(results)
    cols = 2 if len(panels) > 1 else 1
    rows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.4 * rows), squeeze=False)
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no finished runs", ha="center", va="center")
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    for ax, (title, configs) in zip(axes.flat, panels):
        for config in configs:
            result = results[config.name]
            steps = result.curves["step"]
            ys = moving_average(result.curves["loss"] if series == "loss" else _update_rms(result))
            (line,) = ax.plot(steps, ys, label=config.name, linewidth=1)
            if result.diverged:
                ax.plot(
                    steps[-1:],
                    [min(ys[-1], LOSS_CEILING) if series == "loss" else ys[-1]],
                    "x",
                    color=line.get_color(),
                    markersize=9,
                )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if series == "loss":
            ax.set_ylabel(f"training loss ({SMOOTHING}-step mean)", fontsize=8)
            bottom, _ = ax.get_ylim()
            ax.set_ylim(bottom, min(ax.get_ylim()[1], LOSS_CEILING))
        else:
            ax.set_yscale("log")
            ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
            ax.set_ylabel(f"RMS(U_t) ({SMOOTHING}-step mean, max of watched)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def write_plots(results: Mapping[str, RunResult], directory: Path) -> list[Path]:
    """Write ``loss.png`` and ``update_rms.png`` into ``directory``; returns their paths."""
    return [
        _figure(results, "loss", directory / "loss.png"),
        _figure(results, "update_rms", directory / "update_rms.png"),
    ]
