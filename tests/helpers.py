"""Helpers shared by the tests: the optimizer and the float64 reference side by side, test
gradients and parameters, and the step paths every behaviour is checked on."""

from __future__ import annotations

import copy
import importlib.util
import os
import pathlib
import sys
import types
import warnings
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from hypothesis import strategies as st

import adafactor.kernels
from adafactor import Adafactor
from adafactor.options import BY_NAME, DEFAULTS, OPTIONS, validate_options
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
        # A kernel the interpreter cannot run would step eagerly after a warning (the rule for
        # fused=None), and a comparison with the eager step would pass unseen: an error here
        # (this test's own filters; pytest.warns still sees the warning where it is expected).
        warnings.filterwarnings("error", category=adafactor.kernels.KernelBuildWarning)
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


def valid_options(options: Mapping[str, Any]) -> bool:
    """Whether ``options`` (the others at their defaults) pass ``validate_options``."""
    try:
        validate_options({**DEFAULTS, **options})
    except ValueError:
        return False
    return True


def option_samples(*, edge_cases: bool = False) -> list[tuple[str, Any, dict[str, Any]]]:
    """Every option's samples (and edge cases, if asked) from the options table, as
    ``(name, value, options)`` with ``options`` the value in the context it acts in."""
    return [
        (o.name, value, {**o.context, o.name: value})
        for o in OPTIONS
        for value in (*o.samples, *(o.edge_cases if edge_cases else ()))
    ]


def option_strategy(*, reference: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """Option sets drawn from the options table: any of the options that change numbers (the
    host-only ones are checked apart, in ``test_option_coverage.py``), each at its default, a
    sample or an edge case, only valid sets; with ``reference``, only the options the float64
    reference takes (``Option.in_reference``)."""
    chosen = [o for o in OPTIONS if not o.host_only and (o.in_reference or not reference)]
    values = {o.name: st.sampled_from((o.default, *o.samples, *o.edge_cases)) for o in chosen}
    return st.fixed_dictionaries({}, optional=values).filter(valid_options)


option_sets = option_strategy()
reference_option_sets = option_strategy(reference=True)


def packed_option_sets() -> list[dict[str, Any]]:
    """Every sample and edge case of the options that change numbers, with its context, in a
    few valid option sets: each value goes to the smallest set it fits without changing an
    option already set, starting from as many sets as any option has values."""
    values = [v for v in option_samples(edge_cases=True) if not BY_NAME[v[0]].host_only]
    most = max(sum(1 for v in values if v[0] == o.name) for o in OPTIONS)
    sets: list[dict[str, Any]] = [{} for _ in range(most)]
    for _, _, options in values:
        fits = [
            s
            for s in sets
            if all(s.get(k, v) == v for k, v in options.items()) and valid_options({**s, **options})
        ]
        if fits:
            min(fits, key=len).update(options)
        else:
            sets.append(dict(options))
    return sets


def step_without_host_sync(opt: torch.optim.Optimizer) -> None:
    """One ``opt.step()`` on CUDA with every host sync raising (``set_sync_debug_mode``)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def fresh_entry(shape: tuple[int, ...], hp: Any, gen: torch.Generator, scale: float = 1.0) -> Any:
    """A ``step.Entry`` of a random parameter of ``shape`` and its gradient (times ``scale``),
    with fresh state: its last two dims factored, momentum where ``hp`` has a ``beta1``."""
    from adafactor.factoring import state_layout
    from adafactor.step import Entry

    dims = (len(shape) - 2, len(shape) - 1) if len(shape) >= 2 else None
    layout = state_layout(
        shape,
        torch.float32,
        factored=dims is not None,
        factor_dims="last",
        min_dim_size_to_factor=1,
        momentum=hp.beta1 is not None,
    )
    state = {k: torch.zeros(s.shape, dtype=s.dtype) for k, s in layout.items()}
    p, g = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen) * scale
    return Entry(p, g, state, hp.as_tensors(p.device, p.dtype), dims, shape, p, p.dtype)
