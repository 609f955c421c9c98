"""How a 16-bit parameter is written (``rounding``): to nearest, stochastically, or compensated,
with a residual of the parameter's dtype in the state that carries what rounding dropped."""

from __future__ import annotations

import pytest
import torch

from adafactor import Adafactor
from helpers import snapshot

SIXTEEN = [torch.bfloat16, torch.float16]


def _ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype``'s values around each element of float32 ``x`` (float16's
    subnormals, below 2⁻¹⁴, are 2⁻²⁴ apart; float32's, below 2⁻¹²⁶, 2⁻¹⁴⁹)."""
    bits, least = {
        torch.bfloat16: (7, 2.0**-133),
        torch.float16: (10, 2.0**-24),
        torch.float32: (23, 2.0**-149),
    }[dtype]
    return torch.exp2(torch.floor(torch.log2(x.abs().clamp(min=1e-30))) - bits).clamp(min=least)


def _train(dtype, rounding, steps, value=None, lr=1e-3, seed=0, grads=None, **options):
    """``steps`` steps of a parameter of ``dtype``; gradients rounded to ``grads`` (default
    ``dtype``), so that a float32 run can take the 16-bit run's gradients."""
    gen = torch.Generator().manual_seed(seed)
    x = value if value is not None else torch.randn(24, 16, generator=gen)
    p = torch.nn.Parameter(x.to(dtype, copy=True))
    opt = Adafactor([p], lr=lr, relative_step=False, rounding=rounding, **options)
    for _ in range(steps):
        p.grad = torch.randn(p.shape, generator=gen).to(grads or dtype).to(dtype)
        opt.step()
    return p, opt


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_x_plus_r_is_the_float32_step_to_the_precision_of_r(step_path, dtype):
    # One step from a residual of zero: the float32 step of the same values, written as the
    # nearest 16-bit value plus what that dropped, to within r's own rounding and a unit in
    # float32's last place of the step and of X_t (the kernels add up R_t and C_t in another
    # order than the eager step, which may round the step's last bit the other way; both are
    # at most |X_{t−1}| + |X_t|, whose unit bounds theirs).
    gen = torch.Generator().manual_seed(1)
    value = torch.randn(24, 16, generator=gen).to(dtype).float()
    p, opt = _train(dtype, "compensated", 1, value)
    exact, _ = _train(torch.float32, "nearest", 1, value, grads=dtype, fused=False)
    r = opt.state[p]["residual"]
    assert r.dtype == dtype and r.shape == p.shape
    assert torch.equal(p, exact.detach().to(dtype))  # the parameter: exact's nearest
    carried = p.float() + r.float()
    bound = _ulp(r.float(), dtype) / 2 + 2 * _ulp(value.abs() + exact.detach().abs(), torch.float32)
    assert (carried - exact.detach()).abs().le(bound).all()
    assert r.abs().gt(0).any()


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_compensated_16_bit_training_follows_float32_where_nearest_stalls(dtype):
    # Steps of ~1e-3 of the weights, below half a bfloat16 step: to nearest most are lost.
    gen = torch.Generator().manual_seed(0)
    value = torch.randn(24, 16, generator=gen).to(dtype).float()
    exact, _ = _train(torch.float32, "nearest", 60, value, grads=dtype, fused=False)
    errors = {}
    for rounding in ("nearest", "compensated"):
        p, opt = _train(dtype, rounding, 60, value)
        carried = p.float() + opt.state[p].get("residual", torch.zeros(())).float()
        errors[rounding] = (carried - exact.detach()).abs().max().item()
    assert errors["compensated"] < errors["nearest"] / 20, errors


def test_a_skipped_step_leaves_parameter_and_residual_bit_for_bit(step_path):
    p, opt = _train(torch.bfloat16, "compensated", 3)
    snap = snapshot(opt, [p])
    p.grad = torch.full_like(p, float("nan"))
    opt.step()
    values, state = snap
    assert torch.equal(p, values[0])
    assert torch.equal(opt.state[p]["residual"], state["state"][0]["residual"])
    assert int(opt.state[p]["nonfinite_skips"]) == 1


def test_float32_parameters_keep_no_residual():
    p, opt = _train(torch.float32, "compensated", 2)
    assert "residual" not in opt.state[p]


def test_a_checkpoint_without_residual_loads_with_zero_and_switching_off_folds_it():
    p, opt = _train(torch.bfloat16, "nearest", 2)
    saved = opt.state_dict()
    q = torch.nn.Parameter(p.detach().clone())
    compensated = Adafactor([q], lr=1e-3, relative_step=False, rounding="compensated")
    compensated.load_state_dict(saved)  # the saved options come back: rounding="nearest"
    compensated.param_groups[0]["rounding"] = "compensated"  # from here on; residual 0
    q.grad = torch.randn(q.shape).bfloat16()
    compensated.step()
    r = compensated.state[q]["residual"]
    assert r.abs().gt(0).any()
    carried = q.float() + r.float()
    # Switched to nearest: the residual is folded into the weights, nothing lost.
    compensated.param_groups[0]["rounding"] = "nearest"
    q.grad = torch.zeros_like(q)
    compensated.step()
    assert "residual" not in compensated.state[q]
    assert torch.equal(q.detach(), carried.bfloat16())


def test_stochastic_rounding_is_an_alias_of_rounding_stochastic():
    results = []
    for options in ({"stochastic_rounding": True}, {"rounding": "stochastic"}):
        torch.manual_seed(0)
        p, _ = _train(
            torch.bfloat16,
            options.get("rounding", "nearest"),
            2,
            **{k: v for k, v in options.items() if k != "rounding"},
        )
        results.append(p.detach())
    assert torch.equal(*results)
    with pytest.raises(ValueError, match='contradicts rounding="compensated"'):
        Adafactor(
            [torch.nn.Parameter(torch.zeros(2))], stochastic_rounding=True, rounding="compensated"
        )


def _stochastic_run(seed, in_backward=False):
    torch.manual_seed(3)  # the initial weights
    gen = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    model = model.to(torch.bfloat16)
    opt = Adafactor(
        model.parameters(),
        rounding="stochastic",
        rounding_seed=seed,
        fused=False,
        step_in_backward=in_backward,
    )
    for _ in range(4):
        x = torch.randn(8, 16, generator=gen).bfloat16()
        model(x).float().square().mean().backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_the_same_rounding_seed_gives_the_same_run_in_either_mode():
    # The bits are a hash of seed, parameter, step and element: not of the order parameters
    # step in, which differs inside the backward pass.
    ordinary = _stochastic_run(7)
    assert all(torch.equal(p, q) for p, q in zip(ordinary, _stochastic_run(7)))
    assert all(torch.equal(p, q) for p, q in zip(ordinary, _stochastic_run(7, in_backward=True)))
    assert not all(torch.equal(p, q) for p, q in zip(ordinary, _stochastic_run(8)))


def test_the_rounding_seed_is_torchs_seed_saved_with_the_groups_and_draws_nothing():
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = Adafactor([torch.nn.Parameter(torch.zeros(2))])
    assert torch.equal(torch.get_rng_state(), before)  # the script's random numbers unmoved
    b = Adafactor([torch.nn.Parameter(torch.zeros(2))])
    seed = a.param_groups[0]["rounding_seed"]
    assert seed == 1234 == b.param_groups[0]["rounding_seed"]
    assert a.state_dict()["param_groups"][0]["rounding_seed"] == seed
    torch.manual_seed(99)
    assert Adafactor([torch.nn.Parameter(torch.zeros(2))]).param_groups[0]["rounding_seed"] == 99


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_nearest_writes_the_nearest_value_of_the_float32_step_on_every_path(step_path, dtype):
    gen = torch.Generator().manual_seed(4)
    value = torch.randn(24, 16, generator=gen).to(dtype).float()
    p, _ = _train(dtype, "nearest", 1, value)
    exact, _ = _train(torch.float32, "nearest", 1, value, grads=dtype, fused=False)
    error = (p.float() - exact.detach()).abs()
    # Half a step of the dtype, and the kernels' float32 difference from the eager step.
    assert (error <= _ulp(exact.detach(), dtype) / 2 + 1e-5 * exact.detach().abs()).all()


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_stochastic_is_the_default_for_16_bit_parameters_and_moves_small_updates(step_path, dtype):
    # Steps of 1e-4 on weights near 1: below half a step of either dtype (bfloat16's values
    # there are 2⁻⁸ apart, float16's 2⁻¹¹). ~2.6% of bfloat16's elements move per step: over
    # 10,000 elements and 10 steps the mean's relative spread is ~2% (the rounding seed is
    # torch's, which varies with test order).
    moved = {}
    for rounding in ("nearest", None):
        p = torch.nn.Parameter(torch.ones(10_000, dtype=dtype))
        options = {} if rounding is None else {"rounding": rounding}
        opt = Adafactor([p], lr=1e-4, relative_step=False, scale_parameter=False, **options)
        for _ in range(10):
            p.grad = torch.ones_like(p)
            opt.step()
        moved[rounding] = (p.double() - 1.0).mean().item()
    assert moved["nearest"] == 0.0
    assert moved[None] == pytest.approx(-1e-3, rel=0.1)
