"""The results as files: ``results.csv``, ``results.json`` and ``results.md``.

``results.md`` follows the paper's layout: Table 2's rows (Sections 4–8) grouped by section,
with the paper's columns (β1, β̂2_t, clipping d, step size, warm-up, factored), then what the
runs measured (mean ± standard deviation over the seeds), and a verdict column naming the
claims each row tests. Table 3 is the same, then pivoted (step size × embedding scale). Then
the verdicts, claim by regime, with their evidence, and the screens of the search. The CSV
and JSON hold one row per run and seed.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .claims import LOSS_TOLERANCE, RMS_FACTOR, SPIKE_NATS, Judgement, judge_claims, unjudged
from .configs import (
    PAPER,
    PAPER_LR,
    RELATIVE,
    RUNS,
    SECTION_STEP_SIZE,
    SECTIONS,
    STRESS_LR,
    RunConfig,
    Scale,
)
from .diagnostics import SMOOTHING
from .search import SEARCH_HEADER, search_rows, selection
from .seeds import Trials, format_mean

VERDICT_MARKS = {"reproduced": "✓", "partly": "~", "not reproduced": "✗", "inconclusive": "?"}


def _beta2(options: Mapping[str, object]) -> str:
    """The second-moment decay as the paper writes it."""
    if options.get("beta2") is not None:
        return f"β2 = {options['beta2']}"
    return f"1 − t^−{options.get('decay_rate', 0.8)}"


def _step_size(config: RunConfig) -> str:
    """Relative, or the absolute peak rate and its regime."""
    if config.relative:
        return "relative"
    regime = config.regime
    return f"absolute {config.lr:g}" + ("" if regime == PAPER else f" ({regime.name})")


CONFIG_COLUMNS: dict[str, Callable[[RunConfig], str]] = {
    "β1": lambda c: str(c.options.get("beta1") or 0),
    "β̂2_t": lambda c: _beta2(c.options),
    "clip d": lambda c: str(c.options.get("clip_threshold", 1.0) or "—"),
    "step size": _step_size,
    "warm-up": lambda c: "yes" if c.schedule == "warmup" else "no",
    "factored": lambda c: "yes" if c.options.get("factored", True) else "no",
    "embedding": lambda c: "N(0, d^−½)·√d" if c.embedding == "scaled" else "N(0, 1)",
}


def _diverged(trials: Trials) -> str:
    """Whether (one seed) or in how many seeds the run diverged, and at which steps."""
    steps = [r.diverged_at for r in trials if r.diverged]
    if len(trials) == 1:
        return f"yes (step {steps[0]})" if steps else "no"
    at = f" (step {', '.join(map(str, steps))})" if steps else ""
    return f"{len(steps)}/{len(trials)}{at}"


RESULT_COLUMNS: dict[str, Callable[[Trials], str]] = {
    "seeds": lambda t: str(len(t)),
    "dev loss": lambda t: format_mean([r.dev_loss for r in t], 3),
    "BLEU": lambda t: format_mean([r.bleu for r in t], 2),
    "diverged": _diverged,
    "peak RMS(U_t)": lambda t: format_mean([r.peak_update_rms for r in t], 2),
    "loss rise": lambda t: format_mean([r.largest_loss_rise for r in t], 2),
    "state bytes": lambda t: f"{t[0].state_bytes:,}",
    "time": lambda t: f"{statistics.fmean(r.seconds for r in t):.0f} s",
}


def _regime_title(j: Judgement) -> str:
    """The column a judgement goes in."""
    return "relative step" if j.regime == RELATIVE else j.regime.title


def _row_verdicts(config: RunConfig, judgements: Sequence[Judgement]) -> str:
    """The verdicts of the claims this row tests; a relative-step row, which the claims of
    every absolute regime share, names the regime."""

    def regime(j: Judgement) -> str:
        return f" ({_regime_title(j)})" if config.regime == RELATIVE and j.claim.absolute else ""

    return "; ".join(
        f"{j.claim.key}{regime(j)} {VERDICT_MARKS[j.verdict.status]} {j.verdict.status}"
        for j in judgements
        if config.name in j.subjects
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _section_table(
    section: str, results: Mapping[str, Trials], judgements: Sequence[Judgement]
) -> list[str]:
    """One section's rows: the paper's columns, the measurements, the verdicts."""
    configs = [c for c in RUNS.values() if c.section == section and c.name in results]
    columns = [k for k in CONFIG_COLUMNS if k != "embedding" or section == SECTION_STEP_SIZE]
    rows = [
        [f"`{c.name}`", *(CONFIG_COLUMNS[k](c) for k in columns)]
        + [f(results[c.name]) for f in RESULT_COLUMNS.values()]
        + [_row_verdicts(c, judgements)]
        for c in configs
    ]
    return _table(["run", *columns, *RESULT_COLUMNS, "verdict"], rows)


def _quality(trials: Trials) -> str:
    """Dev loss / BLEU, or how often the run diverged."""
    if any(r.diverged for r in trials):
        return f"diverged in {sum(r.diverged for r in trials)}/{len(trials)} seeds"
    losses, bleus = [r.dev_loss for r in trials], [r.bleu for r in trials]
    return f"{format_mean(losses, 3)} / {format_mean(bleus, 2)}"


def _table3_pivot(results: Mapping[str, Trials]) -> list[str]:
    """Dev loss / BLEU by step size (rows) and embedding parameterisation (columns)."""
    rows = []
    for label, scaled, unit in (
        ("relative step", "adafactor", "adafactor-unit"),
        (f"absolute {PAPER_LR:g}", "adafactor-absolute", "adafactor-absolute-unit"),
        (
            f"absolute {STRESS_LR:g} (stress)",
            "adafactor-absolute-stress",
            "adafactor-absolute-unit-stress",
        ),
    ):
        if scaled in results and unit in results:
            rows.append([label, _quality(results[scaled]), _quality(results[unit])])
    if not rows:
        return []
    header = ["step size", "N(0, d^−½), ×√d: dev loss / BLEU", "N(0, 1), no multiplier"]
    return ["", "Table 3, pivoted:", "", *_table(header, rows)]


def _verdict_grid(judgements: Sequence[Judgement]) -> list[str]:
    """Claims (rows) by regime (columns)."""
    regimes = list(dict.fromkeys(_regime_title(j) for j in judgements))
    claims = list(dict.fromkeys(j.claim for j in judgements))
    cell = {(j.claim.key, _regime_title(j)): j.verdict.status for j in judgements}
    rows = [[f"{c.key} {c.text}", *(cell.get((c.key, r), "") for r in regimes)] for c in claims]
    return _table(["claim (paper)", *regimes], rows)


def _claims_section(results: Mapping[str, Trials], judgements: Sequence[Judgement]) -> list[str]:
    """The verdicts, and the claims that wait for runs."""
    lines = ["", "## Verdicts", ""]
    if not judgements:
        lines.append("No claim has all of its runs here.")
    else:
        lines += _verdict_tables(judgements)
    waiting = unjudged(results)
    if waiting:
        lines += ["", "Not judged, runs missing:"] + [
            f"* {claim.key} ({regime.title}): " + ", ".join(f"`{n}`" for n in missing)
            for claim, regime, missing in waiting
        ]
    return lines


def _verdict_tables(judgements: Sequence[Judgement]) -> list[str]:
    """The rules in a sentence, the claim × regime grid, and each verdict's evidence."""
    return [
        (
            f"Comparable: dev losses within {LOSS_TOLERANCE} nats in every seed (seed by "
            f"seed); unstable: diverged, or the smoothed loss rose {SPIKE_NATS} nats, in some "
            f"seed; RMS(U_t) ≫ 1: a peak at least {RMS_FACTOR}× every warm-up control's in "
            "every seed. See `adafactor.experiments.claims` for each rule."
        ),
        "",
        *_verdict_grid(judgements),
        "",
        *_table(
            ["claim", "regime", "verdict", "evidence"],
            [
                [
                    f"{j.claim.key}: {j.claim.text}",
                    _regime_title(j),
                    f"{VERDICT_MARKS[j.verdict.status]} {j.verdict.status}",
                    j.verdict.evidence,
                ]
                for j in judgements
            ],
        ),
    ]


def _header(results: Mapping[str, Trials], scale: Scale, seeds: Sequence[int]) -> list[str]:
    """What was run, how the figures are computed, and the code that made the runs."""
    code = next(iter(results.values()))[0].key["code"] if results else None
    made_by = f" Made by code with source sha256 `{code['source sha256'][:12]}`." if code else ""
    return [
        "# Adafactor reproduction: results",
        "",
        (
            f"English → Chichewa, {scale.steps} steps of {scale.batch_size} verse pairs, "
            f"subword vocabulary {scale.vocab_size} (other steps and vocabularies where a "
            f"regime says so), seeds {', '.join(map(str, seeds))}; figures are mean ± standard "
            f"deviation over the seeds. Dev loss in nats per target token on {scale.dev_pairs} "
            f"dev pairs, greedy BLEU on the same. Absolute-step runs at the paper's peak rate "
            f"{PAPER_LR:g} and at the stress rate {STRESS_LR:g} (suffix `-stress`) and, for "
            'the search, in other regimes (named after the suffix). "loss rise": largest rise '
            'of the smoothed training loss above its best so far (nats); "peak RMS(U_t)": '
            f"highest {SMOOTHING}-step mean of the RMS of the unscaled update, largest of the "
            f"watched tensors.{made_by}"
        ),
    ]


def results_markdown(
    results: Mapping[str, Trials],
    scale: Scale,
    seeds: Sequence[int],
    missing: Sequence[str] = (),
) -> str:
    """The results tables in the paper's layout, the verdicts and the search."""
    judgements = judge_claims(results)
    lines = _header(results, scale, seeds)
    for section in SECTIONS:
        if any(c.section == section and c.name in results for c in RUNS.values()):
            lines += ["", f"## {section}", "", *_section_table(section, results, judgements)]
            if section == SECTION_STEP_SIZE:
                lines += _table3_pivot(results)
    lines += _claims_section(results, judgements)
    rows = search_rows(results, scale)
    if rows:
        lines += ["", "## The search for the instability", "", *_table(SEARCH_HEADER, rows)]
        lines += ["", selection(results)]
    if missing:
        lines += ["", "Not finished: " + ", ".join(f"`{name}`" for name in missing)]
    return "\n".join(lines) + "\n"


def write_report(
    results: Mapping[str, Trials],
    scale: Scale,
    seeds: Sequence[int],
    directory: Path,
    missing: Sequence[str] = (),
) -> list[Path]:
    """Write ``results.md``, ``results.csv`` and ``results.json``; returns their paths."""
    summaries = [run.summary() for name in RUNS if name in results for run in results[name]]
    paths = [directory / name for name in ("results.md", "results.csv", "results.json")]
    paths[0].write_text(results_markdown(results, scale, seeds, missing))
    with open(paths[1], "w", newline="") as f:
        fields = [k for k in summaries[0] if k != "key"] if summaries else []
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summaries)
    paths[2].write_text(json.dumps(summaries, indent=1))
    return paths
