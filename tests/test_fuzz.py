"""Hypothesis fuzzing over shapes (0- and 1-size dims, up to 5-D), dtypes, option combinations
and gradient magnitudes, checking invariants after every run:

* parameters and state finite; state keys, shapes and dtypes as the layout says, and its bytes
  as ``state_bytes`` predicts;
* step counts and skip counts exact when NaN faults are injected;
* agreement with the float64 reference (``reference.py``) in float64;
* the clipping bound: with an absolute step ρ = η and no scaling, momentum or decay, the
  applied change is ΔX = −η·Û, so RMS(ΔX)/η ≤ d.

Example counts are set explicitly (``max_examples``) and reported in docs/reliability.md.
"""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adafactor import Adafactor, optimizer_state_bytes, state_bytes
from helpers import examples, magnitudes, option_sets, reference_option_sets, run_side_by_side

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# Decimal exponents of the largest |X| and |G| each dtype can take within the documented
# bounds: float32/bfloat16 gradients stay below 1.8e19 (G² finite in float32), params below
# ~1e20; float16 tops out at 65504, so its params stay ≤ 1e3, where a few unclipped steps of
# α = 0.3·RMS(X) cannot leave the range (a new value beyond it is written as ±inf).
X_EXPONENTS = {
    torch.float64: (-20, 20),
    torch.float32: (-20, 20),
    torch.bfloat16: (-20, 20),
    torch.float16: (-4, 3),
}
G_EXPONENTS = {
    torch.float64: (-20, 19),
    torch.float32: (-20, 18),
    torch.bfloat16: (-20, 18),
    torch.float16: (-7, 4),
}
# Unit round-off of each dtype: the final write of X rounds by at most this, relative.
ROUND_OFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.bfloat16: 2.0**-8,
    torch.float16: 2.0**-11,
}

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=5).map(tuple)  # up to 5-D
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}


@st.composite
def runs(draw):
    dtype = draw(st.sampled_from(DTYPES))
    opts = draw(option_sets)
    low, high = X_EXPONENTS[dtype]
    if opts.get("weight_decay") and opts.get("weight_decay_scale") == "alpha":
        # X ← X − λ·α·X with α = ρ·RMS(X): the decay factor λ·ρ·RMS(X) grows with the
        # parameter's scale and, beyond 1, flips and grows X every step (HF's and timm's
        # convention, divergent by construction). Keep λ·ρ·RMS(X) ≤ 0.1·0.3·1 < 1.
        high = 0
    return {
        "dtype": dtype,
        "shapes": draw(st.lists(shapes, min_size=1, max_size=3)),
        "options": opts,
        "x_exp": draw(st.integers(low, high)),
        "g_exps": draw(st.lists(st.integers(*G_EXPONENTS[dtype]), min_size=1, max_size=4)),
        "faults": draw(st.lists(st.booleans(), min_size=4, max_size=4)),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=examples(250), **SETTINGS)
@given(run=runs())
def test_invariants_hold_over_shapes_dtypes_options_and_magnitudes(run):
    dtype, opts = run["dtype"], run["options"]
    gen = torch.Generator().manual_seed(run["seed"])
    params = [
        magnitudes(s, 10.0 ** run["x_exp"], gen, dtype).requires_grad_() for s in run["shapes"]
    ]
    opt = Adafactor(params, **opts)
    injected = [0] * len(params)
    for t, g_exp in enumerate(run["g_exps"]):
        for i, p in enumerate(params):
            p.grad = magnitudes(p.shape, 10.0**g_exp, gen, dtype)
            # A NaN in the first parameter's gradient when the draw says so (if it has any).
            if i == 0 and run["faults"][t] and p.numel():
                p.grad.view(-1)[0] = float("nan")
                injected[0] += 1
        opt.step()
    for i, p in enumerate(params):
        assert p.dtype == dtype and torch.isfinite(p).all()
        state = opt.state[p]
        layout = opt.layout(p, opt.param_groups[0])
        assert set(state) == set(layout)
        for key, spec in layout.items():
            assert tuple(state[key].shape) == spec.shape and state[key].dtype == spec.dtype, key
            assert torch.isfinite(state[key]).all(), key
        assert int(state["nonfinite_skips"]) == injected[i]
        assert int(state["step"]) == len(run["g_exps"]) - injected[i]
    assert optimizer_state_bytes(opt) == state_bytes(params, **opts).adafactor


@settings(max_examples=examples(120), **SETTINGS)
@given(
    shapes=st.lists(shapes, min_size=1, max_size=3),
    options=reference_option_sets,
    x_exp=st.integers(-20, 20),
    g_exp=st.integers(-20, 19),
    seed=st.integers(0, 2**16),
    steps=st.integers(1, 4),
)
def test_float64_matches_the_reference_at_any_scale(shapes, options, x_exp, g_exp, seed, steps):
    # test_reference covers unit-scale params with gradients spanning 1e-12..1e12 up to 4-D;
    # here whole tensors sit at 1e-20..1e20, up to 5-D. Tolerance as there (a few hundred ulps
    # over a few steps), relative to the largest magnitude a parameter passed through: a step
    # that moves 1e-12 to -3e-3 and the next back to 1e-12 keeps the round-off of 3e-3.
    gen = torch.Generator().manual_seed(seed)
    params = [magnitudes(s, 10.0**x_exp, gen) for s in shapes]
    grads = [[magnitudes(s, 10.0**g_exp, gen) for s in shapes] for _ in range(steps)]
    largest = [p.abs().max().item() if p.numel() else 0.0 for p in params]
    for n in range(1, steps + 1):
        _, ours, ref = run_side_by_side(params, grads[:n], **options)
        largest = [
            max(a, r.abs().max().item() if r.numel() else 0.0) for a, r in zip(largest, ref.params)
        ]
    for p, r, scale in zip(ours, ref.params, largest):
        torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12 * scale)


@settings(max_examples=examples(150), **SETTINGS)
@given(
    shape=shapes,
    dtype=st.sampled_from(DTYPES),
    d=st.sampled_from([0.05, 0.3, 1.0, 2.0]),
    lr=st.sampled_from([1e-3, 0.1]),
    factored=st.booleans(),
    factor_dims=st.sampled_from(["largest", "last"]),
    g_exps=st.lists(st.integers(-6, 4), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_clipping_bounds_every_applied_step(
    shape, dtype, d, lr, factored, factor_dims, g_exps, seed
):
    gen = torch.Generator().manual_seed(seed)
    p = magnitudes(shape, 1.0, gen, dtype).requires_grad_()
    opt = Adafactor(
        [p],
        lr=lr,
        clip_threshold=d,
        relative_step=False,
        scale_parameter=False,
        factored=factored,
        factor_dims=factor_dims,
        diagnostics=True,
    )
    for g_exp in g_exps:
        before = p.detach().double().clone()
        p.grad = magnitudes(shape, 10.0**g_exp, gen, dtype)
        opt.step()
        if p.numel() == 0:
            continue
        change = p.detach().double() - before
        rms = change.pow(2).mean().sqrt().item()
        # ΔX = −η·Û with RMS(Û) ≤ d; the float32 math adds ~1e-6 relative, and the final
        # rounding of X to its dtype at most one unit in the last place of the largest |X|
        # (stochastic rounding, 16-bit's default, goes either way: twice the unit round-off).
        largest = max(p.detach().double().abs().max().item(), before.abs().max().item())
        stochastic = dtype in (torch.bfloat16, torch.float16)
        rounding = (2 if stochastic else 1) * ROUND_OFF[dtype] * largest
        assert rms <= lr * d * (1 + 1e-5) + rounding
        # And when clipping fired, the step is exactly at the bound (up to the same slack).
        if opt.diagnostics[p]["update_rms"] > d and dtype in (torch.float32, torch.float64):
            assert math.isclose(rms, lr * d, rel_tol=1e-5, abs_tol=rounding)
