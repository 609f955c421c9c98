"""Every option of the options table (``adafactor.options.OPTIONS``) reaches every step path.
For each sample value an option carries, in the context it acts in:

(a) an option that is not host-only changes what a few eager steps write (else the sample, or
    the option, does nothing);
(b) the C group kernels and the Triton group kernels (run by Triton's interpreter) write what
    the eager step writes with that sample, to the tolerance of ``test_kernels.py`` (float32:
    ``rtol=1e-5``; 16-bit values at most one ulp of their dtype per step): an option wired
    into the eager step alone would be ignored on the default path, and fail here;
(c) a host-only option changes no number on any path: the eager step's bit for bit, the
    kernels' to the same tolerance.

Stochastic rounding's bits are a hash of the seed, the parameter, the step and the element,
the same on every path, so its samples are held to the eager step like the others; and to
what it guarantees: on every path one step of a bfloat16 parameter lands within one bfloat16
ulp of the step's float32 result (an eager step of a float32 copy), and away from
round-to-nearest somewhere.

The parameters give every option a chance to act: a matrix, a vector and a stacked 3-D tensor
whose two largest dims (0 and 2) are not its last two, with slices of different scales; all of
RMS far from 1, so that α_t = RMS(X)·ρ_t differs from ρ_t.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from test_kernels import ULP

from adafactor import Adafactor
from adafactor.options import BY_NAME, DEFAULTS, OPTIONS
from adafactor.reference import ReferenceAdafactor
from helpers import STEP_PATHS, option_samples, use_step_path, valid_options

SHAPES = [(5, 4), (3,), (4, 2, 3)]
STEPS = 2  # β̂2_1 = 0 whatever the schedule: its options act from the second step on
KERNEL_PATHS = [path for path in STEP_PATHS if path != "eager"]

SAMPLES = option_samples()
ACTING = [s for s in SAMPLES if not BY_NAME[s[0]].host_only]
HOST_ONLY = [s for s in SAMPLES if BY_NAME[s[0]].host_only]


def _stochastic(name: str, value: Any, context: dict[str, Any]) -> bool:
    """Whether a sample of a rounding option writes 16-bit parameters stochastically."""
    options = {**context, name: value}
    chosen = options.get("rounding", DEFAULTS["rounding"])
    return bool(BY_NAME[name].dtypes) and (
        options.get("stochastic_rounding") is True or chosen == "stochastic"
    )


STOCHASTIC = [s for s in SAMPLES if _stochastic(*s)]


def _dtype(name: str) -> torch.dtype:
    """The dtype of parameters a sample is stepped on: the first its option acts on."""
    return (*BY_NAME[name].dtypes, torch.float32)[0]


def _ids(samples: list[tuple[str, Any, dict[str, Any]]]) -> list[str]:
    return [f"{name}={value!r}" for name, value, _ in samples]


def run(
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    options: dict[str, Any],
    shapes: list[tuple[int, ...]] = SHAPES,
    dtype: torch.dtype = torch.float32,
    steps: int = STEPS,
    values: torch.dtype | None = None,
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """``steps`` steps on ``path`` with ``options``: the parameters and their state. The
    starting values and the gradients are rounded to ``values`` (default: ``dtype``) first."""
    use_step_path(monkeypatch, path)
    torch.manual_seed(0)  # the noise of stochastic rounding
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        x = 2.5 * torch.randn(shape, generator=gen)
        if len(shape) == 3:
            x[:, 1] *= 0.2  # slices apart in RMS along dim 1, the batch dim of "largest"
        params.append(torch.nn.Parameter(x.to(values or dtype).to(dtype)))
    opt = Adafactor(params, **options)
    for k in range(steps):
        for p in params:
            p.grad = ((1 + k) * torch.randn(p.shape, generator=gen)).to(values or dtype).to(dtype)
        opt.step()
    return [p.detach().clone() for p in params], [dict(opt.state[p]) for p in params]


def _tolerance(value: torch.Tensor, steps: int) -> dict[str, float]:
    """``test_kernels.py``'s: float32 to a few ulps per operation, 16 bits one ulp a step."""
    scale = value.float().abs().max().item() if value.numel() else 0.0
    return {"rtol": 1e-5, "atol": (ULP.get(value.dtype, 0.0) * steps + 1e-7) * scale}


def assert_alike(mine, expected, steps: int = STEPS, what: str = "") -> None:
    """Parameters and state of ``mine`` as ``expected``'s, to the kernels' tolerance."""
    (params, states), (want_params, want_states) = mine, expected
    for i, (p, q) in enumerate(zip(params, want_params)):
        where = f"{what}: parameter {i}"
        torch.testing.assert_close(
            p.float(), q.float(), **_tolerance(q, steps), msg=lambda m, where=where: f"{where}\n{m}"
        )
        assert states[i].keys() == want_states[i].keys(), where
        for key, value in want_states[i].items():
            mine_value = states[i][key]
            assert mine_value.dtype == value.dtype and mine_value.shape == value.shape, key
            torch.testing.assert_close(
                mine_value.float(),
                value.float(),
                **_tolerance(value, steps),
                msg=lambda m, key=key, where=where: f"{where}, {key}\n{m}",
            )


def _differs(mine, other) -> bool:
    """Whether two eager runs (deterministic) wrote anything different: a parameter, or a
    state tensor (compensated rounding's residual, say)."""
    return any(not torch.equal(p, q) for p, q in zip(mine[0], other[0])) or any(
        a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a)
        for a, b in zip(mine[1], other[1])
    )


def test_every_option_carries_valid_samples_that_are_not_its_default():
    for option in OPTIONS:
        assert option.samples, f"{option.name}: no samples"
        assert option.name not in option.context, option.name
        assert valid_options({**option.context, option.name: option.default}), option.name
        for value in (*option.samples, *option.edge_cases):
            assert value != option.default, (option.name, value)
            assert valid_options({**option.context, option.name: value}), (option.name, value)


def test_the_options_the_reference_takes_are_those_marked_so():
    taken = set(inspect.signature(ReferenceAdafactor.__init__).parameters) - {"self", "params"}
    assert taken == {o.name for o in OPTIONS if o.in_reference}


@pytest.mark.parametrize(("name", "value", "options"), ACTING, ids=_ids(ACTING))
def test_each_sample_changes_what_the_eager_step_writes(monkeypatch, name, value, options):
    default = {**options, name: DEFAULTS[name]}
    with_sample = run(monkeypatch, "eager", options, dtype=_dtype(name))
    assert _differs(with_sample, run(monkeypatch, "eager", default, dtype=_dtype(name))), (
        f"{name}={value!r} (with {options}) changes nothing: give it a sample and context "
        "that act, or mark it host_only saying why"
    )


@pytest.mark.parametrize("path", KERNEL_PATHS)
@pytest.mark.parametrize(("name", "value", "options"), ACTING, ids=_ids(ACTING))
def test_each_sample_steps_on_every_path_as_on_the_eager_one(
    monkeypatch, name, value, options, path
):
    eager = run(monkeypatch, "eager", options, dtype=_dtype(name))
    mine = run(monkeypatch, path, options, dtype=_dtype(name))
    assert_alike(mine, eager, what=f"{name}={value!r} on {path}")


@pytest.mark.parametrize("path", STEP_PATHS)
@pytest.mark.parametrize(("name", "value", "options"), HOST_ONLY, ids=_ids(HOST_ONLY))
def test_host_only_options_change_no_number_on_any_path(monkeypatch, name, value, options, path):
    default = run(monkeypatch, "eager", {**options, name: DEFAULTS[name]})
    mine = run(monkeypatch, path, options)
    if path == "eager":
        for p, q in zip(mine[0], default[0]):
            assert torch.equal(p, q), f"host-only {name}={value!r} changes the eager step"
        for state, want in zip(mine[1], default[1]):
            assert state.keys() == want.keys(), name
            assert all(torch.equal(state[k], v) for k, v in want.items()), name
    else:
        assert_alike(mine, default, what=f"host-only {name}={value!r} on {path}")


def _bfloat16_ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bfloat16 values around each element of ``x`` (8 significant bits)."""
    return torch.exp2(torch.floor(torch.log2(x.abs())) - 7)


@pytest.mark.parametrize("path", STEP_PATHS)
@pytest.mark.parametrize(("name", "value", "options"), STOCHASTIC, ids=_ids(STOCHASTIC))
def test_stochastic_rounding_lands_within_one_ulp_and_not_to_nearest_on_every_path(
    monkeypatch, name, value, options, path
):
    # One step of a bfloat16 parameter, and of a float32 copy of it (the same gradient).
    shapes = [(16, 8)]
    exact = run(monkeypatch, "eager", options, shapes, steps=1, values=torch.bfloat16)[0][0]
    mine = run(monkeypatch, path, options, shapes, torch.bfloat16, steps=1)[0][0].float()
    # Up or down to a neighbour of the float32 result (which the kernels form to rtol 1e-5).
    bound = _bfloat16_ulp(exact) + 1e-5 * exact.abs()
    assert ((mine - exact).abs() <= bound).all(), f"{name}={value!r} on {path}: beyond one ulp"
    nearest = exact.bfloat16().float()
    assert not torch.equal(mine, nearest), f"{name}={value!r} on {path}: rounds to nearest"
