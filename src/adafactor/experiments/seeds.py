"""A configuration run under several seeds: its figures as mean ± spread, and comparisons that
the seeds decide.

All runs of one seed start from the same weights and see the same batches and dropout masks,
so two configurations are compared seed by seed: the difference of their dev losses in each
seed that both ran. A comparison is *decided* only when every seed agrees; otherwise it is
undecided (``None``), and a verdict that turns on it says so. With one seed every comparison
is decided by the fixed tolerance alone, as before there were seeds.

A run that diverged is worse than one that finished, whatever the other seeds say; two runs
that both diverged in a seed agree in it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

from .runner import RunResult

Trials = Sequence[RunResult]
"""One configuration's runs, one per seed."""
Tri = bool | None
"""Decided true, decided false, or undecided (``None``)."""


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("no values")
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread


def format_mean(values: Sequence[float | None], digits: int) -> str:
    """``mean ± sd`` of the values that are not ``None`` ("—" if none is)."""
    known = [v for v in values if v is not None]
    if not known:
        return "—"
    mean, spread = mean_sd(known)
    if len(known) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def dev_loss(run: RunResult) -> float:
    """The dev loss, infinite for a run that diverged."""
    return math.inf if run.diverged or run.dev_loss is None else run.dev_loss


def differences(a: Trials, b: Trials) -> dict[int, float]:
    """Per seed that both ran: ``a``'s dev loss minus ``b``'s; +∞ where only ``a`` diverged,
    −∞ where only ``b`` did, NaN where both did."""
    theirs = {run.seed: run for run in b}
    out = {}
    for run in a:
        if run.seed in theirs:
            x, y = dev_loss(run), dev_loss(theirs[run.seed])
            out[run.seed] = math.nan if math.isinf(x) and math.isinf(y) else x - y
    return out


def _range(diffs: dict[int, float]) -> tuple[float, float] | None:
    """Lowest and highest difference, seeds where both diverged counting as 0; ``None``
    without a common seed."""
    values = [0.0 if math.isnan(d) else d for d in diffs.values()]
    return (min(values), max(values)) if values else None


def similar(a: Trials, b: Trials, tolerance: float) -> Tri:
    """``a ≈ b``: every seed's difference within ``tolerance`` (True); every seed's beyond it
    on the same side, or one diverged where the other did not (False); else undecided."""
    if any(math.isinf(d) for d in differences(a, b).values()):
        return False
    return all_of((not_worse(a, b, tolerance), not_worse(b, a, tolerance)))


def not_worse(a: Trials, b: Trials, tolerance: float) -> Tri:
    """``a`` at least as good as ``b`` up to ``tolerance``: True when every seed says so, False
    when every seed says ``a`` is worse by more, or ``a`` diverged where ``b`` did not."""
    diffs = differences(a, b)
    only_a, only_b = math.inf in diffs.values(), -math.inf in diffs.values()
    if only_a or only_b:
        # A run that diverged is the worse; each diverging where the other did not: no order.
        return None if only_a and only_b else only_b
    bounds = _range(diffs)
    if bounds is None:
        return None
    low, high = bounds
    if high <= tolerance:
        return True
    return False if low > tolerance else None


def worse(a: Trials, b: Trials, tolerance: float) -> Tri:
    """``a`` worse than ``b`` by more than ``tolerance``: the negation of ``not_worse``."""
    return negation(not_worse(a, b, tolerance))


def negation(x: Tri) -> Tri:
    """Three-valued "not": undecided stays undecided."""
    return None if x is None else not x


def all_of(parts: Iterable[Tri]) -> Tri:
    """Three-valued "and": False if any part is, True if all are, else undecided."""
    parts = list(parts)
    if any(p is False for p in parts):
        return False
    return True if all(p is True for p in parts) else None


def peak_rms_ratio_at_least(a: Trials, b: Trials, factor: float) -> Tri:
    """Whether ``a``'s peak RMS(U_t) is at least ``factor`` times ``b``'s in every seed both ran
    (True), in none of them (False), else undecided; seeds without a peak are left out."""
    theirs = {run.seed: run.peak_update_rms for run in b}
    pairs = [(run.peak_update_rms, theirs.get(run.seed)) for run in a]
    ratios = [mine / other for mine, other in pairs if mine is not None and other]
    if not ratios:
        return None
    if all(r >= factor for r in ratios):
        return True
    return False if all(r < factor for r in ratios) else None


def unstable_count(trials: Trials, spike_nats: float) -> int:
    """How many seeds diverged or had their smoothed loss rise ``spike_nats`` above its best."""
    return sum(run.diverged or run.largest_loss_rise >= spike_nats for run in trials)


def describe_difference(a: Trials, b: Trials) -> str:
    """The per-seed differences as ``mean (low…high)``, or the single one."""
    diffs = differences(a, b)
    if not diffs:
        return "no common seed"
    values = list(diffs.values())
    if len(values) == 1:
        return _signed(values[0])
    finite = [d for d in values if math.isfinite(d)]
    text = f"mean {_signed(statistics.fmean(finite))}, " if finite else ""
    return text + "seeds " + ", ".join(_signed(d) for d in values)


def _signed(x: float) -> str:
    """One seed's difference, or which of the two diverged."""
    if math.isnan(x):
        return "both diverged"
    if math.isinf(x):
        return "only the first diverged" if x > 0 else "only the second diverged"
    return f"{x:+.3f}"
