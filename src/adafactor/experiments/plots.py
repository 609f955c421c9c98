"""The plots: training-loss curves and the Figure 1 diagnostic RMS(U_t), one panel per section
of the results and regime, and RMS(U_t) per watched tensor for the runs of Figure 1. A line is
the mean over the seeds (the band their range); a diverged run ends in a cross."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib.axes
import matplotlib.figure

from .configs import REGIMES, RELATIVE, RUNS, SECTIONS, RunConfig
from .diagnostics import SMOOTHING, moving_average
from .runner import RunResult
from .seeds import Trials

LOSS_CEILING = 10.0
"""Losses above this (an untrained model's is ln 2000 ≈ 7.6) are cut off the plot."""
FIGURE_1_RUNS = ("b0-warmup", "b0-nowarmup", "b0-nowarmup-clip", "adam-warmup")
"""The runs of the per-tensor plot: β1 = 0 with and without warm-up, clipping on and off."""

Series = Callable[[RunResult], list[float]]


def _panels(results: Mapping[str, Trials]) -> list[tuple[str, list[RunConfig]]]:
    """(title, runs) for each section and regime with a run; relative-step runs, which have
    no absolute rate, join the panels of the paper's rate."""
    panels = []
    for section in SECTIONS:
        configs = [c for c in RUNS.values() if c.section == section and c.name in results]
        relative = [c for c in configs if c.regime == RELATIVE]
        for name, regime in REGIMES.items():
            absolute = [c for c in configs if c.regime == regime]
            joined = relative if name == "paper" else []
            if absolute or joined:
                panels.append((f"{section}, {regime.title}", absolute + joined))
    return panels


def _largest_update_rms(result: RunResult) -> list[float]:
    """Per step, the largest RMS(U_t) of the watched tensors."""
    columns = [v for k, v in result.curves.items() if k.startswith("rms ")]
    return [max((x for x in xs if x is not None), default=math.nan) for xs in zip(*columns)]


def _loss(result: RunResult) -> list[float]:
    """Per step, the training loss (NaN where it was not finite)."""
    return [math.nan if x is None else x for x in result.curves["loss"]]


def _tensor_rms(tensor: str) -> Series:
    """Per step, RMS(U_t) of one watched tensor."""

    def series(result: RunResult) -> list[float]:
        return [math.nan if x is None else x for x in result.curves[f"rms {tensor}"]]

    return series


def _plot_trials(
    ax: matplotlib.axes.Axes, trials: Trials, series: Series, label: str, ceiling: float
) -> None:
    """The seeds' mean of the smoothed series, their range as a band, crosses at divergence."""
    curves = [moving_average(series(r)) for r in trials]
    length = max(map(len, curves))
    steps = list(range(1, length + 1))
    at = [[c[i] for c in curves if i < len(c) and math.isfinite(c[i])] for i in range(length)]
    mean = [sum(xs) / len(xs) if xs else math.nan for xs in at]
    (line,) = ax.plot(steps, mean, label=label, linewidth=1)
    if len(trials) > 1:
        low = [min(xs) if xs else math.nan for xs in at]
        high = [max(xs) if xs else math.nan for xs in at]
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    for result, curve in zip(trials, curves):
        if result.diverged and curve:
            ax.plot([len(curve)], [min(curve[-1], ceiling)], "x", color=line.get_color())


def _style(ax: matplotlib.axes.Axes, title: str, ylabel: str, log: bool) -> None:
    """Titles, labels and scale: losses capped at ``LOSS_CEILING``, RMS(U_t) on a log scale."""
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    if log:
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    else:
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, min(top, LOSS_CEILING))
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)


def _grid(count: int, cols: int) -> tuple[matplotlib.figure.Figure, list[matplotlib.axes.Axes]]:
    cols = min(cols, max(count, 1))
    rows = max(1, -(-count // cols))
    # A figure of its own, not pyplot's: no backend to choose, nothing global to close.
    fig = matplotlib.figure.Figure(figsize=(6 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    if not count:
        axes[0, 0].text(0.5, 0.5, "no finished runs", ha="center", va="center")
    for ax in axes.flat[count:]:
        ax.set_axis_off()
    return fig, list(axes.flat)


def _save(fig: matplotlib.figure.Figure, path: Path) -> Path:
    """Write the figure as a PNG."""
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    return path


def _sections_figure(results: Mapping[str, Trials], loss: bool, path: Path) -> Path:
    """Loss or RMS(U_t) (the largest of the watched tensors), a panel per section and regime."""
    panels = _panels(results)
    fig, axes = _grid(len(panels), 2)
    series = _loss if loss else _largest_update_rms
    ceiling = LOSS_CEILING if loss else math.inf
    for ax, (title, configs) in zip(axes, panels):
        for config in configs:
            _plot_trials(ax, results[config.name], series, config.name, ceiling)
        ylabel = (
            f"training loss ({SMOOTHING}-step mean)"
            if loss
            else f"RMS(U_t) ({SMOOTHING}-step mean, max of watched)"
        )
        _style(ax, title, ylabel, log=not loss)
    return _save(fig, path)


def _figure_1_rows(results: Mapping[str, Trials]) -> list[tuple[str, list[str]]]:
    """(regime title, run names) for each regime with a run of ``FIGURE_1_RUNS``."""
    rows = []
    for regime in REGIMES.values():
        names = [n + regime.suffix for n in FIGURE_1_RUNS if n + regime.suffix in results]
        if names:
            rows.append((regime.title, names))
    return rows


def _tensors(results: Mapping[str, Trials]) -> Sequence[str]:
    """The names of the watched tensors."""
    first = next(iter(results.values()))[0]
    return [k.removeprefix("rms ") for k in first.curves if k.startswith("rms ")]


def _figure_1(results: Mapping[str, Trials], path: Path) -> Path:
    """RMS(U_t) per watched tensor (columns) and regime (rows), clipping on and off."""
    rows = _figure_1_rows(results)
    tensors = _tensors(results) if rows else []
    fig, axes = _grid(len(rows) * len(tensors), max(len(tensors), 1))
    panels = [(title, names, t) for title, names in rows for t in tensors]
    for ax, (title, names, tensor) in zip(axes, panels):
        for name in names:
            _plot_trials(ax, results[name], _tensor_rms(tensor), name, math.inf)
        _style(ax, f"{tensor}, {title}", f"RMS(U_t) ({SMOOTHING}-step mean)", log=True)
    return _save(fig, path)


def write_plots(results: Mapping[str, Trials], directory: Path) -> list[Path]:
    """Write ``loss.png``, ``update_rms.png`` and ``update_rms_tensors.png`` into
    ``directory``; returns their paths."""
    return [
        _sections_figure(results, True, directory / "loss.png"),
        _sections_figure(results, False, directory / "update_rms.png"),
        _figure_1(results, directory / "update_rms_tensors.png"),
    ]


GapCurves = Mapping[str, Sequence[tuple[Sequence[int], Sequence[float]]]]
"""Per variant, per seed: (steps, dev loss minus the baseline's at those steps)."""


def precision_gaps_figure(
    panels: Sequence[tuple[str, GapCurves, float | None]], path: Path
) -> Path:
    """``adafactor precision``'s plot: a panel per regime (title, curves, the baseline's seed
    spread or ``None``), each variant's dev-loss gap to float32 parameters over training, a
    thin line per seed and a thick one for their mean; the band is ± the seed spread."""
    fig, axes = _grid(len(panels), 3)
    for ax, (title, curves, spread) in zip(axes, panels):
        if spread is not None:
            ax.axhspan(-spread, spread, color="grey", alpha=0.2, linewidth=0, label="± seed spread")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        for variant, seeds in curves.items():
            (line,) = ax.plot([], [], linewidth=2, label=variant)
            for steps, gaps in seeds:
                ax.plot(steps, gaps, color=line.get_color(), linewidth=0.6, alpha=0.5)
            common = min(len(steps) for steps, _ in seeds)
            mean = [sum(g[i] for _, g in seeds) / len(seeds) for i in range(common)]
            line.set_data(list(seeds[0][0][:common]), mean)
        ax.relim()
        ax.autoscale_view()
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("dev loss − float32's (nats/char)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return _save(fig, path)
