"""bfloat16 parameters: stochastic rounding (unbiased, tested statistically) and bf16 momentum."""

import math

import pytest
import torch

from adafactor import Adafactor, optimizer_state_bytes, state_bytes
from adafactor.equations import rounding_noise, stochastic_round

CASES = [
    (torch.bfloat16, 1.0 + 0.3 * 2**-7, 2.0**-7),
    (torch.bfloat16, -3.0 - 0.9 * 2**-6, 2.0**-6),
    (torch.bfloat16, 1e-3 * (1 + 0.5 * 2**-7), 2.0**-17),
    (torch.float16, 1.0 + 0.3 * 2**-10, 2.0**-10),
    (torch.float16, -300.0 - 0.7 * 2**-2, 2.0**-2),
    (torch.float16, 3e-6, 2.0**-24),  # below float16's normal range: steps of 2^-24
    (torch.float16, -(2.0**-14) * 0.37, 2.0**-24),
]


@pytest.mark.parametrize(("dtype", "value", "spacing"), CASES)
def test_stochastic_rounding_is_unbiased(dtype, value, spacing):
    n = 200_000
    noise = rounding_noise(12345, 7, torch.tensor(3.0), torch.arange(n))  # the step's own bits
    rounded = stochastic_round(torch.full((n,), value), dtype, noise).double()
    below = torch.tensor(value).to(dtype).double()  # round-to-nearest lands on a neighbour
    assert set(rounded.unique().tolist()) <= {
        below.item() - spacing,
        below.item(),
        below.item() + spacing,
    }
    # The mean of n Bernoulli roundings has standard deviation <= spacing / (2 sqrt(n)).
    assert abs(rounded.mean().item() - value) < 5 * spacing / (2 * math.sqrt(n))


def test_stochastic_rounding_keeps_representable_values():
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.cat([torch.randn(10_000), torch.randn(100) * 1e-6]).to(dtype)
        noise = rounding_noise(0, 0, torch.tensor(1.0), torch.arange(x.numel()))
        assert torch.equal(stochastic_round(x.float(), dtype, noise), x)


def test_float16_stochastic_rounding_never_overflows_where_nearest_does_not():
    x = torch.full((10_000,), 65510.0)  # between float16's largest, 65504, and 65520
    noise = rounding_noise(0, 0, torch.tensor(1.0), torch.arange(x.numel()))
    assert torch.equal(stochastic_round(x, torch.float16, noise), x.half())


def test_the_noise_is_uniform_over_its_16_bits_and_changes_with_every_input():
    n = 1 << 18
    noise = rounding_noise(99, 3, torch.tensor(5.0), torch.arange(n))
    counts = torch.bincount(noise >> 8, minlength=256).double()  # the top 8 of the 16 bits
    expected = n / 256
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 255 + 5 * math.sqrt(2 * 255)  # 255 degrees of freedom, 5 sigma
    assert torch.bincount(noise & 1, minlength=2).double().div(n).sub(0.5).abs().max() < 0.01
    base = noise[:1000]
    for other in (
        rounding_noise(98, 3, torch.tensor(5.0), torch.arange(1000)),  # seed
        rounding_noise(99, 4, torch.tensor(5.0), torch.arange(1000)),  # parameter
        rounding_noise(99, 3, torch.tensor(6.0), torch.arange(1000)),  # step
        rounding_noise(99, 3, torch.tensor(5.0), torch.arange(1000) + (1 << 32)),  # position
    ):
        assert (other != base).float().mean() > 0.99


def test_small_updates_survive_in_bfloat16():
    # An absolute step of 1e-5 on weights near 1 (bf16 spacing 2^-7 ~ 0.008): round-to-nearest
    # drops every update; stochastic rounding moves the weights by the right amount on average.
    torch.manual_seed(0)
    drift = {}
    for stochastic in (False, True):
        p = torch.nn.Parameter(torch.ones(100_000, dtype=torch.bfloat16))
        opt = Adafactor(
            [p],
            lr=1e-5,
            relative_step=False,
            scale_parameter=False,
            rounding="stochastic" if stochastic else "nearest",
        )
        for _ in range(20):
            p.grad = torch.ones_like(p)  # U = sign(G) = 1 each step: X moves by -1e-5
            opt.step()
        drift[stochastic] = (p.double() - 1.0).mean().item()
    assert drift[False] == 0.0
    # 20 steps of -1e-5; each weight's drift is a sum of +-2^-8/2^-7 jumps: the mean over 1e5
    # weights is within a few percent of -2e-4.
    assert drift[True] == pytest.approx(-2e-4, rel=0.05)


def test_bfloat16_momentum_halves_its_memory_and_still_trains():
    torch.manual_seed(0)
    x = torch.randn(256, 32)
    y = x @ (0.1 * torch.randn(32, 4))
    losses = {}
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(1)
        model = torch.nn.Linear(32, 4)
        opt = Adafactor(model.parameters(), beta1=0.9, momentum_dtype=dtype)
        for _ in range(200):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
        losses[dtype] = loss.item()
        assert opt.state[model.weight]["exp_avg"].dtype == (dtype or torch.float32)
        predicted = state_bytes(model.parameters(), beta1=0.9, momentum_dtype=dtype).adafactor
        assert optimizer_state_bytes(opt) == predicted
    assert losses[torch.bfloat16] < 0.5 * ((y - y.mean(0)) ** 2).mean().item()
    assert losses[torch.bfloat16] == pytest.approx(losses[None], rel=0.2)
