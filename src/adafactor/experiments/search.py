"""The search for a regime where β1 = 0, β2 = 0.999 without warm-up goes wrong.

The plan is written down in docs/reproduction.md, before the search was run. Each regime of
``configs.SEARCH_REGIMES`` (other rates, longer runs, a larger vocabulary) is screened with
``b0-warmup`` and ``b0-nowarmup`` under the same seeds (``adafactor reproduce --search``). A
regime *shows the problem* when the warm-up run is stable and the run without warm-up is
unstable, or worse than with warm-up by more than the tolerance, in every seed (the rules of
``claims``). Of the regimes that show it, the selected one is that with the largest mean
difference of dev loss (an unstable run counting as infinitely worse), the first in the
plan's order on a tie; claims C3–C6 are then decided there too (``--regime NAME``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from .claims import SPIKE_NATS, problem, stable
from .configs import SCREEN_ROWS, SEARCH_REGIMES, Regime, Scale
from .seeds import Tri, Trials, all_of, differences, format_mean, unstable_count

SHOWS = {True: "yes", False: "no", None: "undecided"}


@dataclass(frozen=True)
class Screen:
    """One regime's screen: the runs with and without warm-up, and what they show."""

    regime: Regime
    warmup: Trials
    nowarmup: Trials

    @property
    def shows_problem(self) -> Tri:
        """Warm-up stable, and no warm-up unstable or worse by more than the tolerance."""
        return all_of([stable(self.warmup), problem(self.nowarmup, self.warmup)])

    @property
    def score(self) -> float:
        """How much worse no warm-up is: the mean difference, infinite when unstable."""
        if not stable(self.nowarmup):
            return math.inf
        finite = [d for d in differences(self.nowarmup, self.warmup).values() if math.isfinite(d)]
        return statistics.fmean(finite) if finite else -math.inf


def screens(results: Mapping[str, Trials]) -> list[Screen]:
    """The screen of every regime of the search whose two runs have finished."""
    out = []
    for regime in SEARCH_REGIMES:
        warmup, nowarmup = (results.get(name + regime.suffix) for name in SCREEN_ROWS)
        if warmup and nowarmup:
            out.append(Screen(regime, warmup, nowarmup))
    return out


def selected_regime(results: Mapping[str, Trials]) -> Regime | None:
    """The regime the plan selects, or ``None`` when no screened regime shows the problem."""
    showing = [s for s in screens(results) if s.shows_problem is True]
    return max(showing, key=lambda s: s.score).regime if showing else None


def _differences(screen: Screen) -> str:
    """No warm-up minus warm-up, seed by seed."""
    values = differences(screen.nowarmup, screen.warmup).values()
    return ", ".join(f"{d:+.3f}" if math.isfinite(d) else "diverged" for d in values)


SEARCH_HEADER = (
    "regime",
    "steps",
    "vocabulary",
    "peak lr",
    "dev loss, warm-up",
    "dev loss, no warm-up",
    "no warm-up − warm-up, per seed",
    "unstable seeds (warm-up / none)",
    "peak RMS(U_t) (warm-up / none)",
    "shows the problem",
)


def _row(screen: Screen, scale: Scale) -> list[str]:
    """One regime's row of ``SEARCH_HEADER``."""
    run_scale = screen.regime.at_scale(scale)
    warmup, nowarmup = screen.warmup, screen.nowarmup
    return [
        screen.regime.name,
        str(run_scale.steps),
        f"{run_scale.vocab_size:,}",
        f"{screen.regime.lr:g}",
        format_mean([r.dev_loss for r in warmup], 3),
        format_mean([r.dev_loss for r in nowarmup], 3),
        _differences(screen),
        " / ".join(f"{unstable_count(t, SPIKE_NATS)}/{len(t)}" for t in (warmup, nowarmup)),
        " / ".join(format_mean([r.peak_update_rms for r in t], 2) for t in (warmup, nowarmup)),
        SHOWS[screen.shows_problem],
    ]


def search_rows(results: Mapping[str, Trials], scale: Scale) -> list[list[str]]:
    """One row of ``SEARCH_HEADER`` per screened regime."""
    return [_row(s, scale) for s in screens(results)]


def selection(results: Mapping[str, Trials]) -> str:
    """The plan's outcome in a sentence."""
    chosen = selected_regime(results)
    if chosen is None:
        return "No screened regime shows the problem."
    return f"Selected by the plan: `{chosen.name}` ({chosen.title})."
