"""The results as files: ``results.csv``, ``results.json`` and ``results.md``.

``results.md`` follows the paper's layout: Table 2's rows (Sections 4–8) grouped by section,
with the paper's columns (β1, β̂2_t, clipping d, step size, warm-up, factored), then what this
run measured, and a verdict column naming the claims each row tests. Table 3 is the same, then
pivoted (step size × embedding scale). A list of the claims with their evidence follows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .claims import LOSS_TOLERANCE, Judgement, judge_claims
from .configs import PAPER_LR, RUNS, SECTION_STEP_SIZE, SECTIONS, STRESS_LR, RunConfig, Scale
from .diagnostics import SMOOTHING
from .runner import RunResult

VERDICT_MARKS = {"reproduced": "✓", "partly": "~", "not reproduced": "✗", "inconclusive": "?"}


def _beta2(options: Mapping[str, object]) -> str:
    if options.get("beta2") is not None:
        return f"β2 = {options['beta2']}"
    return f"1 − t^−{options.get('decay_rate', 0.8)}"


def _step_size(config: RunConfig) -> str:
    if config.relative:
        return "relative"
    return f"absolute {config.lr:g}" + (" (stress)" if config.rate == "stress" else "")


CONFIG_COLUMNS: dict[str, Callable[[RunConfig], str]] = {
    "β1": lambda c: str(c.options.get("beta1") or 0),
    "β̂2_t": lambda c: _beta2(c.options),
    "clip d": lambda c: str(c.options.get("clip_threshold", 1.0) or "—"),
    "step size": _step_size,
    "warm-up": lambda c: "yes" if c.schedule == "warmup" else "no",
    "factored": lambda c: "yes" if c.options.get("factored", True) else "no",
    "embedding": lambda c: "N(0, d^−½)·√d" if c.embedding == "scaled" else "N(0, 1)",
}


def _number(x: float | None, digits: int) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


RESULT_COLUMNS: dict[str, Callable[[RunResult], str]] = {
    "dev loss": lambda r: _number(r.dev_loss, 3),
    "BLEU": lambda r: _number(r.bleu, 2),
    "diverged": lambda r: f"yes (step {r.diverged_at})" if r.diverged else "no",
    "peak RMS(U_t)": lambda r: _number(r.peak_update_rms, 2),
    "loss rise": lambda r: f"{r.largest_loss_rise:.2f}",
    "state bytes": lambda r: f"{r.state_bytes:,}",
    "time": lambda r: f"{r.seconds:.0f} s",
}


def _row_verdicts(config: RunConfig, judgements: Sequence[Judgement]) -> str:
    """The verdicts of the claims this row tests; a relative-step row, which the claims at
    both absolute rates share, names the rate."""

    def rate(j: Judgement) -> str:
        return f" ({j.rate} rate)" if config.rate == "relative" and j.claim.absolute else ""

    return "; ".join(
        f"{j.claim.key}{rate(j)} {VERDICT_MARKS[j.verdict.status]} {j.verdict.status}"
        for j in judgements
        if config.name in j.subjects
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _section_table(
    section: str, results: Mapping[str, RunResult], judgements: Sequence[Judgement]
) -> list[str]:
    configs = [c for c in RUNS.values() if c.section == section and c.name in results]
    columns = [k for k in CONFIG_COLUMNS if k != "embedding" or section == SECTION_STEP_SIZE]
    rows = [
        [f"`{c.name}`", *(CONFIG_COLUMNS[k](c) for k in columns)]
        + [f(results[c.name]) for f in RESULT_COLUMNS.values()]
        + [_row_verdicts(c, judgements)]
        for c in configs
    ]
    return _table(["run", *columns, *RESULT_COLUMNS, "verdict"], rows)


def _quality(result: RunResult) -> str:
    if result.diverged:
        return f"diverged (step {result.diverged_at})"
    return f"{_number(result.dev_loss, 3)} / {_number(result.bleu, 2)}"


def _table3_pivot(results: Mapping[str, RunResult]) -> list[str]:
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


def results_markdown(
    results: Mapping[str, RunResult], scale: Scale, seed: int, missing: Sequence[str] = ()
) -> str:
    """The results table in the paper's layout, and the claims with their verdicts."""
    judgements = judge_claims(results)
    lines = [
        "# Adafactor reproduction: results",
        "",
        f"English → Chichewa, {scale.steps} steps of {scale.batch_size} verse pairs, "
        f"subword vocabulary {scale.vocab_size}, seed {seed}; dev loss in nats per target "
        f"token on {scale.dev_pairs} dev pairs, greedy BLEU on the same. "
        f"Absolute-step runs at the paper's peak rate {PAPER_LR:g} and at the stress rate "
        f'{STRESS_LR:g} (suffix `-stress`). "loss rise": largest rise of the smoothed '
        f'training loss above its best so far (nats); "peak RMS(U_t)": highest '
        f"{SMOOTHING}-step mean of the RMS of the unscaled update, largest of the watched "
        "tensors.",
    ]
    for section in SECTIONS:
        if any(c.section == section and c.name in results for c in RUNS.values()):
            lines += ["", f"## {section}", "", *_section_table(section, results, judgements)]
            if section == SECTION_STEP_SIZE:
                lines += _table3_pivot(results)
    lines += [
        "",
        "## Claims",
        "",
        f"Comparable: dev losses within {LOSS_TOLERANCE} nats. See `adafactor.experiments."
        "claims` for each rule.",
        "",
        *_table(
            ["claim", "rate", "verdict", "evidence"],
            [
                [
                    f"{j.claim.key}: {j.claim.text}",
                    j.rate,
                    f"{VERDICT_MARKS[j.verdict.status]} {j.verdict.status}",
                    j.verdict.evidence,
                ]
                for j in judgements
            ],
        ),
    ]
    if missing:
        lines += ["", "Not finished: " + ", ".join(f"`{name}`" for name in missing)]
    return "\n".join(lines) + "\n"


def write_report(
    results: Mapping[str, RunResult],
    scale: Scale,
    seed: int,
    directory: Path,
    missing: Sequence[str] = (),
) -> list[Path]:
    """Write ``results.md``, ``results.csv`` and ``results.json``; returns their paths."""
    summaries = [results[name].summary() for name in RUNS if name in results]
    paths = [directory / name for name in ("results.md", "results.csv", "results.json")]
    paths[0].write_text(results_markdown(results, scale, seed, missing))
    with open(paths[1], "w", newline="") as f:
        fields = [k for k in summaries[0] if k != "key"] if summaries else []
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summaries)
    paths[2].write_text(json.dumps(summaries, indent=1))
    return paths
