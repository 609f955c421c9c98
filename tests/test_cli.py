import pytest

from adafactor.cli import main


def test_memory_command_prints_the_table(capsys):
    assert main(["memory", "--model", "t5-small"]) == 0
    out = capsys.readouterr().out
    assert "60,506,624 parameters" in out
    assert "| Adafactor, defaults (no momentum) | 0.70 MiB | 0.15% |" in out


def test_demo_runs_and_adafactor_learns(capsys):
    from adafactor.experiments.demo import run_demo

    lines = []
    results = run_demo(steps=30, print_fn=lines.append)
    assert [r.name.split()[0] for r in results] == ["Adafactor", "Adam"]
    # Uniform guessing over ~75 characters costs ln(75) = 4.3 nats; 30 steps get well below.
    assert results[0].train_loss < 3.8
    assert results[0].state_bytes < 0.05 * results[1].state_bytes
    assert any(line.startswith("| Adafactor (defaults) |") for line in lines)


def test_unknown_command_exits_with_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--steps", "0"], "--steps: must be at least 1, got 0"),
        (["demo", "--steps", "many"], "--steps: must be an integer, got 'many'"),
        (["demo", "--seed", "-1"], "--seed: must be at least 0, got -1"),
        (["reproduce", "--seeds", "0"], "--seeds: must be at least 1, got 0"),
        (["reproduce", "--seed", "-2"], "--seed: must be at least 0, got -2"),
        (["reproduce", "--jobs", "0"], "--jobs: must be at least 1, got 0"),
        (["reproduce", "--scale", "huge"], "--scale: invalid choice: 'huge'"),
    ],
)
def test_usage_mistakes_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def test_reproduce_into_a_file_exits_2(tmp_path, capsys):
    path = tmp_path / "results.txt"
    path.write_text("not a directory")
    assert main(["reproduce", "--scale", "tiny", "--out", str(path)]) == 2
    assert f"--out '{path}' is a file, not a directory" in capsys.readouterr().err
    assert path.read_text() == "not a directory"


def test_reproduce_below_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "reproduction"
    assert main(["reproduce", "--scale", "tiny", "--out", str(out)]) == 2
    assert f"cannot create the output directory '{out}'" in capsys.readouterr().err


def test_reproduce_unknown_run_or_regime_exits_2(tmp_path, capsys):
    args = ["reproduce", "--scale", "tiny", "--out", str(tmp_path)]
    assert main([*args, "--runs", "sgd"]) == 2
    assert "unknown run(s) ['sgd']" in capsys.readouterr().err
    assert main([*args, "--regime", "paper"]) == 2
    assert "unknown regime 'paper'; regimes of the search: lr3e-3" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was started


def test_demo_steps_are_checked_when_called_directly():
    from adafactor.experiments.demo import run_demo

    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        run_demo(steps=0, print_fn=lambda _: None)
