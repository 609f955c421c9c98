import math

import pytest
import torch

from adafactor.schedules import (
    bias_corrected_beta2,
    decay_rate_beta2,
    relative_step_size,
    second_moment_decay,
    step_size,
)

T = torch.arange(1, 20001, dtype=torch.float64)


def test_decay_rate_beta2_is_one_minus_t_to_minus_c():
    for c in (0.5, 0.8, 1.0):
        expected = torch.tensor([1 - t ** (-c) for t in range(1, 20001)], dtype=torch.float64)
        torch.testing.assert_close(decay_rate_beta2(T, c), expected, rtol=0, atol=1e-15)
    assert decay_rate_beta2(torch.tensor(1.0), 0.8).item() == 0.0


def test_decay_rate_one_is_plain_average():
    # beta2_t = 1 - 1/t makes V_t the mean of all G_t^2 so far.
    values = torch.rand(50, dtype=torch.float64)
    v = torch.tensor(0.0, dtype=torch.float64)
    for t, x in enumerate(values, start=1):
        b = decay_rate_beta2(torch.tensor(float(t), dtype=torch.float64), 1.0)
        v = b * v + (1 - b) * x
    assert v.item() == pytest.approx(values.mean().item(), rel=1e-13)


def test_bias_corrected_beta2_reproduces_adam_bias_correction():
    beta2 = 0.999
    values = torch.rand(300, dtype=torch.float64)
    v_adam, v_hat = 0.0, 0.0
    for t, x in enumerate(values.tolist(), start=1):
        v_adam = beta2 * v_adam + (1 - beta2) * x
        b = bias_corrected_beta2(torch.tensor(float(t), dtype=torch.float64), beta2).item()
        v_hat = b * v_hat + (1 - b) * x
        assert v_hat == pytest.approx(v_adam / (1 - beta2**t), rel=1e-10)


def test_second_moment_decay_picks_the_schedule():
    t = torch.tensor(7.0, dtype=torch.float64)
    assert second_moment_decay(t, 0.8, None) == decay_rate_beta2(t, 0.8)
    assert second_moment_decay(t, 0.8, 0.9) == bias_corrected_beta2(t, 0.9)


def test_relative_step_size_matches_paper():
    rho = relative_step_size(T, 1e-2, warmup_init=False)
    expected = torch.tensor(
        [min(1e-2, 1 / math.sqrt(t)) for t in range(1, 20001)], dtype=torch.float64
    )
    torch.testing.assert_close(rho, expected, rtol=1e-15, atol=0)
    # The paper's warm-up variant min(1e-6 t, 1/sqrt(t)); the lr cap of 1e-2 never binds.
    rho = relative_step_size(T, 1e-2, warmup_init=True)
    expected = torch.tensor(
        [min(1e-6 * t, 1 / math.sqrt(t)) for t in range(1, 20001)], dtype=torch.float64
    )
    torch.testing.assert_close(rho, expected, rtol=1e-15, atol=0)


def test_lr_is_the_cap_and_absolute_mode_is_lr():
    t = torch.tensor(4.0, dtype=torch.float64)
    assert step_size(t, 1e-2, True, False).item() == 1e-2
    assert step_size(t, 1.0, True, False).item() == 0.5  # 1/sqrt(4) binds
    assert step_size(t, 3e-4, False, False).item() == 3e-4
