"""``adafactor.bench``: a tiny run produces the table, the JSON and the chart; the rows' ratios
and floors agree with numbers worked out by hand; the sets have the shapes their models have;
``--device`` is parsed and checked. CPU only, and no assertion on absolute times."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("matplotlib")

from adafactor import bench
from adafactor.bench import candidates, cli
from adafactor.bench.child import run_child
from adafactor.bench.machine import machine_info
from adafactor.bench.sets import DEMO_VOCAB, floors, set_info
from adafactor.bench.summary import aggregate, summarize
from adafactor.bench.timing import copy_bandwidth

CANDIDATES = ["ours-eager", "torch", "adamw-foreach"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = bench.main(
        [
            "--quick",
            "--sets",
            "256x128",
            "--dtypes",
            "fp32",
            "--candidates",
            *CANDIDATES,
            "--steps",
            "3",
            "--repeats",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_outputs_exist(quick_run):
    for name in ("results.json", "table.md", "chart.png"):
        assert (quick_run / name).stat().st_size > 0
    assert (quick_run / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_run_measures_every_candidate(quick_run):
    report = json.loads((quick_run / "results.json").read_text())
    rows = {r["candidate"]: r for r in report["results"]}
    assert set(rows) == set(CANDIDATES)
    assert report["config"]["device"] == "cpu"
    assert report["copy_bandwidth_bytes_per_s"] > 0
    assert report["sets"]["256x128"]["numel"] == 256 * 128
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["set"] == "256x128" and row["dtype"] == "fp32"
        assert len(row["step_ms"]) == 3
        assert row["median_ms"] > 0 and row["params_finite"]
        assert row["peak_transient_bytes"] >= 0
    assert rows["ours-eager"]["fastest_peer"] == "torch"  # the only peer Adafactor here
    assert rows["ours-eager"]["x_adamw_fused"] is None  # not run
    # State: ours keeps 256 + 128 statistics (+ counters); AdamW m and v, 128 KiB each.
    assert rows["ours-eager"]["state_bytes"] < 4 * 1024
    assert rows["adamw-foreach"]["state_bytes"] >= 2 * 256 * 128 * 4


def test_table_has_every_row(quick_run):
    table = (quick_run / "table.md").read_text()
    for label in ("adafactor (eager)", "torch.optim.Adafactor", "AdamW (foreach)"):
        assert f"| 256x128 | fp32 | {label} |" in table


# A 256×128 fp32 set moves 5·32,768·4 = 655,360 bytes at least: at 655.36 MB/s that is 1 ms,
# so its floors are 1 ms (5N·b), 1.2 ms (6N·b) and 1.4 ms (AdamW's 7N·b).
BANDWIDTH = 655_360_000.0


def ok_row(key: str, median_ms: float, **extra) -> dict:
    return {
        "set": "256x128",
        "dtype": "fp32",
        "candidate": key,
        "status": "ok",
        "median_ms": median_ms,
        **extra,
    }


def test_floors_by_hand():
    f = floors(256 * 128, "fp32", BANDWIDTH)
    assert f["adafactor_bytes"] == 655_360
    assert f["adamw_bytes"] == 917_504
    assert f["adafactor_ms"] == pytest.approx(1.0)
    assert f["adafactor_exact_clip_ms"] == pytest.approx(1.2)
    assert f["adamw_ms"] == pytest.approx(1.4)
    assert floors(256 * 128, "bf16", BANDWIDTH)["adafactor_ms"] == pytest.approx(0.5)


def test_ratios_and_floors_by_hand():
    results = [
        ok_row("ours-fused", 5.0, first_step_s=3.0, first_step_s_runs=[3.0, 1.0]),
        ok_row("torch", 2.0),
        ok_row("hf", 4.0),
        {"set": "256x128", "dtype": "fp32", "candidate": "timm", "status": "not installed"},
        ok_row("adamw-fused", 2.5),
        ok_row("adamw-foreach", 10.0),
    ]
    rows = {
        r["candidate"]: r for r in summarize(results, {"256x128": set_info("256x128")}, BANDWIDTH)
    }
    ours, torch_af, hf, adamw = rows["ours-fused"], rows["torch"], rows["hf"], rows["adamw-fused"]
    assert {r["fastest_peer"] for r in rows.values()} == {"torch"}
    assert ours["x_fastest_peer"] == pytest.approx(2.5)  # 5 ms against torch's 2 ms
    assert hf["x_fastest_peer"] == pytest.approx(2.0)
    assert torch_af["x_fastest_peer"] == pytest.approx(1.0)
    assert ours["x_adamw_fused"] == pytest.approx(2.0)  # 5 ms against 2.5 ms
    assert torch_af["x_adamw_fused"] == pytest.approx(0.8)
    assert ours["ratios"]["adamw-foreach"] == pytest.approx(0.5)
    assert "timm" not in ours["ratios"]
    assert ours["x_floor"] == pytest.approx(5.0)  # against 1 ms
    assert ours["x_floor_exact_clip"] == pytest.approx(5.0 / 1.2)
    assert ours["achieved_bytes_per_s"] == pytest.approx(655_360 / 0.005)
    assert adamw["x_floor"] == pytest.approx(2.5 / 1.4)  # AdamW against its own 7N·b floor
    assert adamw["x_floor_exact_clip"] is None
    assert rows["adamw-foreach"]["x_fastest_peer"] == pytest.approx(5.0)
    assert ours["compile_s"] == pytest.approx(2.995)  # 3 s first step less one 5 ms step
    assert ours["compile_s_warm_cache"] == pytest.approx(0.995)
    assert "compile_s" not in torch_af
    assert rows["timm"]["floor"]["adafactor_ms"] == pytest.approx(1.0)
    assert "x_floor" not in rows["timm"]


def test_no_peer_means_no_peer_ratio():
    results = [ok_row("ours-eager", 3.0), ok_row("adamw-foreach", 6.0)]
    ours, adamw = summarize(results, {"256x128": set_info("256x128")}, BANDWIDTH)
    assert ours["fastest_peer"] is None and ours["x_fastest_peer"] is None
    assert ours["ratios"]["adamw-foreach"] == pytest.approx(0.5)
    assert adamw["x_floor"] == pytest.approx(6.0 / 1.4)


def run(step_ms, peak=100, status="ok", **extra):
    return {
        "status": status,
        "step_ms": step_ms,
        "first_step_s": 0.5,
        "state_bytes": 64,
        "peak_transient_bytes": peak,
        "peak_rss_delta_bytes": None,
        "params_finite": True,
        "threads": 2,
        "load": 0.1,
        **extra,
    }


def test_aggregate_takes_the_median_of_every_step_of_every_run():
    row = aggregate(("256x128", "fp32", "torch"), [run([1.0, 2.0, 3.0]), run([10.0, 4.0], None)])
    assert row["status"] == "ok"
    assert row["median_ms"] == 3.0  # of 1, 2, 3, 4, 10: not 2 (run 1) nor 7 (run 2)
    assert row["peak_transient_bytes"] == 100  # the run that measured memory
    assert row["label"] == "torch.optim.Adafactor" and row["kind"] == "peer"


def test_aggregate_reports_a_failed_repeat():
    failed = {"status": "error", "error": "RuntimeError: boom", "load": 0.1}
    row = aggregate(("256x128", "fp32", "torch"), [run([1.0]), failed])
    assert row["status"] == "error" and row["error"] == "RuntimeError: boom"
    assert "median_ms" not in row


def test_demo_char_set_has_the_demo_model_shapes():
    # d_model 128, 2 layers, d_ff 512, 64 positions, 63 symbols, counted by hand: positions
    # 64·128 + embedding 63·128 + 2 × (in_proj 384·129 + out_proj 128·129 + linear1 512·129 +
    # linear2 128·513 + two norms 4·128) + final norm 2·128 + output 63·129.
    info = set_info("demo-char")
    assert info["numel"] == 8192 + 8064 + 2 * 198_272 + 256 + 8127 == 421_183
    assert info["tensors"] == 30
    assert info["matrices"] == 11
    assert info["largest_param_numel"] == 512 * 128


def test_demo_vocab_is_the_corpus_count():
    from adafactor.experiments.corpus import load_pairs

    train_text = " ".join(en for en, _ in load_pairs("train"))
    assert len(set(train_text)) + 1 == DEMO_VOCAB  # run_demo: one index per character, 0 unknown


def test_missing_peer_is_reported_not_fatal(monkeypatch, tmp_path):
    monkeypatch.setattr(candidates, "installed", lambda candidate: candidate.key != "hf")
    monkeypatch.setattr(cli, "copy_bandwidth", lambda device: 1e10)
    monkeypatch.setattr(cli, "chart", lambda rows, path, where: path.write_bytes(b""))
    assert bench.main(["--quick", "--candidates", "hf", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert row["status"] == "not installed"
    assert "not installed" in (tmp_path / "table.md").read_text()


def test_unknown_set_is_an_error(tmp_path, capsys):
    assert bench.main(["--sets", "nonsense", "--out", str(tmp_path)]) == 2
    assert "unknown parameter set" in capsys.readouterr().err


def test_cuda_without_cuda_exits_2_with_a_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--device", "cuda", "--quick", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: no CUDA device is available" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_unknown_device_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--device", "tpu"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["ours-graph", "adafactor8bit"])
def test_cuda_only_candidate_on_cpu_is_an_error(key, tmp_path, capsys):
    assert bench.main(["--candidates", key, "--out", str(tmp_path)]) == 2
    assert f"{key} runs only with --device cuda" in capsys.readouterr().err


def plan(*argv: str):
    return cli.plan_from_args(cli.build_parser().parse_args(list(argv)))


def test_defaults_per_device():
    cpu, cuda = plan(), plan("--device", "cuda")
    assert cpu.device == "cpu" and cuda.device == "cuda"
    assert cpu.sets == cuda.sets == ["t5-small", "gpt2-small", "4096x4096", "demo-char"]
    assert cpu.dtypes == cuda.dtypes == ["fp32", "bf16"]
    assert {"ours-graph", "adafactor8bit"} & set(cpu.candidates) == set()
    assert set(cuda.candidates) == set(cpu.candidates) | {"ours-graph", "adafactor8bit"}
    assert (cpu.repeats, cpu.steps, cpu.warmup) == (3, 5, 2)
    quick = plan("--quick", "--device", "cuda", "--steps", "7")
    assert (quick.sets, quick.dtypes, quick.repeats, quick.steps) == (["256x128"], ["fp32"], 1, 7)


@pytest.fixture
def cuda_forbidden(monkeypatch):
    """Every torch.cuda entry point the benchmark uses raises."""

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.cuda touched on --device cpu")

    for name in (
        "is_available",
        "synchronize",
        "Event",
        "Stream",
        "CUDAGraph",
        "graph",
        "stream",
        "current_stream",
        "current_device",
        "get_device_properties",
        "memory_allocated",
        "max_memory_allocated",
        "reset_peak_memory_stats",
        "empty_cache",
    ):
        monkeypatch.setattr(torch.cuda, name, forbidden)


@pytest.mark.parametrize("key", ["ours-eager", "torch"])
def test_cpu_child_touches_no_cuda(cuda_forbidden, key):
    spec = {
        "set": "64x32",
        "dtype": "fp32",
        "candidate": key,
        "device": "cpu",
        "warmup": 1,
        "steps": 2,
    }
    result = run_child(spec)
    assert len(result["step_ms"]) == 2 and result["peak_transient_bytes"] >= 0
    assert result["params_finite"]


def test_cpu_parent_touches_no_cuda(cuda_forbidden):
    assert copy_bandwidth("cpu", nbytes=1 << 20, repeats=3) > 0
    assert "gpu" not in machine_info("cpu")
    cli.check_device("cpu")


class FakeCuda:
    """Stands in for the torch.cuda calls of one timed or measured step, and logs their order."""

    def __init__(self, monkeypatch):
        self.log: list[str] = []
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing

            def record(self):
                fake.log.append("record")

            def elapsed_time(self, end):
                fake.log.append("elapsed")
                return 7.5

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda: self.log.append("synchronize"))
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 1000)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 1500)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: self.log.append("reset"))

    def step(self):
        self.log.append("step")


def test_cuda_step_is_timed_by_events_and_one_synchronize(monkeypatch):
    from adafactor.bench.timing import call_ms

    cuda = FakeCuda(monkeypatch)
    assert call_ms(cuda.step, "cuda") == 7.5
    assert cuda.log == ["record", "step", "record", "synchronize", "elapsed"]


def test_cuda_peak_is_counted_from_the_memory_before_the_step(monkeypatch):
    from adafactor.bench.transient import cuda_peak

    cuda = FakeCuda(monkeypatch)
    assert cuda_peak(cuda.step) == 500  # a peak of 1,500 bytes over 1,000 allocated before
    assert cuda.log == ["synchronize", "reset", "step", "synchronize"]


def test_rounding_candidates_are_named_only_and_write_16_bit_as_named():
    assert "ours-nearest" not in candidates.candidates_for("cpu")
    assert "ours-compensated" not in candidates.candidates_for("cpu")
    params = [torch.nn.Parameter(torch.zeros(4, 3, dtype=torch.bfloat16))]
    for key, rounding in [("ours-fused", "stochastic"), ("ours-nearest", "nearest")]:
        opt = candidates.make_optimizer(key, params)
        assert opt.param_groups[0]["rounding"] == rounding
    opt = candidates.make_optimizer("ours-compensated", params)
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    assert opt.state[params[0]]["residual"].dtype == torch.bfloat16
