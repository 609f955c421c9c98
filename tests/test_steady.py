"""A step that repeats the last one (``adafactor.steady``): while nothing but the gradients'
memory changed, a group steps through the kernels without re-checking, re-admitting or
re-planning its tensors. It launches exactly what the whole step launches (bit for bit), it
follows the eager step, and every change that the whole step would see (an option, a
parameter's memory, a gradient's dtype or layout, a state tensor or dict, a parameter that
gains or loses its gradient) makes it step the whole way instead.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import adafactor.kernels
from adafactor import Adafactor
from adafactor.kernels import KernelBuildError, KernelBuildWarning, cpu
from adafactor.kernels import group as kernel_group
from adafactor.kernels.plan import Access
from adafactor.optimizer import Adafactor as Optimizer
from helpers import use_step_path

KERNEL_PATHS = ["cpu-kernels", "triton-kernels"]
SHAPES = [(37, 29), (7,), (3, 8, 6), (5, 4)]
STEPS = 5
CHANGE_AT = 3  # the step before which a scenario changes something


def _kept_state_clone(params: list[torch.nn.Parameter], opt: Adafactor) -> None:
    state = opt.state[params[0]]
    _kept.append(state["exp_avg_sq_row"])  # the old tensor stays alive elsewhere
    state["exp_avg_sq_row"] = state["exp_avg_sq_row"].clone()


_kept: list[torch.Tensor] = []


def _state_memory_moved(params: list[torch.nn.Parameter], opt: Adafactor) -> None:
    row = opt.state[params[0]]["exp_avg_sq_row"]
    row.data = row.data.clone()  # the same tensor, its memory elsewhere (an offload's return)


def _gradient_off_its_element(params: list[torch.nn.Parameter], opt: Adafactor) -> None:
    """A gradient one byte past an element boundary: the kernels do not take it."""
    g = params[1].grad
    buffer = bytearray(g.numel() * 4 + 1)
    odd = torch.frombuffer(buffer, dtype=torch.float32, offset=1, count=g.numel())
    odd.copy_(g.view(-1))
    params[1].grad = odd.view(g.shape)


def _set(params, opt, key, value):
    opt.param_groups[0][key] = value


Change = Callable[[list[torch.nn.Parameter], Adafactor], None]
SCENARIOS: dict[str, tuple[Change, bool]] = {
    # name: (what changes once the step's gradients are set, whether that step repeats)
    "nothing": (lambda ps, opt: None, True),
    "lr": (lambda ps, opt: _set(ps, opt, "lr", 3e-4), True),
    "numpy-lr": (lambda ps, opt: _set(ps, opt, "lr", np.float64(2e-4)), True),
    "option": (lambda ps, opt: _set(ps, opt, "clip_threshold", 0.5), False),
    "gradient-dropped": (lambda ps, opt: setattr(ps[1], "grad", None), False),
    "idle-gains-gradient": (lambda ps, opt: setattr(ps[-1], "grad", torch.ones(6, 3)), False),
    "parameter-memory": (lambda ps, opt: setattr(ps[0], "data", ps[0].data.clone()), False),
    "gradient-dtype": (
        lambda ps, opt: setattr(ps[0].grad, "data", ps[0].grad.data.to(torch.bfloat16)),
        False,
    ),
    "gradient-strided": (
        lambda ps, opt: setattr(ps[0], "grad", ps[0].grad.t().contiguous().t()),
        False,
    ),
    "state-replaced-kept": (_kept_state_clone, False),
    "state-memory": (_state_memory_moved, False),
    "gradient-off-its-element": (_gradient_off_its_element, False),
    "state-replaced": (
        lambda ps, opt: opt.state[ps[2]].__setitem__("step", opt.state[ps[2]]["step"].clone()),
        False,
    ),
    "state-dict-replaced": (
        lambda ps, opt: opt.state.__setitem__(ps[3], dict(opt.state[ps[3]])),
        False,
    ),
    "state-dict-loaded": (lambda ps, opt: opt.load_state_dict(opt.state_dict()), False),
}


def _run(scenario: str, fused: bool | None, repeat: bool = True, in_place: bool = False):
    """``STEPS`` steps of two groups (the second with a parameter that never has a gradient
    until a scenario gives it one); the parameters, the optimizer and, per step, whether it
    repeated the last one."""
    change, _ = SCENARIOS[scenario]
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    idle = torch.nn.Parameter(torch.randn(6, 3, generator=gen))
    opt = Adafactor(
        [{"params": params[:3]}, {"params": [params[3], idle], "beta1": 0.9}],
        lr=1e-3,
        fused=fused,
    )
    repeated: list[bool] = []
    step_again = opt._step_again
    opt._step_again = lambda only: repeated.append(repeat and step_again(only)) or repeated[-1]
    everything = [*params, idle]
    for k in range(1, STEPS + 1):
        for p in params:
            g = torch.randn(p.shape, generator=gen) * k
            if in_place and p.grad is not None:
                p.grad.copy_(g)  # zero_grad(set_to_none=False): the same gradient tensors
            else:
                p.grad = g
        if k == CHANGE_AT:
            change(everything, opt)
        opt.step()
    return everything, opt, repeated


def _recorded() -> tuple[list[torch.nn.Parameter], Adafactor]:
    """An optimizer over ``SHAPES`` whose next step can repeat its last (two steps made)."""
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    opt = Adafactor(params)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert opt._steady
    return params, opt


def _assert_bitwise(a, b):
    (ps, opt_a, _), (qs, opt_b, _) = a, b
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
        assert opt_a.state[p].keys() == opt_b.state[q].keys()
        for key, value in opt_a.state[p].items():
            assert torch.equal(value, opt_b.state[q][key]), key


def _assert_close(eager, kernels):
    (ps, opt_e, _), (qs, opt_k, _) = eager, kernels
    for p, q in zip(ps, qs):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)
        for key, value in opt_e.state[p].items():
            torch.testing.assert_close(opt_k.state[q][key], value, rtol=1e-5, atol=1e-7)


# The interpreted Triton kernels take ~25 s a scenario: there, the two that refresh the
# plan's gradient pointers and build it again (what differs between backends).
CASES = [("cpu-kernels", s) for s in SCENARIOS] + [
    ("triton-kernels", s) for s in ("nothing", "parameter-memory")
]


@pytest.mark.parametrize(("path", "scenario"), CASES)
def test_a_repeated_step_is_the_whole_step_and_follows_the_eager_one(
    path: str, scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_step_path(monkeypatch, path)
    repeating = _run(scenario, None)
    _, repeats_at_change = SCENARIOS[scenario]
    steps = repeating[2]
    # The first step records; the second repeats it; the scenario's change is seen (or not).
    assert steps[:2] == [False, True]
    assert steps[CHANGE_AT - 1] is repeats_at_change
    assert steps[-1] is True  # recorded again after a change, then repeated
    _assert_bitwise(repeating, _run(scenario, None, repeat=False))
    _assert_close(_run(scenario, False), repeating)


@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_the_same_gradient_tensors_step_again_too(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_step_path(monkeypatch, path)
    repeating = _run("nothing", None, in_place=True)
    assert repeating[2][1:] == [True] * (STEPS - 1)
    _assert_bitwise(repeating, _run("nothing", None, repeat=False, in_place=True))
    _assert_close(_run("nothing", False, in_place=True), repeating)


def test_a_repeated_step_makes_no_entries_signatures_or_plans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the host's time no longer spends per tensor: none of the whole step's per-tensor
    work runs on a repeated step."""
    use_step_path(monkeypatch, "cpu-kernels")
    params, opt = _recorded()

    def refuse(*_: object) -> None:
        raise AssertionError("the whole step's per-tensor work ran on a repeated step")

    monkeypatch.setattr(Optimizer, "_gather", refuse)
    monkeypatch.setattr(Optimizer, "_entries", refuse)
    monkeypatch.setattr(kernel_group, "entries_signature", refuse)
    monkeypatch.setattr(kernel_group, "build_plan", refuse)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert all(not torch.equal(p, b) for p, b in zip(params, before))


def test_kernels_that_fail_on_a_repeated_step_step_eagerly_after_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scheduler's new ``lr`` on a repeated step: the kernels' numbers are made again, and
    where that fails the tensors step eagerly, as on the whole step."""
    use_step_path(monkeypatch, "cpu-kernels")
    eager = _run("lr", False)
    real = cpu.numbers

    def numbers(hp, device):
        if hp.lr == 3e-4:  # the scenario's new lr
            raise KernelBuildError("the numbers of a repeated step could not be made (test)")
        return real(hp, device)

    monkeypatch.setattr(cpu, "numbers", numbers)
    adafactor.kernels._warn_once.cache_clear()
    with pytest.warns(KernelBuildWarning, match="repeated step"):
        kernels = _run("lr", None)
    assert kernels[2][CHANGE_AT - 1] is True  # the failure came on a repeated step
    _assert_close(eager, kernels)


def test_the_kernels_numbers_are_made_once_per_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """Made again for a new ``lr`` (a new options object) or a Tensor ``lr`` (filled in place
    since, perhaps), else kept: a hook steps one tensor at a time, and making them costs more
    than a small tensor's step."""
    use_step_path(monkeypatch, "cpu-kernels")
    made: list[object] = []
    real = cpu.numbers
    monkeypatch.setattr(cpu, "numbers", lambda hp, device: made.append(hp.lr) or real(hp, device))
    for lr, per_step in ((1e-3, False), (torch.tensor(1e-3), True)):
        made.clear()
        params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
        opt = Adafactor(params, lr=lr)
        for k in range(4):
            if k == 2 and not per_step:
                opt.param_groups[0]["lr"] = 5e-4
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
        assert len(made) == (4 if per_step else 2)
        if per_step:  # the Tensor lr filled in place is read again
            assert lr in made


def test_a_sparse_gradient_on_a_repeated_step_is_refused_before_anything_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_step_path(monkeypatch, "cpu-kernels")
    params, opt = _recorded()
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    params[3].grad = params[3].grad.to_sparse()
    with pytest.raises(ValueError, match=r"\['params'\]\[3\].*sparse"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_hooks_repeat_each_parameters_step(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside the backward pass each parameter's step repeats its own last one: the same
    trajectory as stepping the whole way every time, and as the eager step."""
    use_step_path(monkeypatch, path)

    def train(fused: bool | None, repeat: bool) -> tuple[list[torch.nn.Parameter], int]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
        opt = Adafactor(model.parameters(), lr=1e-3, fused=fused, step_in_backward=True)
        repeated = []
        step_again = opt._step_again
        opt._step_again = lambda only: repeated.append(repeat and step_again(only)) or repeated[-1]
        for _ in range(4):
            model(torch.randn(5, 8)).square().mean().backward()
            opt.step()
            opt.zero_grad()
        return list(model.parameters()), sum(repeated)

    repeating, hits = train(None, True)
    whole, no_hits = train(None, False)
    eager, _ = train(False, True)
    assert hits == 3 * len(repeating) and no_hits == 0
    for p, q, r in zip(repeating, whole, eager):
        assert torch.equal(p, q)
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-7)


def test_no_record_for_what_a_step_must_look_at(monkeypatch: pytest.MonkeyPatch) -> None:
    """Diagnostics to record, values to check for NaNs, tensors that step eagerly: every step
    goes the whole way."""
    use_step_path(monkeypatch, "cpu-kernels")
    for options in ({"diagnostics": True}, {"nonfinite_grad": "raise"}, {"fused": False}):
        params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
        opt = Adafactor(params, **options)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
        assert not opt._steady, options
    params = [torch.nn.Parameter(torch.randn(4, 4, dtype=torch.float64)), *params]
    opt = Adafactor(params)  # float64 steps eagerly beside the kernels' tensors
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert not opt._steady


def _clones(state: dict) -> dict:
    return {key: value.clone() for key, value in state.items()}


OFFLOADS = {
    "tensors replaced": lambda opt: [state.update(_clones(state)) for state in opt.state.values()],
    "dicts replaced": lambda opt: [
        opt.state.__setitem__(p, _clones(s)) for p, s in list(opt.state.items())
    ],
    "state cleared": lambda opt: opt.state.clear(),
}


@pytest.mark.parametrize("offload", OFFLOADS)
def test_replaced_state_is_not_kept_alive(offload: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """State moved elsewhere or cleared between steps (offloaded to the host, say) is given
    back: the optimizer's records watch the old tensors and dicts, they do not hold them."""
    use_step_path(monkeypatch, "cpu-kernels")
    _, opt = _recorded()
    refs = [weakref.ref(v) for state in opt.state.values() for v in state.values()]
    OFFLOADS[offload](opt)
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_a_gradient_that_moves_off_its_alignment_moves_its_tiles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tensor read by vectors whose new gradient starts off a 16-byte boundary is planned
    again, read one element at a time, and back when its gradient is aligned again; each
    step as the eager step's."""
    use_step_path(monkeypatch, "cpu-kernels")

    def gradient(shape: tuple[int, ...], k: int, aligned: bool) -> torch.Tensor:
        gen = torch.Generator().manual_seed(k)
        values = torch.randn(shape, generator=gen)
        if aligned:
            return values
        buffer = torch.empty(values.numel() + 1)
        view = buffer[1:].view(shape)  # 4 bytes past the allocation's start
        view.copy_(values)
        return view

    shapes = [(8, 16), (4, 8)]
    runs = []
    for fused in (None, False):
        params = [torch.nn.Parameter(torch.ones(s)) for s in shapes]
        opt = Adafactor(params, fused=fused)
        access = []
        for k, aligned in enumerate([True, True, False, False, True]):
            params[0].grad = gradient(shapes[0], k, aligned)
            params[1].grad = gradient(shapes[1], k + 100, True)
            opt.step()
            if fused is None:
                access.append(list(opt._plans[0].plan.tensors_access))
        runs.append((params, access))
    (ours, access), (eager, _) = runs
    vector, one = Access.VECTOR, Access.CONTIGUOUS
    assert [a[0] for a in access] == [vector, vector, one, one, vector]
    for p, q in zip(ours, eager):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def _parameter_reshaped(params: list[torch.nn.Parameter], _: list[Any]) -> None:
    params[0].data = params[0].data.view(29, 37)  # the same memory, another shape


def _parameter_reinterpreted(params: list[torch.nn.Parameter], _: list[Any]) -> None:
    params[0].data = params[0].data.view(torch.float16)  # the same memory, another dtype


def _slot_replaced(params: list[torch.nn.Parameter], members: list[Any]) -> None:
    members[0] = torch.nn.Parameter(torch.zeros_like(params[0]))  # no gradient: not stepped


@pytest.mark.parametrize(
    ("change", "dtype"),
    [
        (_parameter_reshaped, torch.float32),
        (_parameter_reinterpreted, torch.bfloat16),
        (_slot_replaced, torch.float32),
    ],
)
def test_a_parameter_changed_under_the_same_pointer_is_seen(
    change: Callable, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parameter viewed as another shape or dtype (its pointer unchanged), or another
    tensor in its place in the group's list: the step does not repeat the last one, and does
    what the whole step does (an error for the shape, which its gradient no longer has)."""
    use_step_path(monkeypatch, "cpu-kernels")

    def run(repeat: bool) -> tuple[list[torch.nn.Parameter], BaseException | None]:
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]
        opt = Adafactor(params)
        for k in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            if k == 2:
                change(params, opt.param_groups[0]["params"])
                assert opt._step_again(None) is False
                if not repeat:
                    opt._steady.clear()
            try:
                opt.step()
            except (ValueError, KeyError) as error:
                return params, error
        return params, None

    (ours, error), (whole, whole_error) = run(True), run(False)
    assert repr(error) == repr(whole_error)
    assert (error is not None) == (change is _parameter_reshaped)
    for p, q in zip(ours, whole):
        assert torch.equal(p, q)


def _pair(a: float, b: float) -> tuple[float, float]:
    return (a, b)  # a new tuple each call, as a config loader makes


def test_an_option_set_anew_is_read_even_where_its_id_is_an_old_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Options are checked again when one is another object than when last checked; the
    object last checked is held, so that a new one (a tuple built at run time, say) cannot
    take its ``id`` and pass for it."""
    use_step_path(monkeypatch, "cpu-kernels")

    def run(forget: bool) -> list[torch.nn.Parameter]:
        params, opt = _recorded()
        group = opt.param_groups[0]
        group["eps"] = _pair(1e-30, 1e-3)
        for k in range(3):
            if k == 2:
                group["eps"] = _pair(1e-20, 1e-1)
                group["eps"] = _pair(1e-25, 10.0)  # may take the id the last one had
                if forget:
                    opt._validated.clear()
                    opt._steady.clear()
            for p in params:
                p.grad = torch.ones_like(p)
            opt.step()
        return params

    torch.manual_seed(0)
    remembered = run(False)
    torch.manual_seed(0)
    for p, q in zip(remembered, run(True)):
        assert torch.equal(p, q)
