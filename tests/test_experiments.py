"""``adafactor reproduce`` at a tiny scale: every configuration trains, divergence is a result,
runs are deterministic and resumable, and the table, CSV, JSON and plots are written."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from adafactor import Adafactor
from adafactor.cli import main
from adafactor.experiments.claims import CLAIMS, judge_claims
from adafactor.experiments.configs import (
    ADAM,
    QUICK,
    RUNS,
    SCALES,
    SECTION_NO_MOMENTUM,
    RunConfig,
    lr_factor,
)
from adafactor.experiments.dataset import load_data, prepare_data
from adafactor.experiments.diagnostics import DivergenceMonitor, unscaled_update_rms
from adafactor.experiments.plots import write_plots
from adafactor.experiments.report import write_report
from adafactor.experiments.reproduce import reproduce, select_runs
from adafactor.experiments.runner import load_result, train_run

TINY = SCALES["tiny"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def full_tiny(tmp_path_factory):
    """Every run of ``--full`` at the tiny scale, in one process."""
    out = tmp_path_factory.mktemp("reproduction")
    lines = []
    outcome = reproduce(out, list(RUNS), TINY, seed=0, jobs=1, print_fn=lines.append)
    return out, outcome, lines


@pytest.fixture(scope="module")
def tiny_data(full_tiny):
    out, _, _ = full_tiny
    return load_data(out / "data" / "data.pt")


def _mean(xs):
    return sum(xs) / len(xs)


def test_every_configuration_trains(full_tiny):
    _, outcome, _ = full_tiny
    assert not outcome.failures
    assert list(outcome.results) == list(RUNS)
    for name, result in outcome.results.items():
        assert not result.diverged, name
        loss = result.curves["loss"]
        assert len(loss) == TINY.steps
        assert _mean(loss[-5:]) < _mean(loss[:5]) - 0.3, name
        assert math.isfinite(result.dev_loss) and result.bleu >= 0.0


def test_factored_runs_keep_less_state(full_tiny):
    results = full_tiny[1].results
    assert results["adam-factored-warmup"].state_bytes < results["adam-warmup"].state_bytes
    assert results["adafactor"].state_bytes < 0.1 * results["adam-warmup"].state_bytes


def test_table_csv_json_and_plots_are_written(full_tiny):
    out, outcome, _ = full_tiny
    names = {p.name for p in outcome.files}
    assert names == {"results.md", "results.csv", "results.json", "loss.png", "update_rms.png"}
    with open(out / "results.csv") as f:
        assert [row["name"] for row in csv.DictReader(f)] == list(RUNS)
    assert [r["name"] for r in json.loads((out / "results.json").read_text())] == list(RUNS)
    table = (out / "results.md").read_text()
    for name in RUNS:
        assert f"| `{name}` |" in table
        assert (out / "runs" / f"{name}.json").exists()
        with open(out / "runs" / f"{name}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == TINY.steps and "rms embedding" in rows[0]
    for claim in CLAIMS:
        assert f"| {claim.key}: " in table
    for png in ("loss.png", "update_rms.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_every_claim_is_judged_at_each_rate(full_tiny):
    judgements = judge_claims(full_tiny[1].results)
    expected = sum(2 if claim.absolute else 1 for claim in CLAIMS)
    assert len(judgements) == expected
    statuses = {"reproduced", "partly", "not reproduced", "inconclusive"}
    assert all(j.verdict.status in statuses and j.verdict.evidence for j in judgements)


def test_finished_runs_are_not_rerun(full_tiny):
    out, first, _ = full_tiny
    before = {name: (out / "runs" / f"{name}.json").stat().st_mtime_ns for name in RUNS}
    lines = []
    again = reproduce(out, list(RUNS), TINY, seed=0, jobs=1, print_fn=lines.append)
    assert any("already finished" in line for line in lines)
    assert {n: (out / "runs" / f"{n}.json").stat().st_mtime_ns for n in RUNS} == before
    assert again.results["adafactor"].curves == first.results["adafactor"].curves
    # Another seed is another run.
    key = dict(first.results["adafactor"].key, seed=1)
    assert load_result("adafactor", key, out / "runs") is None


def test_runs_are_deterministic_in_parallel_and_serial(full_tiny, tmp_path):
    _, serial, _ = full_tiny
    names = ["adafactor", "b0-nowarmup-stress"]
    outcome = reproduce(tmp_path, names, TINY, seed=0, jobs=2, print_fn=lambda _: None)
    assert not outcome.failures
    for name in names:
        assert outcome.results[name].curves["loss"] == serial.results[name].curves["loss"]
        assert outcome.results[name].dev_loss == serial.results[name].dev_loss


def test_divergence_is_detected_and_reported(full_tiny, tiny_data, tmp_path):
    exploding = RunConfig(
        "b0-nowarmup",
        SECTION_NO_MOMENTUM,
        "β1 0 at a huge rate",
        {**ADAM, "beta1": None},
        "flat",
        "paper",
        lr=1e3,
    )
    result = train_run(exploding, TINY, tiny_data, seed=0)
    assert result.diverged and result.diverged_at <= TINY.steps
    assert result.steps == result.diverged_at
    assert result.dev_loss is None and result.bleu is None

    results = {**full_tiny[1].results, "b0-nowarmup": result}
    write_report(results, TINY, 0, tmp_path)
    write_plots(results, tmp_path)
    table = (tmp_path / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| `b0-nowarmup` |"))
    assert f"yes (step {result.diverged_at})" in row
    c3 = next(j for j in judge_claims(results) if j.claim.key == "C3" and j.rate == "paper")
    assert "diverged" in c3.verdict.evidence and c3.verdict.status != "not reproduced"
    assert (tmp_path / "update_rms.png").read_bytes().startswith(PNG_SIGNATURE)


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
def test_unscaled_update_rms_is_g_over_sqrt_v(factored):
    torch.manual_seed(0)
    x = torch.nn.Parameter(torch.randn(6, 5, dtype=torch.float64))
    opt = Adafactor([x], beta2=0.999, factored=factored)
    for _ in range(3):
        x.grad = torch.randn(6, 5, dtype=torch.float64) * torch.arange(1, 7)[:, None]
        opt.step()
    state = opt.state[x]
    if factored:  # the paper's V̂ = R·C / 1ᵀR, with R and C as sums
        row, col = state["exp_avg_sq_row"] * 5, state["exp_avg_sq_col"] * 6
        v = row * col / row.sum()
    else:
        v = state["exp_avg_sq"]
    expected = (x.grad / v.sqrt()).square().mean().sqrt().item()
    assert unscaled_update_rms(opt, x) == pytest.approx(expected, rel=1e-12)


def test_first_update_of_full_second_moment_has_rms_one():
    x = torch.nn.Parameter(torch.randn(4, 3))
    opt = Adafactor([x], factored=False)
    x.grad = torch.randn(4, 3)
    opt.step()  # β̂2_1 = 0: V̂_1 = G² + ε1, so U_1 = ±1
    assert unscaled_update_rms(opt, x) == pytest.approx(1.0, rel=1e-5)


def test_tokenizer_data_is_reused(full_tiny):
    out, _, _ = full_tiny
    path = out / "data" / "data.pt"
    before = path.stat().st_mtime_ns
    assert prepare_data(TINY, out / "data") == path
    assert path.stat().st_mtime_ns == before


def test_select_runs():
    assert select_runs(full=False) == list(QUICK)
    assert select_runs(full=True) == list(RUNS)
    assert select_runs(full=False, names=["adafactor"]) == ["adafactor"]
    with pytest.raises(ValueError, match="unknown run"):
        select_runs(full=False, names=["sgd"])


def test_cli_reproduce(tmp_path, capsys):
    args = ["reproduce", "--scale", "tiny", "--out", str(tmp_path), "--jobs", "1"]
    assert main([*args, "--runs", "adafactor", "adam-warmup"]) == 0
    out = capsys.readouterr().out
    assert "Wrote" in out and (tmp_path / "results.md").exists()
    assert main([*args, "--runs", "no-such-run"]) == 2
    assert "unknown run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--jobs", "0"])
    assert exit_info.value.code == 2


def test_greedy_decoding_with_cache_matches_the_full_forward():
    from adafactor.experiments.model import BOS, Transformer

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
    from adafactor.experiments.model import Transformer

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
