"""Stacked parameters (``rms_per_slice``), the cap on β̂2_t and the offset of its schedule:
against independent computations (separate parameters, the float64 reference), on every step
path."""

from __future__ import annotations

import pytest
import torch

from adafactor import Adafactor
from adafactor.param_rules import param_groups
from helpers import run_side_by_side, wide_gradient

STACKED_OPTIONS = [
    {},
    {"beta1": 0.9, "weight_decay": 0.1, "weight_decay_scale": "alpha"},
    {"clip_threshold": 0.5, "beta1": 0.9, "momentum_of": "gradient"},
]


def _stacked_and_separate(experts, n, m, options, dtype, steps=5):
    """A stacked ``[E, n, m]`` parameter with ``rms_per_slice`` and ``E`` separate ``n×m``
    ones, stepped on the same gradients, each expert's scaled differently."""
    gen = torch.Generator().manual_seed(5)
    scales = torch.logspace(-3, 3, experts, dtype=torch.float64)[:, None, None]
    x0 = (torch.randn(experts, n, m, generator=gen, dtype=torch.float64) * scales).to(dtype)
    stacked = torch.nn.Parameter(x0.clone())
    separate = [torch.nn.Parameter(x0[e].clone()) for e in range(experts)]
    opts = (
        Adafactor([stacked], rms_per_slice=True, **options),
        Adafactor(separate, **options),
    )
    for _ in range(steps):
        g = (torch.randn(experts, n, m, generator=gen, dtype=torch.float64) * scales).to(dtype)
        stacked.grad = g.clone()
        for e, p in enumerate(separate):
            p.grad = g[e].clone()
        for opt in opts:
            opt.step()
    return stacked, separate


@pytest.mark.parametrize("options", STACKED_OPTIONS)
def test_a_stacked_parameter_steps_as_separate_ones_in_float64(options):
    # The statistics of a [E, n, m] tensor are per slice already; with rms_per_slice the
    # clipping and the parameter scale are too, so each expert moves exactly as it would
    # alone: float64 round-off only (the sums run in another order).
    stacked, separate = _stacked_and_separate(4, 9, 7, options, torch.float64)
    for e, p in enumerate(separate):
        torch.testing.assert_close(stacked[e].detach(), p.detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("options", STACKED_OPTIONS)
def test_a_stacked_parameter_steps_as_separate_ones_in_float32(step_path, options):
    # float32, on every path: a few ulps per operation over 5 steps.
    stacked, separate = _stacked_and_separate(4, 9, 7, options, torch.float32)
    for e, p in enumerate(separate):
        torch.testing.assert_close(stacked[e].detach(), p.detach(), rtol=1e-5, atol=0)


def test_without_rms_per_slice_one_expert_sets_every_experts_step():
    # The control: with the whole-tensor RMS the experts whose scale is far from the mean
    # move by a step size set by the others, and the two runs differ.
    gen = torch.Generator().manual_seed(5)
    scales = torch.tensor([1e-3, 1.0, 1e3], dtype=torch.float64)[:, None, None]
    x0 = torch.randn(3, 6, 5, generator=gen, dtype=torch.float64) * scales
    moved = {}
    for per_slice in (False, True):
        p = torch.nn.Parameter(x0.clone())
        opt = Adafactor([p], rms_per_slice=per_slice)
        p.grad = torch.randn(3, 6, 5, generator=gen, dtype=torch.float64)
        opt.step()
        moved[per_slice] = (p.detach() - x0).abs().amax(dim=(1, 2)) / scales.flatten()
    # Per slice, every expert moves by ~1e-2 of its own scale (α = ρ·RMS(X_e), |Û| ≤ ~1).
    assert torch.all((moved[True] > 1e-3) & (moved[True] < 0.1))
    # Whole tensor: RMS(X) is the large expert's, so the small one moves ~1e4 of its scale.
    assert moved[False][0] > 10.0


@pytest.mark.parametrize(
    "shape, options",
    [
        ((3, 10, 7), {}),
        ((2, 6, 5, 4), {"factor_dims": "last", "beta1": 0.9}),
        ((5, 4, 3, 2), {"weight_decay": 0.1, "weight_decay_scale": "alpha", "clip_threshold": 0.7}),
        ((11,), {}),  # not factored: the whole-tensor RMS
    ],
)
def test_rms_per_slice_matches_the_reference(step_path, shape, options):
    gen = torch.Generator().manual_seed(8)
    params = [torch.randn(shape, generator=gen, dtype=torch.float64).float()]
    grads = [[torch.randn(shape, generator=gen, dtype=torch.float64)] for _ in range(4)]
    _, ours, ref = run_side_by_side(params, grads, rms_per_slice=True, **options)
    moved = (ref.params[0] - params[0].double()).abs().max().item()
    err = (ours[0].detach().double() - ref.params[0]).abs().max().item()
    assert err <= 1e-4 * moved  # float32 against float64, as test_reference's bound


def test_rms_per_slice_changes_nothing_for_unfactored_tensors():
    gen = torch.Generator().manual_seed(9)
    x0 = torch.randn(40, generator=gen, dtype=torch.float64)
    runs = []
    for per_slice in (False, True):
        p = torch.nn.Parameter(x0.clone())
        opt = Adafactor([p], rms_per_slice=per_slice, clip_threshold=0.5)
        for _ in range(3):
            p.grad = torch.randn(
                40, generator=torch.Generator().manual_seed(1), dtype=torch.float64
            )
            opt.step()
        runs.append(p.detach())
    assert torch.equal(runs[0], runs[1])


def test_param_rules_switch_it_on_for_experts_only():
    model = torch.nn.Module()
    model.experts = torch.nn.Parameter(torch.randn(4, 8, 6))
    model.proj = torch.nn.Linear(6, 6)
    groups = param_groups(model, [(r"^experts$", {"rms_per_slice": True})])
    opt = Adafactor(groups, diagnostics=True)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    by_name = {name: group for group in opt.param_groups for name in group["param_names"]}
    assert by_name["experts"]["rms_per_slice"] and not by_name["proj.weight"]["rms_per_slice"]
    # Diagnostics carry one value per expert, and one for the other tensors.
    assert opt.diagnostics[model.experts]["step_size"].shape == (4,)
    assert opt.diagnostics[model.experts]["clipped_steps"].shape == (4,)
    assert opt.diagnostics[model.proj.weight]["update_rms"].shape == ()


@pytest.mark.parametrize(
    "options",
    [
        {"beta2_cap": 0.9},
        {"beta2_cap": 0.5, "beta2": 0.999},
        {"decay_offset": 3},
        {"decay_offset": 2, "beta2": 0.99, "beta1": 0.9, "momentum_of": "gradient"},
        {"beta2_cap": 0.95, "decay_offset": 5, "factored": False},
    ],
)
def test_the_cap_and_the_offset_match_the_reference(step_path, options):
    gen = torch.Generator().manual_seed(10)
    shapes = [(13, 9), (6,), (2, 5, 4)]
    params = [torch.randn(s, generator=gen, dtype=torch.float64).float() for s in shapes]
    grads = [[wide_gradient(s, gen) * 1e-4 for s in shapes] for _ in range(8)]
    _, ours, ref = run_side_by_side(params, grads, **options)
    for p, r, x0 in zip(ours, ref.params, params):
        moved = (r - x0.double()).abs().max().item()
        err = (p.detach().double() - r).abs().max().item()
        assert err <= 1e-4 * moved + 1e-6 * x0.abs().max().item()


def test_before_the_offset_the_statistics_restart_each_step():
    # With decay_offset = 3, β̂2 = 0 up to step 4: V̂_t = G_t² + ε1, so U_t = sign(G_t) for a
    # vector and the step is exactly ρ_t·max(ε2, RMS(X))·sign(G); then it decays again.
    p = torch.nn.Parameter(torch.full((5,), 2.0, dtype=torch.float64))
    opt = Adafactor([p], decay_offset=3, scale_parameter=False, relative_step=False, lr=0.1)
    g = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0], dtype=torch.float64)
    for t in range(1, 6):
        before = p.detach().clone()
        p.grad = g * (6 - t)  # shrinking: any memory of earlier steps makes |U| < 1
        opt.step()
        step = before - p.detach()
        if t <= 4:
            torch.testing.assert_close(step, 0.1 * g.sign(), rtol=1e-12, atol=0)
        else:  # β̂2_5 = 1 − 2^−0.8: V̂ = 0.43·(2G)² + 0.57·G², so |U_5| = 1/√2.28 = 0.66
            beta = 1 - 2**-0.8
            torch.testing.assert_close(step, 0.1 * g.sign() / (1 + 3 * beta) ** 0.5)
