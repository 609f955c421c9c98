import math

import pytest
import torch

from adafactor.schedules import (
    bias_corrected_beta2,
    decay_rate_beta2,
    relative_step_size,
    rho,
    second_moment_decay,
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
    assert second_moment_decay(t, 0.8, None).item() == pytest.approx(1 - 7**-0.8, rel=1e-15)
    adam = 0.9 * (1 - 0.9**6) / (1 - 0.9**7)  # Section 7.1, by hand
    assert second_moment_decay(t, 0.8, 0.9).item() == pytest.approx(adam, rel=1e-15)


def test_beta2_cap_bounds_the_decay():
    t = torch.tensor([1.0, 10.0, 1e4], dtype=torch.float64)
    capped = second_moment_decay(t, 0.8, None, cap=0.99)
    expected = [0.0, 1 - 10**-0.8, 0.99]  # 1 - 10^-0.8 = 0.8415 < 0.99 < 1 - 1e4^-0.8
    torch.testing.assert_close(
        capped, torch.tensor(expected, dtype=torch.float64), rtol=1e-15, atol=0
    )


def test_decay_offset_restarts_the_schedule_and_never_divides_by_zero():
    t = torch.arange(1, 9, dtype=torch.float64)
    shifted = second_moment_decay(t, 0.8, None, offset=3)
    # Up to t = offset + 1 the schedule sits at its first value, 0; then 1 - (t - 3)^-0.8.
    expected = [0.0, 0.0, 0.0, 0.0] + [1 - k**-0.8 for k in (2, 3, 4, 5)]
    torch.testing.assert_close(
        shifted, torch.tensor(expected, dtype=torch.float64), rtol=1e-15, atol=0
    )
    adam = second_moment_decay(t, 0.8, 0.999, offset=3)
    assert adam[:4].tolist() == [0.0] * 4 and bool(adam.isfinite().all())


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
    assert rho(t, 1e-2, True, False).item() == 1e-2
    assert rho(t, 1.0, True, False).item() == 0.5  # 1/sqrt(4) binds
    assert rho(t, 3e-4, False, False).item() == 3e-4
