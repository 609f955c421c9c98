"""``adafactor precision``: the decision rule of docs/precision.md on constructed results, and
the experiment's structure on a tiny scale and synthetic text (seconds, no absolute times)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from adafactor.cli import main
from adafactor.experiments import precision
from adafactor.experiments.precision import (
    BF16_VARIANTS,
    FLOAT32,
    REGIMES,
    SCALES,
    VARIANTS,
    PrecisionResults,
    Run,
    format_report,
    judge,
    recommend,
    run_precision,
    write_precision,
)


def _finals(base, **gaps):
    """Final dev losses: float32's per seed, and each named variant's at a constant gap."""
    out = {FLOAT32: dict(enumerate(base))}
    for name, gap in gaps.items():
        out[name.replace("_", " ")] = {s: x + gap for s, x in enumerate(base)}
    return out


def test_a_gap_is_judged_against_float32s_seed_spread():
    finals = _finals(
        [2.00, 2.02, 2.01], bf16_nearest=0.05, bf16_stochastic=0.01, bf16_compensated=-0.03
    )
    js = judge(finals)
    assert set(js) == set(BF16_VARIANTS)
    assert js["bf16 nearest"].spread == pytest.approx(0.02)
    assert js["bf16 nearest"].gaps == pytest.approx((0.05, 0.05, 0.05))
    assert js["bf16 nearest"].verdict == "loses measurably"
    assert js["bf16 stochastic"].verdict == "within the seed spread"
    assert js["bf16 compensated"].verdict == "gains measurably"
    assert js["bf16 nearest"].ratio == pytest.approx(2.5)


def test_gaps_are_paired_by_seed_not_by_position():
    # The variant ran seeds 2 and 0 only: each is compared with float32 under its own seed.
    finals = {FLOAT32: {0: 1.0, 1: 5.0, 2: 3.0}, "bf16 nearest": {2: 3.5, 0: 1.5}}
    j = judge(finals)["bf16 nearest"]
    assert j.gaps == pytest.approx((0.5, 0.5))
    assert j.spread == pytest.approx(4.0) and j.verdict == "within the seed spread"


def test_a_gap_equal_to_the_spread_is_within_it_and_one_seed_is_refused():
    finals = {FLOAT32: {0: 1.0, 1: 1.5}, "bf16 nearest": {0: 1.5, 1: 2.0}}
    assert judge(finals)["bf16 nearest"].verdict == "within the seed spread"
    with pytest.raises(ValueError, match="at least 2 seeds"):
        judge({FLOAT32: {0: 1.0}, "bf16 nearest": {0: 1.0}})


def _verdicts(**gaps_by_regime):
    """Judgements by regime from (nearest, stochastic, compensated) gaps; spread 0.02."""
    out = {}
    for regime, (n, s, c) in gaps_by_regime.items():
        out[regime] = judge(
            _finals([2.0, 2.02, 2.01], bf16_nearest=n, bf16_stochastic=s, bf16_compensated=c)
        )
    return out


@pytest.mark.parametrize(
    "gaps, rounding, targets",
    [
        # nearest within the spread everywhere: no change.
        ({"a": (0.01, 0.0, 0.0), "b": (0.02, 0.0, 0.0)}, "nearest", (True, True)),
        # nearest loses in one regime; stochastic in none: it keeps no state.
        ({"a": (0.01, 0.0, 0.0), "b": (0.1, 0.01, 0.0)}, "stochastic", (True, True)),
        # stochastic loses too, compensated does not.
        ({"a": (0.1, 0.05, 0.0), "b": (0.1, 0.0, 0.0)}, "compensated", (True, False)),
        # both guards lose: the smaller worst gap/spread is named, both targets missed.
        ({"a": (0.2, 0.1, 0.03), "b": (0.2, 0.0, 0.05)}, "compensated", (False, False)),
        ({"a": (0.2, 0.03, 0.1), "b": (0.2, 0.05, 0.0)}, "stochastic", (False, False)),
    ],
)
def test_the_default_is_chosen_by_the_rule(gaps, rounding, targets):
    rec = recommend(_verdicts(**gaps))
    assert rec.rounding == rounding
    assert tuple(rec.targets_met.values()) == targets


def _run(regime, variant, seed, final, start=2.5):
    return Run(regime, variant, seed, [0, 10], [start, final], [3.0], 100, 1.0)


def _results():
    runs = {}
    for regime, gaps in (("relative", (0.0, 0.0, 0.0)), ("finetune", (0.1, 0.0, 0.001))):
        by_variant = {FLOAT32: {s: _run(regime, FLOAT32, s, 2.0 + s / 100) for s in range(3)}}
        for name, gap in zip(BF16_VARIANTS, gaps):
            by_variant[name] = {
                s: _run(regime, name, s, 2.0 + s / 100 + gap, start=2.501) for s in range(3)
            }
        runs[regime] = by_variant
    costs = [
        precision.Cost(v, 1000, 4000 + 2000 * (v == "bf16 compensated"), 2.0, 1.0) for v in VARIANTS
    ]
    return PrecisionResults(SCALES["tiny"], [0, 1, 2], runs, costs, 12.0)


def test_the_report_tells_the_verdicts_the_default_and_the_costs(tmp_path):
    text = format_report(_results())
    assert "| bf16 nearest | +0.1000, +0.1000, +0.1000 | +0.1000 | +5.00 | loses measurably" in text
    assert "| bf16 compensated | +0.0010, +0.0010, +0.0010 | +0.0010 | +0.05 | within" in text
    assert "+0.0010 |" in text  # the gap at step 0: bfloat16 activations' share
    assert "**Default for 16-bit parameters: `stochastic`**" in text
    assert "| bf16 compensated | 6,000 | +2.00 |" in text
    files = write_precision(_results(), tmp_path / "out")
    assert [f.name for f in files] == ["precision.md", "precision.json", "precision.png"]
    assert all(f.stat().st_size > 0 for f in files)


@pytest.fixture
def synthetic_text(monkeypatch):
    """A small random text instead of the corpus (loading it takes seconds), on one thread as
    the experiment's runs are (tiny operations on several threads of a busy machine crawl)."""
    gen = torch.Generator().manual_seed(0)
    texts = {
        key: torch.randint(1, 12, (4000,), generator=gen, dtype=torch.uint8)
        for key in ("en train", "en dev", "ny train", "ny dev")
    }
    texts["vocab"] = torch.tensor(12)
    monkeypatch.setattr(precision, "_TEXTS", texts)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_variants_start_identical_and_compensated_keeps_two_bytes_more(synthetic_text):
    lines = []
    results = run_precision(["finetune"], (0, 1), SCALES["tiny"], jobs=1, print_fn=lines.append)
    assert not results.failures and len(lines) == 1 + 8
    runs = results.runs["finetune"]
    steps = SCALES["tiny"].finetune_steps
    for name in VARIANTS:
        assert sorted(runs[name]) == [0, 1]
        assert runs[name][0].eval_steps == [0, 2, steps]
        assert len(runs[name][0].train_losses) == steps
    # The same bfloat16 weights and dev set: the same loss before the first step, in every
    # seed too (fine-tuning starts from one checkpoint).
    first = {runs[v][s].dev_losses[0] for v in BF16_VARIANTS for s in (0, 1)}
    assert len(first) == 1
    # Different seeds, different batches.
    assert runs[FLOAT32][0].dev_losses[-1] != runs[FLOAT32][1].dev_losses[-1]
    costs = {c.variant: c for c in results.costs}
    extra = costs["bf16 compensated"].state_bytes - costs["bf16 nearest"].state_bytes
    assert extra == 2 * costs["bf16 compensated"].parameters
    assert costs[FLOAT32].state_bytes == costs["bf16 nearest"].state_bytes


def test_a_run_is_deterministic_under_its_seed_stochastic_rounding_too(synthetic_text):
    scale = dataclasses.replace(SCALES["tiny"], steps=6)
    regime, variant = REGIMES["cosine"], VARIANTS["bf16 stochastic"]
    first = precision.train(regime, variant, 3, scale)
    torch.manual_seed(123)  # whatever the global generator held before
    again = precision.train(regime, variant, 3, scale)
    assert first.dev_losses == again.dev_losses and first.train_losses == again.train_losses
    other = precision.train(regime, variant, 4, scale)
    assert other.train_losses != first.train_losses


@pytest.mark.parametrize(
    "argv, message",
    [
        (["precision", "--seeds", "1"], "--seeds: must be at least 2, got 1"),
        (["precision", "--scale", "huge"], "--scale: invalid choice: 'huge'"),
        (["precision", "--jobs", "0"], "--jobs: must be at least 1, got 0"),
    ],
)
def test_precision_usage_mistakes_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_unknown_regime_exits_2_before_running(tmp_path, capsys):
    assert main(["precision", "--regime", "warmup", "--out", str(tmp_path)]) == 2
    assert "unknown regime(s) warmup; known: relative, cosine, finetune" in capsys.readouterr().err


def test_float32_starts_from_the_bfloat16_rounded_weights(synthetic_text, monkeypatch):
    seen = []

    class Spy(precision.Adafactor):
        def __init__(self, params, **options):
            params = list(params)
            seen.append([p.detach().clone() for p in params])
            super().__init__(params, **options)

    monkeypatch.setattr(precision, "Adafactor", Spy)
    for name in (FLOAT32, "bf16 nearest"):
        precision.train(REGIMES["relative"], VARIANTS[name], 0, SCALES["tiny"])
    float32, bf16 = seen
    assert all(p.dtype == torch.float32 for p in float32)
    assert all(torch.equal(p, q.float()) for p, q in zip(float32, bf16))


def test_the_drift_probe_sees_nearest_round_small_steps_away():
    # 300 steps of 1e-5 on a gain of 1.0 (half a bfloat16 step there: 2⁻⁸ ≈ 3.9e-3).
    threads = torch.get_num_threads()
    (drift,) = precision.drift_probe(lrs=(1e-5,), steps=300, value=1.0, size=64)
    assert torch.get_num_threads() == threads
    assert drift.moved["bf16 nearest"] == 0.0
    assert drift.moved[FLOAT32] == pytest.approx(1.0, abs=0.01)
    assert drift.carried[FLOAT32] == drift.moved[FLOAT32]
    assert drift.carried["bf16 compensated"] > 0.5
    text = "\n".join(precision._drift_lines([drift]))
    assert "| 1 | 1e-05 | 1.0e-05 | 1.00" in text and "| 0.000 |" in text
