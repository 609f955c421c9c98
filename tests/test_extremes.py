"""Extreme scales and degenerate inputs: no NaN, no Inf, no division by zero.

Params and gradients across 1e-20…1e+20 in float32 and across the float16/bfloat16 ranges,
gradients at the documented overflow bound, all-zero gradients for thousands of steps,
all-zero rows and columns, parameters without a gradient in some steps, frozen parameters,
and parameter groups added mid-training.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from adafactor import Adafactor
from adafactor.reference import ReferenceAdafactor
from helpers import magnitudes, run_side_by_side, use_step_path

FP32_PARAM_SCALES = [1e-20, 1e-10, 1.0, 1e10, 1e20]
# The largest is just under the documented bound: |G| ≲ 1.8e19 keeps G² finite in float32.
FP32_GRAD_SCALES = [1e-20, 1e-15, 1e-13, 1e-10, 1e-5, 1.0, 1e5, 1e10, 1e15, 1.5e19]

CONFIGS = {
    "default": {},
    "unfactored": {"factored": False},
    "absolute-unclipped": {
        "clip_threshold": None,
        "relative_step": False,
        "scale_parameter": False,
    },
    "eps2=0": {"eps": (1e-30, 0.0)},
    "momentum-decay": {"beta1": 0.9, "momentum_of": "gradient", "weight_decay": 0.1},
}


def assert_all_finite(opt, params):
    for p in params:
        assert torch.isfinite(p).all()
        for key, value in opt.state[p].items():
            assert torch.isfinite(value).all(), key
        assert int(opt.state[p]["nonfinite_skips"]) == 0


@pytest.mark.parametrize("path", ["eager", "cpu-kernels"])
@pytest.mark.parametrize("config", CONFIGS)
def test_fp32_params_and_grads_from_1e_minus20_to_1e20_stay_finite(monkeypatch, path, config):
    # Every parameter scale in one group (so that the group kernels take them together),
    # one group per gradient scale. The interpreted Triton kernels, too slow for this grid,
    # take the reference comparison below at every scale.
    use_step_path(monkeypatch, path)
    gen = torch.Generator().manual_seed(0)
    for g_scale in FP32_GRAD_SCALES:
        params = [
            magnitudes(s, x_scale, gen, torch.float32).requires_grad_()
            for x_scale in FP32_PARAM_SCALES
            for s in [(6, 5), (3, 4, 5), (9,)]
        ]
        opt = Adafactor(params, **CONFIGS[config])
        for _ in range(3):
            for p in params:
                p.grad = magnitudes(p.shape, g_scale, gen, torch.float32)
            opt.step()
        assert_all_finite(opt, params)
        assert all(int(opt.state[p]["step"]) == 3 for p in params)


@pytest.mark.parametrize("g_scale", FP32_GRAD_SCALES)
@pytest.mark.parametrize("config", ["default", "unfactored", "absolute-unclipped", "eps2=0"])
def test_fp32_extreme_scales_match_the_reference(step_path, config, g_scale):
    # float32 math has a relative error of ~1e-6 per operation; over 3 steps of O(10)
    # operations the parameters agree to well within 1e-4 of the distance moved, plus the
    # final rounding of X (2^-24 relative, bounded by 1e-6·max|X|). Same bound as
    # test_reference.test_property_float32_matches_reference. One tensor per parameter
    # scale, all in one group, so that the group kernels take them in one step.
    gen = torch.Generator().manual_seed(1)
    x0 = [magnitudes((6, 5), x_scale, gen, torch.float32) for x_scale in FP32_PARAM_SCALES]
    grads = [[magnitudes((6, 5), g_scale, gen, torch.float32) for _ in x0] for _ in range(3)]
    _, ours, ref = run_side_by_side(x0, grads, **CONFIGS[config])
    for x_scale, start, mine, theirs in zip(FP32_PARAM_SCALES, x0, ours, ref.params):
        moved = (theirs - start.double()).abs().max().item()
        err = (mine.detach().double() - theirs).abs().max().item()
        bound = 1e-4 * moved + 1e-6 * start.abs().max().item()
        assert err <= bound, f"|X|~{x_scale:g}, |G|~{g_scale:g}: error {err:.3g}, moved {moved:.3g}"


@pytest.mark.parametrize("factored", [True, False])
def test_float16_full_range(factored):
    # Params from the smallest subnormal (6e-8) to the largest finite float16 (65504), grads
    # likewise: all squares fit in the float32 state, so every step is taken.
    gen = torch.Generator().manual_seed(2)
    scales = [6e-8, 1e-4, 1.0, 1e2, 6e4]
    params, grads = [], []
    for x_scale in scales:
        for g_scale in scales:
            params.append(magnitudes((5, 4), x_scale, gen, torch.float16).requires_grad_())
            grads.append(magnitudes((5, 4), g_scale, gen, torch.float16))
    opt = Adafactor(params, factored=factored, beta1=0.9)
    for _ in range(5):
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    assert_all_finite(opt, params)
    for p in params:
        assert opt.state[p]["exp_avg"].dtype == torch.float32
        assert int(opt.state[p]["step"]) == 5


@pytest.mark.parametrize("factored", [True, False])
def test_bfloat16_params_from_1e_minus20_to_1e20(factored):
    gen = torch.Generator().manual_seed(3)
    params = []
    for x_scale in FP32_PARAM_SCALES:
        for g_scale in FP32_GRAD_SCALES:
            p = magnitudes((5, 4), x_scale, gen, torch.bfloat16).requires_grad_()
            p.grad = magnitudes((5, 4), g_scale, gen, torch.bfloat16)
            params.append(p)
    before = [p.detach().clone() for p in params]
    opt = Adafactor(params, factored=factored)
    opt.step()
    assert_all_finite(opt, params)
    # Every parameter moved by α = ρ_1·max(ε2, RMS(X)) times Û, whose RMS is at most 1
    # (clipping), so no element by more than α·√numel; 1.5× for bf16 rounding (2^-8 of |X|).
    for p, x in zip(params, before):
        alpha = 1e-2 * x.float().pow(2).mean().sqrt().clamp(min=1e-3)
        assert (p.float() - x.float()).abs().max() <= 1.5 * alpha * 5**0.5 * 4**0.5


def test_gradients_beyond_the_float32_bound_are_skipped_or_stepped_never_half_applied():
    # |G| = 1e20 > 1.8e19: G² overflows float32. The documented contract: the step is either
    # skipped (parameter and state untouched, counted in nonfinite_skips) or, where every
    # statistic still fits (a wide factored matrix keeps row and column *means* of G²,
    # 1e40 / 200 = 5e37 < 3.4e38), taken as the float64 reference takes it. Never a silent
    # mix: statistics committed and the step counted while the parameter does not move.
    shapes = [(6, 5), (30,), (200, 200)]
    params = [torch.nn.Parameter(torch.ones(s)) for s in shapes]
    grads = [torch.ones(s) for s in shapes]
    for g in grads:
        g.view(-1)[7] = 1e20
    opt = Adafactor(params)
    ref = ReferenceAdafactor([p.detach() for p in params])
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    ref.step(grads)
    for p, r in zip(params, ref.params):
        state = opt.state[p]
        assert torch.isfinite(p).all()
        if int(state["nonfinite_skips"]):
            assert torch.equal(p, torch.ones(p.shape)) and int(state["step"]) == 0
            assert all(not v.any() for k, v in state.items() if k.startswith("exp_avg"))
        else:
            # float32 against float64 on one step: 1e-4 of the distance moved (as above).
            moved = (r - 1.0).abs().max().item()
            err = (p.detach().double() - r).abs().max().item()
            assert err <= 1e-4 * moved, (
                f"shape {tuple(p.shape)}: moved {1 - p.min().item():g}, reference {moved:g}"
            )
    assert [int(opt.state[p]["nonfinite_skips"]) for p in params[:2]] == [1, 1]


ZERO_GRAD_CONFIGS = [
    {},
    {"factored": False},
    {"beta1": 0.9, "momentum_of": "gradient"},
    {"beta2": 0.999, "beta1": 0.9, "warmup_init": True},
    {"clip_threshold": None, "eps": (1e-30, 0.0)},
]


def test_thousands_of_all_zero_gradients():
    # G = 0: the statistics decay to ε1 > 0, U = 0/√ε1 = 0, and nothing moves or divides by
    # zero. With eps2 = 0 and X = 0, α = 0 and the step is 0·0. One group per configuration.
    gen = torch.Generator().manual_seed(6)
    groups = [
        {
            "params": [torch.nn.Parameter(torch.randn(shape, generator=gen) * scale)],
            **config,
        }
        for config, shape, scale in zip(
            ZERO_GRAD_CONFIGS, [(8, 6), (9,), (8, 6), (2, 3, 4), (2, 3, 4)], [1, 1, 1, 1, 0]
        )
    ]
    params = [p for g in groups for p in g["params"]]
    start = [p.detach().clone() for p in params]
    opt = Adafactor(groups)
    for _ in range(2000):
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
    for p, x in zip(params, start):
        assert torch.equal(p, x)
    assert_all_finite(opt, params)
    # A real gradient after the long silence gives a finite update of bounded size: V̂ ≈
    # (1 − β̂2_t)·G², so RMS(U) ≈ 1/√(1 − β̂2_t): t^0.4 ≈ 21 for decay_rate 0.8, and
    # 1/√(1 − 0.999) ≈ 31.6 for beta2 = 0.999 (measured: at most 29.5). Clipping then applies.
    for group in opt.param_groups:
        group["diagnostics"] = True
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    assert_all_finite(opt, params)
    for p in params:
        assert opt.diagnostics[p]["update_rms"] <= 32.0
        assert int(opt.state[p]["step"]) == 2001
    assert all(not torch.equal(p, x) for p, x in zip(params[:-1], start))
    assert torch.equal(params[-1], start[-1])  # X = 0 and eps2 = 0: α = 0, still finite


def test_all_zero_rows_and_columns_match_the_reference_and_stay_put():
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(7, 6, generator=gen, dtype=torch.float64)
    mask = torch.ones(7, 6, dtype=torch.float64)
    mask[[0, 3]] = 0.0  # two all-zero rows
    mask[:, [2, 5]] = 0.0  # two all-zero columns
    only_one = torch.zeros(5, 4, dtype=torch.float64)  # a single nonzero entry
    only_one[2, 1] = 3.0
    y0 = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    grads = [
        [torch.randn(7, 6, generator=gen, dtype=torch.float64) * mask, only_one] for _ in range(20)
    ]
    opt, ours, ref = run_side_by_side([x0, y0], grads)
    # Same bound as test_reference's float64 comparison: a few hundred ulps over 20 steps.
    for p, r in zip(ours, ref.params):
        torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-15)
        assert torch.isfinite(p).all()
    assert torch.equal(ours[0].detach()[mask == 0], x0[mask == 0])  # U = 0 exactly there
    assert torch.equal(ours[1].detach()[only_one == 0], y0[only_one == 0])
    for value in opt.state[ours[0]].values():
        assert torch.isfinite(value).all() and (value >= 0).all()


def test_a_missing_gradient_leaves_parameter_and_state_untouched():
    gen = torch.Generator().manual_seed(5)
    p = torch.nn.Parameter(torch.randn(6, 4, generator=gen))
    q = torch.nn.Parameter(torch.randn(5, generator=gen))
    opt = Adafactor([p, q], beta1=0.9, weight_decay=0.1, diagnostics=True)
    with_grad = 0
    for t in range(40):
        q.grad = torch.randn(5, generator=gen)
        p.grad = torch.randn(6, 4, generator=gen) if t % 3 == 0 else None
        before = (p.detach().clone(), copy.deepcopy(opt.state[p]))
        opt.step()
        if p.grad is None:
            assert torch.equal(p, before[0])
            assert all(torch.equal(v, before[1][k]) for k, v in opt.state[p].items())
        else:
            with_grad += 1
    assert int(opt.state[p]["step"]) == with_grad == 14
    assert int(opt.state[q]["step"]) == 40
    assert_all_finite(opt, [p, q])


def test_frozen_params_get_no_state_and_resume_cleanly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    model[0].weight.requires_grad_(False)  # frozen from the start, yet in the optimizer
    opt = Adafactor(model.parameters())
    x = torch.randn(16, 4)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    assert model[0].weight not in opt.state
    saved = copy.deepcopy(opt.state_dict())
    assert 0 not in saved["state"] and len(saved["state"]) == 3
    model[0].weight.requires_grad_(True)  # unfrozen: its state starts at step 1
    restored = Adafactor(model.parameters())
    restored.load_state_dict(saved)
    restored.zero_grad()
    model(x).pow(2).mean().backward()
    restored.step()
    assert int(restored.state[model[0].weight]["step"]) == 1
    assert int(restored.state[model[2].weight]["step"]) == 4
    assert_all_finite(restored, list(model.parameters()))


def test_group_added_mid_training_round_trips_and_resumes_bit_for_bit():
    def build():
        torch.manual_seed(0)
        body = torch.nn.Linear(6, 6)
        head = torch.nn.Linear(6, 3).to(torch.bfloat16)
        return body, head, Adafactor(body.parameters(), beta1=0.9)

    def run(body, head, opt, steps, start):
        for s in range(start, start + steps):
            x = torch.randn(8, 6, generator=torch.Generator().manual_seed(s))
            opt.zero_grad()
            out = head(torch.tanh(body(x)).to(torch.bfloat16)).float()
            out.pow(2).mean().backward()
            opt.step()

    body, head, opt = build()
    run(body, head, opt, 3, 0)  # the head gets gradients but is not optimized yet
    opt.add_param_group({"params": list(head.parameters()), "factored": False, "lr": 3e-3})
    run(body, head, opt, 3, 3)
    buffer = io.BytesIO()
    torch.save(
        {"body": body.state_dict(), "head": head.state_dict(), "opt": opt.state_dict()}, buffer
    )
    run(body, head, opt, 4, 6)

    buffer.seek(0)
    saved = torch.load(buffer)
    body2, head2, opt2 = build()
    body2.load_state_dict(saved["body"])
    head2.load_state_dict(saved["head"])
    opt2.add_param_group({"params": list(head2.parameters()), "factored": False, "lr": 3e-3})
    opt2.load_state_dict(saved["opt"])
    run(body2, head2, opt2, 4, 6)
    assert int(opt.state[head.weight]["step"]) == 7 and int(opt.state[body.weight]["step"]) == 10
    for a, b in zip(
        [*body.parameters(), *head.parameters()], [*body2.parameters(), *head2.parameters()]
    ):
        assert torch.equal(a, b)
        for key, value in opt.state[a].items():
            assert torch.equal(value, opt2.state[b][key]), key
