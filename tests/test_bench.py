"""``adafactor.bench``: a tiny run produces the table, the JSON and the chart, with ratios that
agree with the medians. No assertion on absolute times."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from adafactor import bench

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


def test_outputs_exist(quick_run, capsys):
    for name in ("results.json", "table.md", "chart.png"):
        assert (quick_run / name).stat().st_size > 0
    assert (quick_run / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_and_ratios(quick_run):
    report = json.loads((quick_run / "results.json").read_text())
    rows = {r["candidate"]: r for r in report["results"]}
    assert set(rows) == set(CANDIDATES)
    assert report["copy_bandwidth_bytes_per_s"] > 0
    assert report["sets"]["256x128"]["numel"] == 256 * 128
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["set"] == "256x128" and row["dtype"] == "fp32"
        assert len(row["step_ms"]) == 3
        assert row["median_ms"] > 0 and row["params_finite"]
        assert row["peak_transient_bytes"] >= 0
    ours, torch_af, adamw = rows["ours-eager"], rows["torch"], rows["adamw-foreach"]
    # The only peer Adafactor here is torch's: every ratio is a ratio of medians of this run.
    assert ours["fastest_peer"] == "torch"
    assert ours["x_fastest_peer"] == pytest.approx(ours["median_ms"] / torch_af["median_ms"])
    assert ours["ratios"]["adamw-foreach"] == pytest.approx(ours["median_ms"] / adamw["median_ms"])
    assert torch_af["x_fastest_peer"] == pytest.approx(1.0)
    assert ours["x_adamw_fused"] is None  # not run
    floor = ours["floor"]
    assert floor["adafactor_bytes"] == 5 * 256 * 128 * 4
    assert floor["adafactor_exact_clip_bytes"] == 6 * 256 * 128 * 4
    assert floor["adamw_bytes"] == 7 * 256 * 128 * 4
    assert ours["x_floor"] == pytest.approx(ours["median_ms"] / floor["adafactor_ms"])
    assert adamw["x_floor"] == pytest.approx(adamw["median_ms"] / floor["adamw_ms"])
    # State: ours keeps 256 + 128 statistics (+ counters); AdamW m and v.
    assert ours["state_bytes"] < 4 * 1024
    assert adamw["state_bytes"] >= 2 * 256 * 128 * 4


def test_table_has_every_row(quick_run):
    table = (quick_run / "table.md").read_text()
    for label in ("adafactor (eager)", "torch.optim.Adafactor", "AdamW (foreach)"):
        assert f"| 256x128 | fp32 | {label} |" in table


def test_missing_peer_is_reported_not_fatal(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "_installed", lambda candidate: candidate.key != "hf")
    monkeypatch.setattr(bench, "copy_bandwidth", lambda: 1e10)
    monkeypatch.setattr(bench, "chart", lambda rows, path: path.write_bytes(b""))
    assert bench.main(["--quick", "--candidates", "hf", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert row["status"] == "not installed"
    assert "not installed" in (tmp_path / "table.md").read_text()


def test_unknown_set_is_an_error(tmp_path, capsys):
    assert bench.main(["--sets", "nonsense", "--out", str(tmp_path)]) == 2
    assert "unknown parameter set" in capsys.readouterr().err
