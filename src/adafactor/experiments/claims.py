"""The paper's claims, and how a set of finished runs decides each one.

The rules are written down, dated, in docs/reproduction.md ("Verdict rules"), and were fixed
before the full run. In short: each claim has parts, each part a comparison that the seeds
decide (``seeds``: paired by seed, decided only when every seed agrees) or leave undecided.
Two dev losses are *comparable* within ``LOSS_TOLERANCE`` nats; a run is *unstable* when in
some seed it diverged or its smoothed training loss rose ``SPIKE_NATS`` above its best; its
RMS(U_t) is *≫ 1* when its peak is at least ``RMS_FACTOR`` times that of every warm-up control
of its regime, in every seed. A claim is *reproduced* when all its parts hold, *not
reproduced* when none does, *partly* otherwise; *inconclusive* when an undecided part could
still change that, or when what the claim is about did not happen (a fix for an instability,
or a loss, that the baseline does not show). BLEU is reported but decides nothing.

A claim about absolute-step runs is judged in each regime (rate and scale) where all its runs
have finished: the run names in a claim are those of the paper's rate, the regime's suffix
(``-stress``, ``-long``, ...) is appended for the others. A claim about relative-step runs
has one rate.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ..presets import ADAM
from .configs import REGIMES, RELATIVE, RUNS, Regime
from .seeds import (
    Tri,
    Trials,
    all_of,
    describe_difference,
    dev_loss,
    format_mean,
    not_worse,
    peak_rms_ratio_at_least,
    similar,
    unstable_count,
    worse,
)

LOSS_TOLERANCE = 0.1
SPIKE_NATS = 0.5
RMS_FACTOR = 1.5
"""RMS(U_t) is "≫ 1" when its peak is at least this many times every warm-up control's."""
SMALL_STATE = 0.05
"""Adafactor's "tiny fraction" of Adam's optimizer state: at most this share."""
BEST_ADAM = "best Adam"
"""The entry of ``Runs`` holding the Adam configuration with the lowest mean dev loss."""

Status = Literal["reproduced", "partly", "not reproduced", "inconclusive"]


@dataclass(frozen=True)
class Verdict:
    """A claim's status in one regime, and the numbers behind it."""

    status: Status
    evidence: str


Runs = Mapping[str, Trials]
Judge = Callable[[Runs], Verdict]


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, the runs that test it and the rule that decides it."""

    key: str
    text: str
    runs: tuple[str, ...]
    subjects: tuple[str, ...]
    """The runs whose table rows show this claim's verdict."""
    judge: Judge
    absolute: bool = True
    """Whether the runs are absolute-step ones, judged in each regime."""


def status_of(parts: Sequence[Tri]) -> Status:
    """The status that every way of deciding the undecided parts would give, else
    inconclusive: all parts hold, reproduced; none, not reproduced; some, partly."""
    if any(p is True for p in parts) and any(p is False for p in parts):
        return "partly"
    if parts and all(p is True for p in parts):
        return "reproduced"
    if parts and all(p is False for p in parts):
        return "not reproduced"
    return "inconclusive"


def _mark(part: Tri) -> str:
    """How a part reads in the evidence."""
    return {True: "yes", False: "no", None: "undecided"}[part]


def _name(trials: Trials) -> str:
    """The run's name, with its regime's suffix."""
    return trials[0].name


def _describe(trials: Trials) -> str:
    """The run's dev loss as mean ± sd of its finished seeds, and its divergences."""
    text = f"{_name(trials)} {format_mean([r.dev_loss for r in trials], 3)}"
    diverged = [r for r in trials if r.diverged]
    if diverged:
        steps = ", ".join(str(r.diverged_at) for r in diverged)
        text += f" (diverged in {len(diverged)}/{len(trials)} seeds, at step {steps})"
    return text


def stable(trials: Trials) -> bool:
    """No seed of the run diverged or spiked."""
    return unstable_count(trials, SPIKE_NATS) == 0


def _stability(trials: Trials) -> str:
    """How many seeds were unstable, and the largest loss rise."""
    rise = max(r.largest_loss_rise for r in trials)
    return (
        f"{_name(trials)} unstable in {unstable_count(trials, SPIKE_NATS)}/{len(trials)} "
        f"seeds (largest loss rise {rise:.2f} nats)"
    )


def _versus(a: Trials, b: Trials, relation: str, part: Tri) -> str:
    """Two runs' dev losses, their seed-by-seed difference and the part it decides."""
    return (
        f"{_describe(a)} vs {_describe(b)}: difference {describe_difference(a, b)}; "
        f"{relation}: {_mark(part)}"
    )


def _factored_like_full(runs: Runs) -> Verdict:
    """C1: factored Adam ≈ Adam, with and without warm-up."""
    pairs = [("adam-factored-warmup", "adam-warmup"), ("adam-factored-nowarmup", "adam-nowarmup")]
    parts = [similar(runs[a], runs[b], LOSS_TOLERANCE) for a, b in pairs]
    evidence = [_versus(runs[a], runs[b], "comparable", p) for (a, b), p in zip(pairs, parts)]
    return Verdict(status_of(parts), "dev loss " + "; ".join(evidence))


def _no_momentum_with_warmup(runs: Runs) -> Verdict:
    """C2: β1 = 0 with warm-up is stable and as good as Adam with warm-up."""
    b0, adam = runs["b0-warmup"], runs["adam-warmup"]
    parts = [stable(b0), not_worse(b0, adam, LOSS_TOLERANCE)]
    evidence = f"{_stability(b0)}; dev loss {_versus(b0, adam, 'as good', parts[1])}"
    return Verdict(status_of(parts), evidence)


def _peaks(trials: Trials) -> str:
    """The run's peak RMS(U_t), mean ± sd."""
    return f"{_name(trials)} {format_mean([r.peak_update_rms for r in trials], 2)}"


def _no_warmup_unstable(runs: Runs) -> Verdict:
    """C3: RMS(U_t) far above the warm-up controls', and unstable."""
    run, controls = runs["b0-nowarmup"], (runs["b0-warmup"], runs["adam-warmup"])
    high = all_of(peak_rms_ratio_at_least(run, c, RMS_FACTOR) for c in controls)
    parts = [high, not stable(run)]
    evidence = (
        f"peak RMS(U_t) {_peaks(run)} vs warm-up controls "
        + ", ".join(_peaks(c) for c in controls)
        + f"; ≥ {RMS_FACTOR}× every control in every seed: {_mark(high)}; {_stability(run)}"
    )
    return Verdict(status_of(parts), evidence)


def problem(baseline: Trials, warmup: Trials) -> Tri:
    """Whether β1 = 0 without warm-up shows something to fix: instability, or a dev loss worse
    than with warm-up."""
    return True if not stable(baseline) else worse(baseline, warmup, LOSS_TOLERANCE)


def _fixes(fixes: Iterable[str]) -> Judge:
    """The rule of C4 and C5: if the baseline shows a problem, each of ``fixes`` should be
    stable and as good as with warm-up; if it shows none (or the seeds cannot tell), the
    claim is inconclusive."""

    def judge(runs: Runs) -> Verdict:
        baseline, warmup = runs["b0-nowarmup"], runs["b0-warmup"]
        found = problem(baseline, warmup)
        evidence = (
            f"without the fix: {_stability(baseline)}; dev loss "
            f"{_versus(baseline, warmup, 'worse', worse(baseline, warmup, LOSS_TOLERANCE))}"
        )
        if found is not True:
            reason = "no instability or loss to fix" if found is False else "seeds disagree"
            return Verdict("inconclusive", f"{evidence} ({reason})")
        parts: list[Tri] = []
        for name in fixes:
            fix = runs[name]
            good = not_worse(fix, warmup, LOSS_TOLERANCE)
            parts += [stable(fix), good]
            evidence += f"; {_stability(fix)}; {_versus(fix, warmup, 'as good', good)}"
        return Verdict(status_of(parts), evidence)

    return judge


def _fast_decay(runs: Runs) -> Verdict:
    """C6: β2 = 0.9 is stable and worse than β2 = 0.999 with warm-up."""
    run, warmup = runs["b0-nowarmup-fast"], runs["b0-warmup"]
    parts = [stable(run), worse(run, warmup, LOSS_TOLERANCE)]
    evidence = f"{_stability(run)}; dev loss {_versus(run, warmup, 'worse', parts[1])}"
    return Verdict(status_of(parts), evidence)


def _like_adam(run_name: str, small_state: bool) -> Judge:
    """A relative-step Adafactor run should do as well as Adam with warm-up at the paper's
    rate and as the best Adam of the run set (and, with ``small_state``, keep at most
    ``SMALL_STATE`` of Adam's optimizer state)."""

    def judge(runs: Runs) -> Verdict:
        run, adam, best = runs[run_name], runs["adam-warmup"], runs[BEST_ADAM]
        parts = [not_worse(run, adam, LOSS_TOLERANCE), not_worse(run, best, LOSS_TOLERANCE)]
        evidence = (
            f"dev loss {_versus(run, adam, 'as good', parts[0])}; against the best Adam: "
            f"{_versus(run, best, 'as good', parts[1])}"
        )
        if small_state:
            share = run[0].state_bytes / adam[0].state_bytes
            parts.append(share <= SMALL_STATE)
            evidence += (
                f"; state {run[0].state_bytes:,} vs {adam[0].state_bytes:,} bytes ({share:.2%})"
            )
        return Verdict(status_of(parts), evidence)

    return judge


def _relative_step_robust(runs: Runs) -> Verdict:
    """C9: the unit-scale embedding leaves the relative step as good, hurts the absolute."""
    relative, relative_unit = runs["adafactor"], runs["adafactor-unit"]
    absolute, absolute_unit = runs["adafactor-absolute"], runs["adafactor-absolute-unit"]
    parts = [
        similar(relative_unit, relative, LOSS_TOLERANCE),
        worse(absolute_unit, absolute, LOSS_TOLERANCE),
    ]
    evidence = (
        f"dev loss, relative: {_versus(relative_unit, relative, 'comparable', parts[0])}; "
        f"absolute: {_versus(absolute_unit, absolute, 'worse', parts[1])}"
    )
    return Verdict(status_of(parts), evidence)


DECAYS = ("b0-nowarmup-decay0.8", "b0-nowarmup-decay0.5", "b0-nowarmup-decay1.0")

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "C1",
        "Adam with factored second moments ≈ Adam (§4)",
        ("adam-warmup", "adam-factored-warmup", "adam-nowarmup", "adam-factored-nowarmup"),
        ("adam-factored-warmup", "adam-factored-nowarmup"),
        _factored_like_full,
    ),
    Claim(
        "C2",
        "β1 = 0 with warm-up ≈ Adam (§5)",
        ("b0-warmup", "adam-warmup"),
        ("b0-warmup",),
        _no_momentum_with_warmup,
    ),
    Claim(
        "C3",
        "β1 = 0, β2 = 0.999 without warm-up: RMS(U_t) ≫ 1 and unstable (§5, Figure 1)",
        ("b0-nowarmup", "b0-warmup", "adam-warmup"),
        ("b0-nowarmup",),
        _no_warmup_unstable,
    ),
    Claim(
        "C4",
        "update clipping d = 1 fixes it (§6)",
        ("b0-nowarmup-clip", "b0-nowarmup", "b0-warmup"),
        ("b0-nowarmup-clip",),
        _fixes(["b0-nowarmup-clip"]),
    ),
    Claim(
        "C5",
        "β̂2_t = 1 − t^(−c) fixes it, c = 0.8 (and 0.5, 1.0) (§7.2)",
        (*DECAYS, "b0-nowarmup", "b0-warmup"),
        DECAYS,
        _fixes(DECAYS),
    ),
    Claim(
        "C6",
        "fast decay β2 = 0.9 is stable but worse (§7.1)",
        ("b0-nowarmup-fast", "b0-warmup"),
        ("b0-nowarmup-fast",),
        _fast_decay,
    ),
    Claim(
        "C7",
        "Adafactor ≈ Adam with warm-up, at a tiny fraction of its optimizer state (§8)",
        ("adafactor", "adam-warmup"),
        ("adafactor",),
        _like_adam("adafactor", True),
        absolute=False,
    ),
    Claim(
        "C8",
        "unfactored Adafactor ≈ Adam with warm-up (§8)",
        ("adafactor-unfactored", "adam-warmup"),
        ("adafactor-unfactored",),
        _like_adam("adafactor-unfactored", False),
        absolute=False,
    ),
    Claim(
        "C9",
        "relative step size is robust to the embedding scale, absolute is not (Table 3)",
        ("adafactor", "adafactor-unit", "adafactor-absolute", "adafactor-absolute-unit"),
        ("adafactor-unit", "adafactor-absolute-unit"),
        _relative_step_robust,
    ),
)


@dataclass(frozen=True)
class Judgement:
    """A claim's verdict in one regime."""

    claim: Claim
    regime: Regime
    verdict: Verdict
    subjects: tuple[str, ...]
    """The run names (with their regime's suffix) whose rows carry this verdict."""


RELATIVE_RUNS = frozenset(name for name, c in RUNS.items() if c.regime == RELATIVE)


def _in_regime(name: str, regime: Regime) -> str:
    """The name of run ``name`` in ``regime``: relative-step runs have a single rate, which
    claims about them compare with absolute-step runs at the paper's rate."""
    return name if name in RELATIVE_RUNS or regime == RELATIVE else name + regime.suffix


def best_adam(results: Mapping[str, Trials]) -> str:
    """The Adam configuration (Algorithm 1, any schedule and rate, at the base scale) with the
    lowest mean dev loss of its seeds, a diverged seed counting as infinite."""
    names = [
        name
        for name, c in RUNS.items()
        if name in results
        and c.options == ADAM
        and c.embedding == "scaled"
        and c.regime.steps_factor == c.regime.vocab_factor == 1
    ]
    return min(names, key=lambda n: statistics.fmean(dev_loss(r) for r in results[n]))


def _regimes(claim: Claim) -> Iterable[Regime]:
    """Where a claim can be judged."""
    return REGIMES.values() if claim.absolute else (RELATIVE,)


def judge_claims(results: Mapping[str, Trials]) -> list[Judgement]:
    """Every claim in every regime for which all of its runs have finished."""
    judgements = []
    for claim in CLAIMS:
        for regime in _regimes(claim):
            names = {name: _in_regime(name, regime) for name in claim.runs}
            if all(n in results and results[n] for n in names.values()):
                runs = {name: results[n] for name, n in names.items()}
                if not claim.absolute:
                    runs[BEST_ADAM] = results[best_adam(results)]
                # The judges read runs by their paper-rate names and describe them by theirs.
                subjects = tuple(names.get(s, s) for s in claim.subjects)
                judgements.append(Judgement(claim, regime, claim.judge(runs), subjects))
    return judgements


def unjudged(results: Mapping[str, Trials]) -> list[tuple[Claim, Regime, list[str]]]:
    """The claims, with their regime and missing runs, whose subject runs have finished but
    not all of their other runs."""
    out = []
    for claim in CLAIMS:
        for regime in _regimes(claim):
            missing = [_in_regime(n, regime) for n in claim.runs]
            missing = [n for n in missing if n not in results]
            subjects = [_in_regime(n, regime) for n in claim.subjects]
            # A relative-step subject alone does not make a claim due in an absolute regime.
            own = [n for n in subjects if n not in RELATIVE_RUNS] or subjects
            if missing and any(n in results for n in own):
                out.append((claim, regime, missing))
    return out
