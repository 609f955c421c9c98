"""A parameter of more than 2³¹ elements: every index of the C kernels is 64-bit, so the
default step equals the eager one there too. 4 GiB a bfloat16 copy and ~14 GiB in all, over a
minute on 2 cores: left out of the quick suite (``pytest -m huge`` runs it). The Triton kernels'
offsets are 64-bit as well, but the interpreter would take hours over 2³¹ elements."""

from __future__ import annotations

import pytest
import torch

from adafactor import Adafactor
from helpers import use_step_path

pytestmark = pytest.mark.huge

ROWS, COLS = 65_537, 32_768  # 2,147,516,416 elements: 2³¹ + 32,768


def _filled(seed: int) -> torch.Tensor:
    """A bfloat16 tensor of normal values, made in slices (no float32 temporary of 8 GiB)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(ROWS, COLS, dtype=torch.bfloat16)
    for rows in range(0, ROWS, 4096):
        out[rows : rows + 4096] = torch.randn(min(4096, ROWS - rows), COLS, generator=gen)
    return out


def _stepped(monkeypatch, path: str, grad: torch.Tensor):
    use_step_path(monkeypatch, path)
    p = torch.nn.Parameter(_filled(seed=0))
    p.grad = grad
    opt = Adafactor([p])
    opt.step()
    p.grad = None
    return p, opt.state[p]


def test_more_than_2_to_the_31_elements_step_as_the_eager_step(monkeypatch):
    assert ROWS * COLS > 2**31
    grad = _filled(seed=1)
    grad[-1].mul_(1e3)  # the last row, past 2³¹: its statistics must land there
    eager, eager_state = _stepped(monkeypatch, "eager", grad)
    kernels, kernel_state = _stepped(monkeypatch, "cpu-kernels", grad)
    for key in ("exp_avg_sq_row", "exp_avg_sq_col"):
        torch.testing.assert_close(kernel_state[key], eager_state[key], rtol=1e-5, atol=0)
    assert kernel_state["exp_avg_sq_row"][-1] > 1e5 * kernel_state["exp_avg_sq_row"][0]
    assert int(kernel_state["step"]) == int(eager_state["step"]) == 1
    step = 2.0**-7 * 8  # one bfloat16 rounding step of values up to 8
    for rows in range(0, ROWS, 4096):
        a, b = kernels[rows : rows + 4096].float(), eager[rows : rows + 4096].float()
        assert (a - b).abs().max().item() <= step, rows
