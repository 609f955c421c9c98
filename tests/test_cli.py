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
