"""Helpers shared by the tests: the optimizer and the float64 reference side by side, test
gradients and parameters, and the step paths every behaviour is checked on."""

from __future__ import annotations

import copy
import importlib.util
import os
import pathlib
import sys
import types

import pytest
import torch
from hypothesis import strategies as st

import adafactor.kernels
from adafactor import Adafactor
from adafactor.reference import ReferenceAdafactor


def examples(count: int) -> int:
    """A property test's ``max_examples``: ``count``, or ten times as many when exploring
    with fresh random examples (``HYPOTHESIS_PROFILE=explore``, ``make fuzz``)."""
    return count * 10 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else count


STEP_PATHS = ("eager", "cpu-kernels", "triton-kernels")
"""The ways a CPU step can run: tensor by tensor (``fused=False``), the C group kernels, and
the Triton group kernels run by Triton's interpreter on CPU tensors."""


def triton_interpreted() -> bool:
    """Whether Triton's kernels can run here on CPU tensors (``TRITON_INTERPRET=1``)."""
    return (
        os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None
    )


def interpreted_triton_backend() -> types.SimpleNamespace:
    """The Triton kernels as a backend for CPU tensors (the interpreter runs them)."""
    from adafactor.kernels import triton as kernels

    names = (
        "GEOMETRY",
        "make_buffers",
        "numbers",
        "sums",
        "update_sums",
        "apply",
        "sums_of",
        "LAUNCHES",
    )
    return types.SimpleNamespace(DEVICE_TYPE="cpu", **{n: getattr(kernels, n) for n in names})


def use_step_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Make CPU steps run on ``path`` (one of ``STEP_PATHS``) with the default ``fused=None``."""
    if path == "eager":
        backend = None
    elif path == "cpu-kernels":
        from adafactor.kernels import cpu as backend
    else:
        if not triton_interpreted():
            pytest.skip("needs triton, run by its interpreter (TRITON_INTERPRET=1)")
        backend = interpreted_triton_backend()
    monkeypatch.setattr(adafactor.kernels, "_backend", lambda device_type: backend)


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


def snapshot(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def assert_unchanged(opt, params, snap):
    values, state = snap
    for p, v in zip(params, values):
        assert torch.equal(p, v)
    now = opt.state_dict()
    assert now["param_groups"] == state["param_groups"]
    assert now["state"].keys() == state["state"].keys()
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            assert torch.equal(now["state"][pid][key], value)


def make_trained(nonfinite_grad="skip", **kwargs):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(4))]
    opt = Adafactor(params, nonfinite_grad=nonfinite_grad, **kwargs)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return params, opt


EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


shape_lists = st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)
option_sets = st.fixed_dictionaries(
    {},
    optional={
        "lr": st.sampled_from([1e-2, 0.3, 1e-4]),
        "clip_threshold": st.sampled_from([None, 1.0, 0.3]),
        "decay_rate": st.sampled_from([0.5, 0.8, 1.0]),
        "beta1": st.sampled_from([None, 0.0, 0.9]),
        "beta2": st.sampled_from([None, 0.999, 0.5]),
        "momentum_of": st.sampled_from(["step", "gradient"]),
        "weight_decay": st.sampled_from([0.0, 0.1]),
        "weight_decay_scale": st.sampled_from(["rho", "alpha", "lr", "none"]),
        "relative_step": st.booleans(),
        "scale_parameter": st.booleans(),
        "factored": st.booleans(),
        "min_dim_size_to_factor": st.sampled_from([1, 2, 4]),
        "factor_dims": st.sampled_from(["largest", "last"]),
        "maximize": st.booleans(),
    },
)


def step_without_host_sync(opt: torch.optim.Optimizer) -> None:
    """One ``opt.step()`` on CUDA with every host sync raising (``set_sync_debug_mode``)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
