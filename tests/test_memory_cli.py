"""``adafactor memory --model ...`` and ``memory_rows``: known shapes, transformers config
classes on the meta device, import paths; the bf16-momentum row; exit codes."""

from __future__ import annotations

import pytest
import torch

from adafactor import Adafactor, optimizer_state_bytes
from adafactor.cli import main
from adafactor.memory import memory_rows
from adafactor.model_shapes import model_parameters


@pytest.mark.parametrize(
    "config, count", [("T5Config", "60,506,624"), ("GPT2Config", "124,439,808")]
)
def test_a_transformers_config_class_is_built_on_meta(config, count, capsys):
    pytest.importorskip("transformers")
    assert main(["memory", "--model", config]) == 0
    out = capsys.readouterr().out
    # The same counts as the hand-written shapes of t5-small and gpt2-small.
    assert f"{count} parameters" in out
    assert "| Adafactor, beta1=0.9, bf16 momentum |" in out
    assert "Saved against Adam / AdamW:" in out
    assert all(p.is_meta for p in model_parameters(config))


def test_an_import_path_is_called_on_meta(capsys):
    assert main(["memory", "--model", "torch.nn:Transformer"]) == 0
    with torch.device("meta"):
        expected = sum(p.numel() for p in torch.nn.Transformer().parameters())
    assert f"{expected:,} parameters" in capsys.readouterr().out


def test_rows_agree_with_the_state_a_real_optimizer_keeps():
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.LayerNorm(128))
    rows = dict(memory_rows(model.parameters()))
    numel = sum(p.numel() for p in model.parameters())
    measured = {}
    for name, options in (
        ("Adafactor, defaults (no momentum)", {}),
        ("Adafactor, beta1=0.9", {"beta1": 0.9}),
    ):
        opt = Adafactor(model.parameters(), **options)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        measured[name] = optimizer_state_bytes(opt)
    adam = torch.optim.Adam(model.parameters())
    adam.step()
    assert rows["Adam / AdamW (m and v)"] == optimizer_state_bytes(adam)
    assert (
        rows["Adafactor, defaults (no momentum)"] == measured["Adafactor, defaults (no momentum)"]
    )
    assert rows["Adafactor, beta1=0.9"] == measured["Adafactor, beta1=0.9"]
    # float32 momentum costs 4 bytes per element, bfloat16 momentum 2.
    defaults = rows["Adafactor, defaults (no momentum)"]
    assert rows["Adafactor, beta1=0.9"] == defaults + 4 * numel
    assert rows["Adafactor, beta1=0.9, bf16 momentum"] == defaults + 2 * numel


@pytest.mark.parametrize(
    "model, message",
    [
        ("nope", "unknown model 'nope'"),
        ("NoSuchConfig", "no config class 'NoSuchConfig'"),
        ("no_such_module:f", "cannot import 'no_such_module:f'"),
        ("torch:float32", "gave neither an nn.Module nor tensors"),
        ("torch.nn:Linear", "'torch.nn:Linear' must be callable without arguments"),
    ],
)
def test_bad_models_exit_2_with_a_message(model, message, capsys):
    if model.endswith("Config"):
        pytest.importorskip("transformers")
    assert main(["memory", "--model", model]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""


def test_memory_help_lists_the_model_forms(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["memory", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "T5Config" in out and "module:callable" in out


def test_whole_training_memory_per_mode_says_activations_are_excluded(capsys):
    assert main(["memory", "--model", "gpt2-small"]) == 0
    out = capsys.readouterr().out
    assert "Whole training (float32 parameters)" in out and "Not counted: activations" in out
    # 124,439,808 float32 parameters; the largest gradient is the 50257×768 embedding's.
    assert "| AdamW | 474.70 MiB | 474.70 MiB (all) | 949.40 MiB | 1,898.80 MiB | 100.00% |" in out
    assert "| Adafactor | 474.70 MiB | 474.70 MiB (all) | 1.23 MiB |" in out
    assert "| Adafactor, step_in_backward=True | 474.70 MiB | 147.24 MiB (the largest) |" in out


def test_dtype_halves_parameters_gradients_and_adamw_state_not_adafactor_statistics(capsys):
    assert main(["memory", "--model", "gpt2-small", "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "Whole training (bfloat16 parameters)" in out
    assert "| AdamW | 237.35 MiB | 237.35 MiB (all) | 474.70 MiB |" in out
    in_backward = "| Adafactor, step_in_backward=True | 237.35 MiB | 73.62 MiB (the largest) |"
    assert in_backward + " 1.23 MiB |" in out
