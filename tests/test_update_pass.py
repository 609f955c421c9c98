"""The group kernels' pass for Σ U_t² (phase 2), left out where nothing reads Σ U_t² but
whether it is finite (no clipping, no diagnostics) and a bound from the statistics proves it
finite, on both backends (C; Triton, run here by its interpreter): a step then reads each
element 5 times in place of 6. Left out or not, the step is the eager step's, down to which
tensors are skipped as non-finite."""

from __future__ import annotations

import pytest
import torch

from adafactor import Adafactor
from adafactor.kernels.group import PlanCache
from adafactor.options import DEFAULTS, Hyperparameters
from adafactor.step import FastPath, group_step
from helpers import fresh_entry, interpreted_triton_backend, triton_interpreted, use_step_path

PATHS = [
    "cpu-kernels",
    pytest.param(
        "triton-kernels",
        marks=pytest.mark.skipif(not triton_interpreted(), reason="needs triton's interpreter"),
    ),
]
SHAPES = [(37, 29), (12, 8), (3, 8, 6), (7,)]  # factored, factored, 3 slices, full


def _backend(path: str):
    if path == "cpu-kernels":
        from adafactor.kernels import cpu

        return cpu
    return interpreted_triton_backend()


def _entries(options, seed=0, scale=1.0):
    """``step.Entry``s of parameters of ``SHAPES`` with fresh state (the last one full)."""
    hp = Hyperparameters(**{**DEFAULTS, **options})
    gen = torch.Generator().manual_seed(seed)
    entries = [fresh_entry(shape, hp, gen, scale) for shape in SHAPES]
    return hp, entries


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "options",
    [{"clip_threshold": None}, {"clip_threshold": None, "beta1": 0.9}],
    ids=["no-momentum", "step-momentum"],
)
def test_the_update_pass_is_left_out_where_nothing_reads_it(path, options):
    # What a step applied (group_step's report) holds RMS(U_t) from the kernels' sums: 0 where
    # the pass was left out. Without clipping or diagnostics it is, for every factored tensor;
    # with diagnostics, or clipping, it is not; a full V̂ always takes the pass (it counts
    # non-finite V̂_t there).
    backend = _backend(path)
    results = {}
    for name, extra in [("left out", {}), ("diagnostics", {"diagnostics": True})]:
        hp, entries = _entries({**options, **extra})
        results[name] = group_step(entries, None, FastPath(backend, PlanCache(), hp))
        results[name + " params"] = [e.param for e in entries]
    _, eager_entries = _entries(options)
    eager = group_step(eager_entries, None, None)
    for shape, left_out, read, e in zip(SHAPES, results["left out"], results["diagnostics"], eager):
        torch.testing.assert_close(read.update_rms, e.update_rms, rtol=1e-5, atol=0)
        if len(shape) >= 2:
            assert bool((left_out.update_rms == 0).all()), shape
        else:
            torch.testing.assert_close(left_out.update_rms, e.update_rms, rtol=1e-5, atol=0)
    for p, q, e in zip(results["left out params"], results["diagnostics params"], eager_entries):
        assert torch.equal(p, q)  # the same step, pass or no pass
        torch.testing.assert_close(p, e.param, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("path", PATHS)
def test_adam_momentum_always_takes_the_pass(path):
    # D_t is m̂_t, whose size the statistics do not bound.
    hp, entries = _entries({"clip_threshold": None, "beta1": 0.9, "momentum_of": "gradient"})
    applied = group_step(entries, None, FastPath(_backend(path), PlanCache(), hp))
    assert all(bool((a.update_rms > 0).all()) for a in applied)


def _trained(path_or_eager, monkeypatch, grads):
    use_step_path(monkeypatch, path_or_eager)
    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(g.shape, generator=gen)) for g in grads]
    opt = Adafactor(params, clip_threshold=None, min_dim_size_to_factor=1)
    for _ in range(2):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return params, opt


@pytest.mark.parametrize("path", PATHS)
def test_non_finite_steps_are_the_eager_steps_with_the_pass_left_out(monkeypatch, path):
    gen = torch.Generator().manual_seed(2)
    overflow = torch.randn(40, generator=gen)
    overflow[7] = 1e20  # G² overflows float32: V̂ is infinite, the full tensor is skipped
    unused = torch.randn(16, 12, generator=gen) * 1e18
    unused[3] = 0.0  # a zero row beside rows of 1e18: R_3/R̄ underflows to 0, its factor is
    #                  infinite and 0·inf a NaN in U: the eager step skips the tensor
    ordinary = torch.randn(20, 24, generator=gen)
    large = torch.randn(12, 16, generator=gen) * 1e18  # no zero row: stepped
    grads = [overflow, unused, ordinary, large]
    eager, eager_opt = _trained("eager", monkeypatch, grads)
    kernels, opt = _trained(path, monkeypatch, grads)
    assert [int(eager_opt.state[p]["nonfinite_skips"]) for p in eager] == [2, 2, 0, 0]
    for p, q in zip(eager, kernels):
        for key, value in eager_opt.state[p].items():
            mine = opt.state[q][key]
            if not value.is_floating_point():
                assert torch.equal(mine, value), key
            else:
                torch.testing.assert_close(mine, value, rtol=1e-5, atol=0, msg=key)
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)
