"""The optimizer against the float64 reference written from the paper (``reference.py``)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adafactor import Adafactor
from adafactor.presets import ADAM
from adafactor.reference import ReferenceAdafactor, ReferenceAdam
from helpers import examples, run_side_by_side, use_step_path, wide_gradient
from helpers import reference_option_sets as options
from helpers import shape_lists as shapes


def test_defaults_match_reference_to_float64_round_off_over_many_steps():
    gen = torch.Generator().manual_seed(0)
    params = [
        torch.randn(24, 17, generator=gen, dtype=torch.float64),  # factored matrix
        torch.randn(31, generator=gen, dtype=torch.float64),  # vector: Algorithm 5
        torch.randn(6, 5, 4, generator=gen, dtype=torch.float64),  # 3-D, factored over (6, 5)
        torch.tensor(0.7, dtype=torch.float64),  # scalar
    ]
    steps = [[wide_gradient(tuple(p.shape), gen) for p in params] for _ in range(300)]
    opt, ours, ref = run_side_by_side(params, steps)
    for p, r, x0 in zip(ours, ref.params, params):
        # 300 steps of O(10) flops each per element: a few hundred ulps at most.
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-15)
        assert not torch.equal(p.detach(), x0)  # every parameter moved from where it started
    # The factored 24x17 matrix keeps 24 + 17 second-moment numbers, nothing n x m.
    state = opt.state[ours[0]]
    assert state["exp_avg_sq_row"].numel() + state["exp_avg_sq_col"].numel() == 24 + 17
    assert ref.state_numbers(0) == 24 + 17
    assert int(state["step"]) == 300


def test_tall_matrices_match_reference():
    # Rows in multiples of tiling.ROW_BLOCKS (at least two blocks) take the blocked column
    # sums; 200 rows do not. Both must be the paper's statistics to float64 round-off.
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(256, 9), (200, 9)]]
    params.append(torch.randn(2, 192, 5, generator=gen, dtype=torch.float64))  # rows 192, A = 2
    steps = [[wide_gradient(tuple(p.shape), gen) for p in params] for _ in range(20)]
    _, ours, ref = run_side_by_side(params, steps)
    for p, r in zip(ours, ref.params):
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-15)


def test_first_step_by_hand():
    # A rank-one gradient G = a b^T is estimated exactly by R C / 1^T R (up to eps1), so
    # U = sign(G), RMS(U) = 1, and X_1 = X_0 - min(1e-2, 1) * max(1e-3, RMS(X_0)) * sign(G).
    x0 = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -4.0]], dtype=torch.float64)
    a = torch.tensor([3.0, -0.5], dtype=torch.float64)
    b = torch.tensor([1e-3, 2.0, -7.0], dtype=torch.float64)
    p = x0.clone().requires_grad_(True)
    p.grad = torch.outer(a, b)
    Adafactor([p]).step()
    rms_x0 = math.sqrt((x0**2).mean().item())
    expected = x0 - 1e-2 * rms_x0 * torch.outer(a, b).sign()
    torch.testing.assert_close(p.detach(), expected, rtol=1e-14, atol=0)


def test_clipping_by_hand():
    # First step, vector, beta2_1 = 0: V = G^2 + eps1, U = sign(G) (RMS 1). With d = 0.5 the
    # update is scaled by 0.5; with d = 2 it is left alone.
    for d, factor in ((0.5, 0.5), (2.0, 1.0), (None, 1.0)):
        p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        p.grad = torch.tensor([1.0, -3.0, 2e-5, 1e5], dtype=torch.float64)
        Adafactor([p], clip_threshold=d).step()
        # RMS(X_0) = 0, so alpha = eps2 * rho_1 = 1e-3 * 1e-2.
        torch.testing.assert_close(p.detach(), -1e-5 * factor * p.grad.sign(), rtol=1e-14, atol=0)


def test_adam_configuration_matches_paper_algorithm_1():
    # Adam = momentum on the gradient with bias correction, constant beta2 with bias
    # correction, no clipping, absolute step, no parameter scaling.
    gen = torch.Generator().manual_seed(1)
    for factored in (False, True):
        params = [
            torch.randn(9, 7, generator=gen, dtype=torch.float64),
            torch.randn(5, generator=gen, dtype=torch.float64),
        ]
        ours = [p.clone().requires_grad_(True) for p in params]
        opt = Adafactor(ours, lr=1e-3, **{**ADAM, "factored": factored})
        ref = ReferenceAdam(params, lr=1e-3, betas=(0.9, 0.999), eps=0.0, factored=factored)
        for _ in range(100):
            grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
            for p, g in zip(ours, grads):
                p.grad = g
            opt.step()
            ref.step(grads)
        for p, r in zip(ours, ref.params):
            torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-15)


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=st.lists(shapes, min_size=1, max_size=3),
    options=options,
    seed=st.integers(0, 2**16),
    steps=st.integers(1, 6),
)
def test_property_float64_matches_reference(shapes, options, seed, steps):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [
        [wide_gradient(s, gen) if torch.rand((), generator=gen) < 0.9 else None for s in shapes]
        for _ in range(steps)
    ]
    _opt, ours, ref = run_side_by_side(params, grads, **options)
    for p, r in zip(ours, ref.params):
        torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12)


def _float32_matches_reference(path, shape, options, seed):
    # float32 math has a relative error of ~1e-6 per operation; over 3 steps of O(10)
    # operations the parameters agree to well within 1e-4 of the step taken.
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_step_path(monkeypatch, path)
        gen = torch.Generator().manual_seed(seed)
        x0 = torch.randn(shape, generator=gen, dtype=torch.float64)
        grads = [[torch.randn(shape, generator=gen, dtype=torch.float64)] for _ in range(3)]
        _opt, ours, ref = run_side_by_side([x0.float()], grads, **options)
    moved = (ref.params[0] - x0).abs().max().item()
    err = (ours[0].detach().double() - ref.params[0]).abs().max().item()
    assert err <= 1e-4 * moved + 1e-6 * x0.abs().max().item()


FLOAT32 = dict(
    shape=st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple),
    options=options,
    seed=st.integers(0, 2**16),
)


@pytest.mark.parametrize("path", ["eager", "cpu-kernels"])
@settings(max_examples=examples(60), deadline=None)
@given(**FLOAT32)
def test_property_float32_matches_reference(path, shape, options, seed):
    _float32_matches_reference(path, shape, options, seed)


@settings(max_examples=examples(10), deadline=None)  # Triton's interpreter takes ~1 s a step
@given(**FLOAT32)
def test_property_float32_triton_kernels_match_reference(shape, options, seed):
    _float32_matches_reference("triton-kernels", shape, options, seed)


def test_the_chunked_eager_step_matches_the_reference(monkeypatch):
    # Tensors larger than a chunk step a few rows at a time (tiling.row_chunks); with chunks
    # of 64 elements every tensor here is cut into several, with rows split unevenly, and
    # the values must still be the paper's to float64 round-off. (float64 tensors always step
    # eagerly: the group kernels take 32- and 16-bit ones.)
    from adafactor import tiling

    monkeypatch.setattr(tiling, "CHUNK_NUMEL", 64)
    gen = torch.Generator().manual_seed(7)
    params = [
        torch.randn(s, generator=gen, dtype=torch.float64) for s in [(23, 17), (301,), (3, 11, 9)]
    ]
    steps = [[wide_gradient(tuple(p.shape), gen) for p in params] for _ in range(12)]
    for chosen in ({}, {"beta1": 0.9, "momentum_of": "gradient", "weight_decay": 0.1}):
        _, ours, ref = run_side_by_side(params, steps, **chosen)
        for p, r in zip(ours, ref.params):
            torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_match_reference_to_one_rounding(dtype, rounding):
    # State and math are float32; only the final write rounds to the parameter's dtype, so
    # each step lands within one rounding of the reference step taken from the same rounded
    # starting point: to nearest, half a step of the dtype (2^-8 relative for bf16, 2^-11 for
    # fp16); stochastically, to one of the two neighbours: a whole step.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 48, generator=gen).to(dtype)
    p = x.clone().requires_grad_(True)
    opt = Adafactor([p], rounding=rounding)
    ulp = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    ulp *= 2 if rounding == "stochastic" else 1
    for _ in range(5):
        g = torch.randn(64, 48, generator=gen)
        ref = ReferenceAdafactor([p.detach()])
        ref.second_moments[0].row = (
            opt.state[p]["exp_avg_sq_row"].double().squeeze(1) * 48
            if opt.state
            else ref.second_moments[0].row
        )
        ref.second_moments[0].col = (
            opt.state[p]["exp_avg_sq_col"].double().squeeze(0) * 64
            if opt.state
            else ref.second_moments[0].col
        )
        ref.t[0] = int(opt.state[p]["step"]) if opt.state else 0
        p.grad = g.to(dtype)
        opt.step()
        ref.step([g.to(dtype)])
        assert opt.state[p]["exp_avg_sq_row"].dtype == torch.float32
        err = (p.detach().double() - ref.params[0]).abs()
        assert (err <= ulp * ref.params[0].abs() + 1e-30).all()
