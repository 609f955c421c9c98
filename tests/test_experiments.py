"""``adafactor reproduce``: every configuration trains at a tiny scale, divergence is a result,
runs are deterministic, resumable and keyed by the code that made them, the report and plots
are written; and every verdict rule gives each of its outcomes on constructed results."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from adafactor import Adafactor
from adafactor.cli import main
from adafactor.experiments import provenance
from adafactor.experiments.claims import (
    CLAIMS,
    best_adam,
    judge_claims,
    status_of,
    unjudged,
)
from adafactor.experiments.configs import (
    ADAM,
    FULL,
    PAPER,
    QUICK,
    SCALES,
    SEARCH,
    SECTION_NO_MOMENTUM,
    RunConfig,
    lr_factor,
    regime_runs,
)
from adafactor.experiments.dataset import load_data, prepare_data
from adafactor.experiments.diagnostics import DivergenceMonitor, unscaled_update_rms
from adafactor.experiments.evaluation import greedy_bleu
from adafactor.experiments.model import EOS, PAD, Transformer
from adafactor.experiments.plots import write_plots
from adafactor.experiments.report import write_report
from adafactor.experiments.reproduce import reproduce, select_runs
from adafactor.experiments.runner import RunResult, load_result, train_run
from adafactor.experiments.search import selected_regime
from adafactor.experiments.seeds import not_worse, peak_rms_ratio_at_least, similar, worse
from adafactor.experiments.tokenizer import load_tokenizer

TINY = SCALES["tiny"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("loss.png", "update_rms.png", "update_rms_tensors.png")


@pytest.fixture(scope="module")
def full_tiny(tmp_path_factory):
    """Every run of ``--full`` at the tiny scale, one seed, in one process."""
    out = tmp_path_factory.mktemp("reproduction")
    lines = []
    outcome = reproduce(out, list(FULL), TINY, seeds=(0,), jobs=1, print_fn=lines.append)
    return out, outcome, lines


@pytest.fixture(scope="module")
def tiny_data(full_tiny):
    out, _, _ = full_tiny
    return load_data(out / "data" / f"vocab{TINY.vocab_size}" / "data.pt")


def _mean(xs):
    return sum(xs) / len(xs)


def test_every_configuration_trains(full_tiny):
    _, outcome, _ = full_tiny
    assert not outcome.failures
    assert list(outcome.results) == list(FULL)
    for name, (result,) in outcome.results.items():
        assert not result.diverged, name
        loss = result.curves["loss"]
        assert len(loss) == TINY.steps
        assert _mean(loss[-5:]) < _mean(loss[:5]) - 0.3, name
        # Held out, below the loss before any training (label smoothing only adds to that).
        assert result.dev_loss < loss[0], name


def test_factored_runs_keep_less_state(full_tiny):
    results = full_tiny[1].results
    assert results["adam-factored-warmup"][0].state_bytes < results["adam-warmup"][0].state_bytes
    assert results["adafactor"][0].state_bytes < 0.1 * results["adam-warmup"][0].state_bytes


def test_table_csv_json_and_plots_are_written(full_tiny):
    out, outcome, _ = full_tiny
    names = {p.name for p in outcome.files}
    assert names == {"results.md", "results.csv", "results.json", *PLOTS}
    with open(out / "results.csv") as f:
        assert [(row["name"], row["seed"]) for row in csv.DictReader(f)] == [(n, "0") for n in FULL]
    assert [r["name"] for r in json.loads((out / "results.json").read_text())] == list(FULL)
    table = (out / "results.md").read_text()
    for name in FULL:
        assert f"| `{name}` |" in table
        assert (out / "runs" / "seed0" / f"{name}.json").exists()
        with open(out / "runs" / "seed0" / f"{name}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == TINY.steps and "rms embedding" in rows[0]
    for claim in CLAIMS:
        assert f"| {claim.key}: " in table
    assert "## The search for the instability" in table  # the stress screen is in --full
    for png in PLOTS:
        data = (out / png).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_every_claim_is_judged_at_each_rate_of_the_full_set(full_tiny):
    judgements = judge_claims(full_tiny[1].results)
    assert sorted((j.claim.key, j.regime.name) for j in judgements) == sorted(
        [(c.key, r) for c in CLAIMS if c.absolute for r in ("paper", "stress")]
        + [(c.key, "relative") for c in CLAIMS if not c.absolute]
    )


def test_finished_runs_are_not_rerun(full_tiny):
    out, first, _ = full_tiny
    runs = out / "runs" / "seed0"
    before = {name: (runs / f"{name}.json").stat().st_mtime_ns for name in FULL}
    lines = []
    again = reproduce(out, list(FULL), TINY, seeds=(0,), jobs=1, print_fn=lines.append)
    assert any("already finished" in line for line in lines)
    assert {n: (runs / f"{n}.json").stat().st_mtime_ns for n in FULL} == before
    assert again.results["adafactor"][0].curves == first.results["adafactor"][0].curves
    # Another seed is another run.
    key = dict(first.results["adafactor"][0].key, seed=1)
    assert load_result("adafactor", key, runs) is None


def test_runs_made_by_other_code_are_rerun(full_tiny, tmp_path, monkeypatch, request):
    request.addfinalizer(provenance._source_digest.cache_clear)
    out, first, _ = full_tiny
    key = first.results["adafactor"][0].key
    assert key["code"] == provenance.code_fingerprint(lr_factor)
    changed = dict(key, code=dict(key["code"], **{"source sha256": "0" * 64}))
    assert load_result("adafactor", changed, out / "runs" / "seed0") is None

    # A changed optimizer module changes the fingerprint.
    package = tmp_path / "adafactor"
    (package / "experiments").mkdir(parents=True)
    for path in provenance._run_sources():
        target = package / path.relative_to(provenance.PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    monkeypatch.setattr(provenance, "PACKAGE", package)
    provenance._source_digest.cache_clear()
    same = provenance.code_fingerprint(lr_factor)
    (package / "optimizer.py").write_text((package / "optimizer.py").read_text() + "\n# x\n")
    provenance._source_digest.cache_clear()
    assert provenance.code_fingerprint(lr_factor) != same
    assert same == key["code"]


def test_a_stale_run_is_named_and_rerun(tmp_path):
    lines = []
    reproduce(tmp_path, ["adafactor"], TINY, print_fn=lines.append)
    path = tmp_path / "runs" / "seed0" / "adafactor.json"
    saved = json.loads(path.read_text())
    saved["key"]["code"]["source sha256"] = "0" * 64
    saved["dev_loss"] = -1.0
    path.write_text(json.dumps(saved))
    again = reproduce(tmp_path, ["adafactor"], TINY, print_fn=lines.append)
    assert any("1 run(s) in" in line and "other code" in line for line in lines)
    assert again.results["adafactor"][0].dev_loss > 0
    assert json.loads(path.read_text())["key"]["code"]["source sha256"] != "0" * 64


def test_several_seeds_are_runs_of_their_own(full_tiny, tmp_path):
    _, serial, _ = full_tiny
    names = ["adafactor", "b0-nowarmup-stress"]
    outcome = reproduce(tmp_path, names, TINY, seeds=(0, 1), jobs=2, print_fn=lambda _: None)
    assert not outcome.failures
    for name in names:
        zero, one = outcome.results[name]
        assert (zero.seed, one.seed) == (0, 1)
        # In parallel as in one process, the same run is the same numbers.
        assert zero.curves["loss"] == serial.results[name][0].curves["loss"]
        assert zero.dev_loss == serial.results[name][0].dev_loss
        assert one.curves["loss"] != zero.curves["loss"]
        assert (tmp_path / "runs" / "seed1" / f"{name}.json").exists()
    row = next(
        line for line in (tmp_path / "results.md").read_text().splitlines() if "`adafactor`" in line
    )
    losses = [r.dev_loss for r in outcome.results["adafactor"]]
    spread = abs(losses[0] - losses[1]) / math.sqrt(2)  # the sample sd of two values
    assert f"{_mean(losses):.3f} ± {spread:.3f}" in row


def test_regimes_change_steps_and_vocabulary(tmp_path):
    names = ["b0-nowarmup-long", "b0-nowarmup-vocab8k"]
    outcome = reproduce(tmp_path, names, TINY, seeds=(0,), jobs=1, print_fn=lambda _: None)
    long, vocab = outcome.results["b0-nowarmup-long"][0], outcome.results[names[1]][0]
    assert long.steps == 2 * TINY.steps and vocab.steps == TINY.steps
    assert (tmp_path / "data" / f"vocab{4 * TINY.vocab_size}" / "data.pt").exists()
    size = TINY.model.d_model
    assert vocab.parameters - long.parameters == 3 * TINY.vocab_size * size


def test_divergence_is_detected_and_reported(full_tiny, tiny_data, tmp_path):
    exploding = RunConfig(
        "b0-nowarmup",
        SECTION_NO_MOMENTUM,
        "β1 0 at a huge rate",
        {**ADAM, "beta1": None},
        "flat",
        PAPER,
        lr=1e3,
    )
    result = train_run(exploding, TINY, tiny_data, seed=0)
    assert result.diverged and result.diverged_at <= TINY.steps
    assert result.steps == result.diverged_at
    assert result.dev_loss is None and result.bleu is None

    results = {**full_tiny[1].results, "b0-nowarmup": [result]}
    write_report(results, TINY, (0,), tmp_path)
    write_plots(results, tmp_path)
    table = (tmp_path / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| `b0-nowarmup` |"))
    assert f"yes (step {result.diverged_at})" in row
    c3 = next(j for j in judge_claims(results) if j.claim.key == "C3" and j.regime == PAPER)
    assert "unstable in 1/1 seeds" in c3.verdict.evidence
    assert c3.verdict.status in ("reproduced", "partly")
    assert (tmp_path / "update_rms_tensors.png").read_bytes().startswith(PNG_SIGNATURE)


def test_divergence_monitor():
    monitor = DivergenceMonitor()
    assert not any(monitor.diverged(5.0 - 0.01 * t) for t in range(100))
    assert monitor.diverged(float("nan"))
    assert DivergenceMonitor().diverged(float("inf"))
    spiking = DivergenceMonitor()
    assert not any(spiking.diverged(3.0) for _ in range(40))
    assert any(spiking.diverged(8.0) for _ in range(20))
    assert spiking.largest_rise > 2.0


def test_lr_schedules_are_the_papers_shapes_compressed():
    w = 10
    assert lr_factor("warmup", 1, w) == pytest.approx(0.1)
    assert lr_factor("warmup", w, w) == 1.0
    assert lr_factor("warmup", 4 * w, w) == pytest.approx(0.5)
    assert lr_factor("flat", 1, w) == lr_factor("flat", w, w) == 1.0
    assert lr_factor("flat", 4 * w, w) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule"):
        lr_factor("cosine", 1, w)


@pytest.mark.parametrize("factored", [False, True])
def test_unscaled_update_rms_matches_a_hand_derivation(factored):
    # G_t = s_t·a·bᵀ: factored or not, V̂_3 = EMA(s²)·a²·b² with Adam's bias correction,
    # EMA(s²) = (β²·1 + β·4 + 9)(1 − β)/(1 − β³) for s = 1, 2, 3; U_3 = ±3/√EMA(s²).
    beta = 0.999
    a, b = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 1.0, -1.0, 2.0])
    x = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
    opt = Adafactor([x], beta2=beta, factored=factored)
    for s in (1.0, 2.0, 3.0):
        x.grad = (s * torch.outer(a, b)).double()
        opt.step()
    ema = (beta**2 + 4 * beta + 9) * (1 - beta) / (1 - beta**3)
    assert unscaled_update_rms(opt, x) == pytest.approx(3 / math.sqrt(ema), rel=1e-9)


def test_factored_unscaled_update_rms_of_a_first_step_by_hand():
    # G = [[1, 2], [3, 4]]: R = (2.5, 12.5), C = (5, 10), V̂ = R·C/mean(R) =
    # [[5/3, 10/3], [25/3, 50/3]], so U² = (0.6, 1.2, 1.08, 0.96) and RMS(U) = √0.96.
    x = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    opt = Adafactor([x], factored=True)
    x.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    opt.step()
    assert unscaled_update_rms(opt, x) == pytest.approx(math.sqrt(0.96), rel=1e-9)


def test_first_update_of_full_second_moment_has_rms_one():
    x = torch.nn.Parameter(torch.randn(4, 3))
    opt = Adafactor([x], factored=False)
    x.grad = torch.randn(4, 3)
    opt.step()  # β̂2_1 = 0: V̂_1 = G² + ε1, so U_1 = ±1
    assert unscaled_update_rms(opt, x) == pytest.approx(1.0, rel=1e-5)


class _Echo(torch.nn.Module):
    """A "model" whose greedy translation of each source is a given target (or nothing)."""

    def __init__(self, pairs, silent=False):
        super().__init__()
        self.targets = {tuple(x): y for x, y in pairs}
        self.silent = silent

    def greedy_decode(self, source, max_len):
        rows = [[t for t in row if t not in (PAD, EOS)] for row in source.tolist()]
        return [[] if self.silent else self.targets[tuple(r)] for r in rows]


def test_greedy_bleu_scores_each_translation_against_its_own_reference(tiny_data):
    pairs = tiny_data.dev
    sp = load_tokenizer(tiny_data.tokenizer_path)
    references = [sp.decode(y) for _, y in pairs]
    exact = greedy_bleu(_Echo(pairs), pairs, references, tiny_data.tokenizer_path)
    assert exact == pytest.approx(100.0)
    shifted = [(x, pairs[(i + 1) % len(pairs)][1]) for i, (x, _) in enumerate(pairs)]
    assert greedy_bleu(_Echo(shifted), pairs, references, tiny_data.tokenizer_path) < 50
    silent = _Echo(pairs, silent=True)
    assert greedy_bleu(silent, pairs, references, tiny_data.tokenizer_path) == 0.0


def test_tokenizer_data_is_reused(full_tiny):
    out, _, _ = full_tiny
    path = out / "data" / f"vocab{TINY.vocab_size}" / "data.pt"
    before = path.stat().st_mtime_ns
    assert prepare_data(TINY, path.parent) == path
    assert path.stat().st_mtime_ns == before


def test_select_runs():
    assert select_runs() == list(QUICK)
    assert select_runs(full=True) == list(FULL)
    assert select_runs(search=True) == list(SEARCH)
    assert select_runs(names=["adafactor"]) == ["adafactor"]
    regime = select_runs(full=True, regimes=["long"], names=["adafactor"])
    assert regime == [*FULL, *regime_runs("long")]
    assert "b0-nowarmup-clip-long" in regime and len(regime_runs("long")) == 8
    with pytest.raises(ValueError, match="unknown run"):
        select_runs(names=["sgd"])
    with pytest.raises(ValueError, match="unknown regime"):
        select_runs(regimes=["paper"])


def test_cli_reproduce(tmp_path, capsys):
    args = ["reproduce", "--scale", "tiny", "--out", str(tmp_path), "--jobs", "1"]
    assert main([*args, "--runs", "adafactor", "adam-warmup", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "Wrote" in out and "C7 (relative step)" in out
    assert (tmp_path / "runs" / "seed1" / "adafactor.json").exists()
    assert main([*args, "--runs", "no-such-run"]) == 2
    assert "unknown run" in capsys.readouterr().err
    assert main([*args, "--regime", "nowhere"]) == 2
    assert "unknown regime 'nowhere'" in capsys.readouterr().err


def test_greedy_decoding_with_cache_matches_the_full_forward():
    from adafactor.experiments.model import BOS

    torch.manual_seed(0)
    model = Transformer(50, TINY.model).eval()
    source = torch.randint(4, 50, (3, 7))
    decoded = model.greedy_decode(source, max_len=6)
    with torch.no_grad():
        prefix = torch.full((3, 1), BOS)
        for _ in range(6):
            prefix = torch.cat([prefix, model(source, prefix)[:, -1:].argmax(-1)], dim=1)
    for row, tokens in zip(prefix[:, 1:].tolist(), decoded):
        assert tokens == row[: len(tokens)]


def test_laptop_model_has_about_a_million_parameters():
    laptop = SCALES["laptop"]
    model = Transformer(laptop.vocab_size, laptop.model)
    assert 0.9e6 < sum(p.numel() for p in model.parameters()) < 1.5e6


def test_a_failing_run_is_reported_and_exits_nonzero(tmp_path, monkeypatch, capsys):
    import adafactor.experiments.reproduce as reproduce_module

    def broken(config, *args, **kwargs):
        raise RuntimeError(f"out of memory in {config.name}")

    monkeypatch.setattr(reproduce_module, "run_and_save", broken)
    args = ["reproduce", "--scale", "tiny", "--out", str(tmp_path), "--jobs", "1"]
    assert main([*args, "--runs", "adafactor"]) == 1
    assert "adafactor: RuntimeError: out of memory in adafactor" in capsys.readouterr().err
    assert "Not finished: `adafactor`" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "loss.png").read_bytes().startswith(PNG_SIGNATURE)


def test_cli_names_a_missing_dependency(monkeypatch, capsys):
    import sys

    monkeypatch.delitem(sys.modules, "adafactor.experiments.reproduce", raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    monkeypatch.delitem(sys.modules, "adafactor.experiments.plots", raising=False)
    assert main(["reproduce", "--scale", "tiny"]) == 1
    assert "'matplotlib'" in capsys.readouterr().err


# The verdict rules, on constructed results. A trial list is one run per seed; a loss of
# None marks a seed that diverged.


def _run(name, seed, loss, *, rise=0.1, peak=1.5, state=1000):
    diverged = loss is None
    return RunResult(
        name=name,
        key={"seed": seed},
        steps=640,
        diverged=diverged,
        diverged_at=100 if diverged else None,
        final_train_loss=loss,
        largest_loss_rise=rise,
        peak_update_rms=peak,
        dev_loss=loss,
        bleu=None if diverged else 1.0,
        state_bytes=state,
        parameters=1,
        seconds=1.0,
        target_tokens=800.0,
        curves={},
    )


def _trials(name, losses, *, rises=None, peaks=None, state=1000):
    rises = rises or [0.1] * len(losses)
    peaks = peaks or [1.5] * len(losses)
    return [
        _run(name, seed, loss, rise=rise, peak=peak, state=state)
        for seed, (loss, rise, peak) in enumerate(zip(losses, rises, peaks))
    ]


def _verdict(key, results, regime="paper"):
    matches = [j for j in judge_claims(results) if j.claim.key == key and j.regime.name == regime]
    assert len(matches) == 1, (key, regime, [j.claim.key for j in judge_claims(results)])
    return matches[0].verdict


T = "t"  # a placeholder run name for the comparison tests


@pytest.mark.parametrize(
    "a, b, expected_similar, expected_not_worse",
    [
        ([4.05, 4.00], [4.0, 4.02], True, True),  # within 0.1 in both seeds
        ([4.3, 4.2], [4.0, 4.0], False, False),  # worse by more than 0.1 in both
        ([3.5, 3.8], [4.0, 4.0], False, True),  # better by more than 0.1 in both
        ([4.05, 4.2], [4.0, 4.0], None, None),  # the seeds disagree
        ([4.1], [4.0], True, True),  # one seed: the tolerance alone, inclusive
        ([4.0], [3.89], False, False),
        ([None, 4.0], [4.0, 4.0], False, False),  # a diverged where b did not
        ([4.5, 4.5], [None, 4.0], False, True),  # b diverged: the worse, whatever else
        ([4.0, 4.0], [None, 4.0], False, True),
        ([None, 4.0], [4.0, None], False, None),  # each diverged where the other did not
        ([None, 4.02], [None, 4.0], True, True),  # both diverged in a seed: agree there
        ([None, None], [None, None], True, True),  # nan, not inf − inf
    ],
)
def test_seed_by_seed_comparisons(a, b, expected_similar, expected_not_worse):
    a, b = _trials(T, a), _trials(T, b)
    assert similar(a, b, 0.1) is expected_similar
    assert not_worse(a, b, 0.1) is expected_not_worse
    assert worse(a, b, 0.1) is (None if expected_not_worse is None else not expected_not_worse)


def test_comparisons_pair_seeds_and_need_a_common_one():
    a = _trials(T, [4.0, 9.0])  # seeds 0 and 1
    b = [_run(T, 0, 4.0), _run(T, 7, 9.0)]
    assert similar(a, b, 0.1) is True  # only seed 0 is shared
    assert similar(a, [_run(T, 5, 4.0)], 0.1) is None


def test_peak_rms_ratio():
    run = _trials(T, [4.0, 4.0], peaks=[3.0, 4.5])
    assert peak_rms_ratio_at_least(run, _trials(T, [4, 4], peaks=[2.0, 3.0]), 1.5) is True
    assert peak_rms_ratio_at_least(run, _trials(T, [4, 4], peaks=[2.9, 4.4]), 1.5) is False
    assert peak_rms_ratio_at_least(run, _trials(T, [4, 4], peaks=[2.0, 4.4]), 1.5) is None
    assert peak_rms_ratio_at_least(run, _trials(T, [4, 4], peaks=[None, 3.0]), 1.5) is True


@pytest.mark.parametrize(
    "parts, status",
    [
        ([True, True], "reproduced"),
        ([False, False], "not reproduced"),
        ([True, False], "partly"),
        ([True, False, None], "partly"),  # partly however the undecided part goes
        ([True, None], "inconclusive"),  # reproduced or partly
        ([False, None], "inconclusive"),  # partly or not reproduced
        ([None], "inconclusive"),
    ],
)
def test_status_of_parts(parts, status):
    assert status_of(parts) == status


def _c1_runs(factored_warmup, factored_nowarmup):
    return {
        "adam-warmup": _trials("adam-warmup", [4.0, 4.0]),
        "adam-nowarmup": _trials("adam-nowarmup", [4.0, 4.0]),
        "adam-factored-warmup": _trials("adam-factored-warmup", factored_warmup),
        "adam-factored-nowarmup": _trials("adam-factored-nowarmup", factored_nowarmup),
    }


@pytest.mark.parametrize(
    "warmup, nowarmup, status",
    [
        ([4.05, 3.95], [4.0, 4.1], "reproduced"),
        ([4.05, 3.95], [4.2, 4.3], "partly"),
        ([None, 4.0], [4.2, 4.3], "not reproduced"),
        ([4.05, 4.2], [4.0, 4.0], "inconclusive"),
    ],
)
def test_c1_factored_like_full(warmup, nowarmup, status):
    assert _verdict("C1", _c1_runs(warmup, nowarmup)).status == status


@pytest.mark.parametrize(
    "b0, rises, status",
    [
        ([4.0, 3.5], [0.1, 0.1], "reproduced"),  # as good or better
        ([4.0, 4.05], [0.6, 0.1], "partly"),  # as good, but spiked in a seed
        ([4.3, 4.4], [0.1, 0.1], "partly"),  # stable, but worse
        ([None, 4.0], [0.1, 0.1], "not reproduced"),  # diverged
    ],
)
def test_c2_no_momentum_with_warmup(b0, rises, status):
    runs = {
        "adam-warmup": _trials("adam-warmup", [4.0, 4.0]),
        "b0-warmup": _trials("b0-warmup", b0, rises=rises),
    }
    assert _verdict("C2", runs).status == status


def _c3_to_c6_runs(nowarmup, *, rises=(0.1, 0.1), peaks=(2.0, 2.0), fixes=(4.0, 4.0), fast=None):
    """b0-warmup and adam-warmup at 4.0 (peak RMS 2.0); the fixes all at ``fixes``."""
    runs = {
        "adam-warmup": _trials("adam-warmup", [4.0, 4.0], peaks=[2.0, 2.0]),
        "b0-warmup": _trials("b0-warmup", [4.0, 4.0], peaks=[2.0, 2.0]),
        "b0-nowarmup": _trials("b0-nowarmup", nowarmup, rises=list(rises), peaks=list(peaks)),
        "b0-nowarmup-fast": _trials("b0-nowarmup-fast", fast or [4.3, 4.3]),
    }
    for name in ("b0-nowarmup-clip", *(f"b0-nowarmup-decay{c}" for c in (0.8, 0.5, 1.0))):
        runs[name] = _trials(name, list(fixes))
    return runs


@pytest.mark.parametrize(
    "nowarmup, rises, peaks, status",
    [
        ([None, 4.5], (0.1, 0.7), (3.5, 4.0), "reproduced"),
        ([4.0, 4.0], (0.1, 0.1), (3.5, 4.0), "partly"),  # high RMS, stable
        ([4.0, 4.0], (0.1, 0.6), (2.1, 2.2), "partly"),  # spiked, RMS like the controls
        ([4.0, 4.0], (0.1, 0.1), (2.39, 2.39), "not reproduced"),  # 1.2× the controls'
        ([4.0, 4.0], (0.1, 0.1), (3.5, 2.5), "inconclusive"),  # ≥ 1.5× in one seed only
    ],
)
def test_c3_judged_against_the_warmup_controls(nowarmup, rises, peaks, status):
    runs = _c3_to_c6_runs(nowarmup, rises=rises, peaks=peaks)
    assert _verdict("C3", runs).status == status


def test_c3_rms_far_above_1_is_not_enough_when_the_controls_are_as_high():
    # The full run's stress rate: 2.39 against the warm-up controls' 2.35 and 2.22; it met
    # the old fixed threshold of 2.
    runs = _c3_to_c6_runs([4.0], peaks=(2.39,))
    runs["b0-warmup"] = _trials("b0-warmup", [4.0], peaks=[2.35])
    runs["adam-warmup"] = _trials("adam-warmup", [4.0], peaks=[2.22])
    verdict = _verdict("C3", runs)
    assert verdict.status == "not reproduced"
    assert "≥ 1.5× every control in every seed: no" in verdict.evidence
    # Far above one control is not far above all of them.
    runs["b0-warmup"] = _trials("b0-warmup", [4.0], peaks=[1.2])
    assert "every seed: no" in _verdict("C3", runs).evidence


@pytest.mark.parametrize(
    "nowarmup, rises, fixes, status",
    [
        ([4.0, 4.05], (0.1, 0.1), (4.0, 4.0), "inconclusive"),  # nothing to fix
        ([4.0, 4.3], (0.1, 0.1), (4.0, 4.0), "inconclusive"),  # the seeds disagree
        ([4.3, 4.3], (0.1, 0.1), (4.0, 4.0), "reproduced"),  # worse without, fixed
        ([None, 4.0], (0.1, 0.1), (4.05, 3.9), "reproduced"),  # diverged without, fixed
        ([4.0, 4.0], (0.1, 0.8), (4.3, 4.3), "partly"),  # spiked; fix stable, not as good
        ([4.3, 4.3], (0.1, 0.1), (None, 4.0), "not reproduced"),  # the fix diverges
    ],
)
def test_c4_and_c5_one_rule(nowarmup, rises, fixes, status):
    runs = _c3_to_c6_runs(nowarmup, rises=rises, fixes=fixes)
    assert _verdict("C4", runs).status == status
    assert _verdict("C5", runs).status == status


def test_c5_counts_each_decay():
    runs = _c3_to_c6_runs([4.3, 4.3])
    runs["b0-nowarmup-decay0.5"] = _trials("b0-nowarmup-decay0.5", [4.3, 4.3])
    assert _verdict("C5", runs).status == "partly"
    assert "no instability" in _verdict("C5", _c3_to_c6_runs([4.0, 4.0])).evidence


@pytest.mark.parametrize(
    "fast, status",
    [
        ([4.3, 4.2], "reproduced"),  # stable and worse
        ([4.0, 3.9], "partly"),  # stable, not worse
        ([None, 4.0], "partly"),  # diverged: worse, not stable
        ([4.3, 4.0], "inconclusive"),  # stable; worse in one seed only
    ],
)
def test_c6_fast_decay(fast, status):
    assert _verdict("C6", _c3_to_c6_runs([4.0, 4.0], fast=fast)).status == status


def _c7_runs(adafactor, best, state=40):
    return {
        "adam-warmup": _trials("adam-warmup", [4.0, 4.0]),
        "adam-warmup-stress": _trials("adam-warmup-stress", best),
        # Better still, but not an Adam configuration of the base scale: never the best.
        "adam-factored-warmup": _trials("adam-factored-warmup", [3.0, 3.0]),
        "adam-warmup-long": _trials("adam-warmup-long", [3.0, 3.0]),
        "adafactor": _trials("adafactor", adafactor, state=state),
        "adafactor-unfactored": _trials("adafactor-unfactored", adafactor),
    }


@pytest.mark.parametrize(
    "adafactor, best, state, c7, c8",
    [
        ([4.0, 4.05], [4.1, 4.1], 40, "reproduced", "reproduced"),
        ([4.0, 4.05], [3.7, 3.75], 40, "partly", "partly"),  # beaten by the stress Adam
        ([4.0, 4.05], [4.1, 4.1], 500, "partly", "reproduced"),  # state not small
        ([4.3, None], [4.1, 4.1], 500, "not reproduced", "not reproduced"),
    ],
)
def test_c7_and_c8_against_adam_at_the_papers_rate_and_the_best_adam(
    adafactor, best, state, c7, c8
):
    runs = _c7_runs(adafactor, best, state)
    assert _verdict("C7", runs, "relative").status == c7
    assert _verdict("C8", runs, "relative").status == c8


def test_best_adam_is_the_lowest_mean_adam_of_the_base_scale():
    runs = _c7_runs([4.0, 4.0], [3.9, 4.0])
    assert best_adam(runs) == "adam-warmup-stress"
    runs["adam-warmup-stress"] = _trials("adam-warmup-stress", [3.0, None])  # diverged once
    assert best_adam(runs) == "adam-warmup"


@pytest.mark.parametrize(
    "relative_unit, absolute, absolute_unit, status",
    [
        ([4.05, 4.0], [4.0, 4.0], [5.0, 5.2], "reproduced"),
        ([4.6, 4.9], [4.0, 4.0], [5.0, 5.2], "partly"),  # both hurt
        ([4.05, 4.0], [4.0, 4.0], [4.0, 4.05], "partly"),  # neither hurt
        ([None, 4.0], [4.0, 4.0], [4.0, 4.05], "not reproduced"),
        # Both absolute runs diverged: not a sensitivity to the scale (it was inf − inf).
        ([4.05, 4.0], [None, None], [None, None], "partly"),
        ([4.05, 4.0], [None, None], [None, 4.0], "partly"),  # only the scaled one diverged
        ([4.05, 4.0], [4.0, 4.0], [5.0, 4.05], "inconclusive"),  # hurt in one seed only
    ],
)
def test_c9_relative_step_robust(relative_unit, absolute, absolute_unit, status):
    runs = {
        "adafactor": _trials("adafactor", [4.0, 4.0]),
        "adafactor-unit": _trials("adafactor-unit", relative_unit),
        "adafactor-absolute": _trials("adafactor-absolute", absolute),
        "adafactor-absolute-unit": _trials("adafactor-absolute-unit", absolute_unit),
    }
    assert _verdict("C9", runs).status == status


def test_claims_are_judged_only_where_their_runs_are():
    runs = _c3_to_c6_runs([4.3, 4.3])
    del runs["adam-warmup"]
    keys = {j.claim.key for j in judge_claims(runs)}
    assert keys == {"C4", "C5", "C6"}  # C2 and C3 need adam-warmup
    waiting = {(c.key, r.name): missing for c, r, missing in unjudged(runs)}
    assert waiting == {("C2", "paper"): ["adam-warmup"], ("C3", "paper"): ["adam-warmup"]}


def test_claims_in_a_regime_of_the_search_read_its_runs():
    runs = {
        name + "-long": [RunResult(**{**vars(r), "name": r.name + "-long"}) for r in trials]
        for name, trials in _c3_to_c6_runs([None, 4.5], rises=(0.1, 0.7)).items()
    }
    verdicts = {j.claim.key: j for j in judge_claims(runs)}
    assert all(j.regime.name == "long" for j in verdicts.values())
    assert verdicts["C4"].verdict.status == "reproduced"
    assert verdicts["C4"].subjects == ("b0-nowarmup-clip-long",)


def _screen(regime, warmup, nowarmup, rises=None):
    suffix = "" if regime == "paper" else f"-{regime}"
    return {
        f"b0-warmup{suffix}": _trials(f"b0-warmup{suffix}", warmup),
        f"b0-nowarmup{suffix}": _trials(f"b0-nowarmup{suffix}", nowarmup, rises=rises),
    }


def test_the_search_selects_the_regime_that_shows_the_problem_most():
    assert selected_regime(_screen("stress", [4.0, 4.0], [4.05, 4.0])) is None
    results = {
        **_screen("stress", [4.0, 4.0], [4.05, 4.0]),  # no problem
        **_screen("lr3e-3", [4.0, 4.0], [4.2, 4.3]),  # worse by 0.25 on average
        **_screen("long", [4.0, 4.0], [4.4, 4.5]),  # worse by 0.45
        **_screen("lr3e-2", [None, 4.0], [None, None]),  # the warm-up run diverges too
    }
    assert selected_regime(results).name == "long"
    results.update(_screen("vocab8k", [4.0, 4.0], [4.0, 4.0], rises=[0.1, 0.9]))  # unstable
    assert selected_regime(results).name == "vocab8k"
    results.update(_screen("long", [4.0, 4.0], [4.0, 4.5]))  # the seeds disagree now
    results.update(_screen("vocab8k", [4.0, 4.0], [4.0, 4.0]))
    assert selected_regime(results).name == "lr3e-3"
