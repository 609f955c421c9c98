"""Shared helpers: run the optimizer and the float64 reference side by side."""

from __future__ import annotations

import os

import torch
from hypothesis import settings

# CI and `make test` draw the same examples every run (a failure is reproducible, never a
# flake); HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

from adafactor import Adafactor
from adafactor.reference import ReferenceAdafactor


def wide_gradient(shape: tuple[int, ...], generator: torch.Generator, dtype=torch.float64):
    """Gradients spanning ~16 orders of magnitude across rows and columns, with zero rows."""
    g = torch.randn(shape, generator=generator, dtype=torch.float64)
    if len(shape) >= 1 and g.numel():
        scale = 10.0 ** torch.empty(shape[0], dtype=torch.float64).uniform_(
            -8, 8, generator=generator
        )
        g = g * scale.reshape((-1,) + (1,) * (len(shape) - 1))
        g[0] = 0.0  # an all-zero row, from the first step on
    if len(shape) >= 2 and g.numel():
        scale = 10.0 ** torch.empty(shape[-1], dtype=torch.float64).uniform_(
            -4, 4, generator=generator
        )
        g = g * scale
    return g.to(dtype)


def run_side_by_side(params, grads_per_step, **options):
    """Step ``Adafactor`` on copies of ``params`` and the reference on float64 copies."""
    ours = [p.detach().clone().requires_grad_(True) for p in params]
    opt = Adafactor(ours, **options)
    ref = ReferenceAdafactor(params, **options)
    for grads in grads_per_step:
        for p, g in zip(ours, grads):
            p.grad = None if g is None else g.to(p.dtype)
        opt.step()
        ref.step([None if g is None else g.to(p.dtype) for p, g in zip(ours, grads)])
    return opt, ours, ref


def magnitudes(shape, scale, gen, dtype=torch.float64):
    """Random signs, magnitudes in [0.1, 1]·scale: the largest is at most ``scale``."""
    u = torch.empty(shape, dtype=torch.float64).uniform_(0.1, 1.0, generator=gen)
    sign = torch.randint(0, 2, shape, generator=gen, dtype=torch.float64) * 2 - 1
    return (u * sign * scale).to(dtype)
