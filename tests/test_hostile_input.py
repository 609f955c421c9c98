"""Input a careless or unlucky user gives: corrupt or malformed state dicts, parameters whose
dtype changes between steps, non-finite weights, Tensor learning rates. Nothing is lost or
half-applied: a clear ``ValueError`` that names the culprit and changes nothing, or the step
goes on exactly as it should."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from adafactor import Adafactor
from helpers import assert_unchanged, make_trained, snapshot

# --- state that cannot be trusted ----------------------------------------------------------


def _corrupted(key, value, index=0):
    params, opt = make_trained(beta1=0.9)
    state = copy.deepcopy(opt.state_dict())
    state["state"][index][key] = value
    return params, opt, state


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("exp_avg_sq_row", torch.full((6, 1), float("nan")), "NaN or infinite"),
        ("exp_avg_sq_col", torch.full((1, 5), float("inf")), "NaN or infinite"),
        ("exp_avg_sq_row", -torch.ones(6, 1), "negative values"),
        ("exp_avg", torch.full((6, 5), float("nan")), "NaN or infinite"),
        ("step", torch.tensor(-7.0), "-7.0: a count of steps must be a whole number"),
        ("step", torch.tensor(2.5), "2.5: a count of steps must be a whole number"),
        ("step", torch.tensor(float("inf")), "NaN or infinite"),
        ("nonfinite_skips", torch.tensor(-1), "-1.0: a count of steps must be a whole number"),
    ],
)
def test_corrupt_state_values_are_refused_naming_parameter_and_key(key, value, problem):
    params, opt, state = _corrupted(key, value)
    snap = snapshot(opt, params)
    with pytest.raises(ValueError) as error:
        opt.load_state_dict(state)
    message = str(error.value)
    assert "param_groups[0]['params'][0], shape (6, 5)" in message
    assert f"state[{key!r}]" in message and problem in message
    assert_unchanged(opt, params, snap)


def test_corrupt_values_in_the_second_parameter_are_named_too():
    _params, opt, state = _corrupted("exp_avg_sq", torch.full((4,), float("nan")), index=1)
    with pytest.raises(
        ValueError, match=r"\['params'\]\[1\], shape \(4,\)\): state\['exp_avg_sq'\]"
    ):
        opt.load_state_dict(state)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda sd: sd["param_groups"][0].pop("params"), r"param_groups\[0\] .* no list 'params'"),
        (lambda sd: sd.__setitem__("state", [1, 2]), "'state' is a list, not a dict"),
        (lambda sd: sd.__setitem__("param_groups", {"a": 1}), "'param_groups' is a dict, not a"),
        (lambda sd: sd["param_groups"].__setitem__(0, 3), r"param_groups\[0\] .* is not a dict"),
        (lambda sd: sd["state"].__setitem__(0, [1.0]), "state of parameter id 0 is not a dict"),
        (lambda sd: sd.pop("state"), "it has no 'state'"),
    ],
)
def test_malformed_state_dicts_are_value_errors_that_say_what_is_wrong(mutate, message):
    params, opt = make_trained()
    state = copy.deepcopy(opt.state_dict())
    mutate(state)
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(state)
    assert_unchanged(opt, params, snap)


def test_a_state_dict_that_is_not_a_mapping_is_a_value_error():
    _, opt = make_trained()
    with pytest.raises(ValueError, match="not an optimizer state dict: a list"):
        opt.load_state_dict([])  # type: ignore[arg-type]


def test_eps_saved_as_a_list_loads():
    # JSON or YAML round trips turn tuples into lists; the constructor takes a list too.
    _params, opt = make_trained()
    state = copy.deepcopy(opt.state_dict())
    state["param_groups"][0]["eps"] = [1e-30, 1e-3]
    opt.load_state_dict(state)
    assert opt.param_groups[0]["eps"] == (1e-30, 1e-3)
    Adafactor([torch.nn.Parameter(torch.ones(2))], eps=[1e-30, 1e-3])


def test_a_step_saved_as_a_plain_number_loads_and_training_continues():
    # PyTorch's test_load_nontensor_step: older checkpoints and converters save a number.
    params, opt = make_trained()
    reference = copy.deepcopy(opt)
    state = copy.deepcopy(opt.state_dict())
    for entry in state["state"].values():
        entry["step"] = int(entry["step"].item())
        entry["nonfinite_skips"] = int(entry["nonfinite_skips"].item())
    opt.load_state_dict(state)
    assert opt.state[params[0]]["step"].dtype == torch.float32
    grads = [torch.randn_like(p) for p in params]
    for o, ps in (
        (opt, params),
        (reference, [p for g in reference.param_groups for p in g["params"]]),
    ):
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        o.step()
    for p, q in zip(params, (p for g in reference.param_groups for p in g["params"])):
        assert torch.equal(p, q)


# --- steps that must not half-happen -------------------------------------------------------


def test_a_model_made_double_mid_run_converts_its_state_and_continues(step_path):
    # model.double() between steps: the float32 state becomes float64 exactly (widening), and
    # the step is what a float64 optimizer holding that state would take.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    opt = Adafactor(model.parameters(), beta1=0.9)
    x = torch.randn(16, 6)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    model.double()
    twin = Adafactor(model.parameters(), beta1=0.9)  # what the converted state should give
    twin_model = copy.deepcopy(model)
    twin = Adafactor(twin_model.parameters(), beta1=0.9)
    state = copy.deepcopy(opt.state_dict())
    for entry in state["state"].values():
        for key in ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq", "exp_avg"):
            if key in entry:
                entry[key] = entry[key].double()
    twin.load_state_dict(state)
    for m, o in ((model, opt), (twin_model, twin)):
        o.zero_grad()
        m(x.double()).pow(2).mean().backward()
        o.step()
    for p, q in zip(model.parameters(), twin_model.parameters()):
        assert p.dtype == torch.float64 and torch.equal(p, q)
        assert (
            opt.state[p]["exp_avg_sq_row" if p.dim() == 2 else "exp_avg_sq"].dtype == torch.float64
        )


def test_part_of_a_model_made_half_mid_run_steps_with_float32_statistics():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    opt = Adafactor(model.parameters())
    x = torch.randn(4, 8)
    model(x).sum().backward()
    opt.step()
    model[1].half()  # the second layer only; its statistics stay float32 (as for fp16 params)
    opt.zero_grad()
    model[1](model[0](x).half()).float().sum().backward()
    opt.step()
    for p in model[1].parameters():
        assert p.dtype == torch.float16
        assert all(v.dtype in (torch.float32, torch.int64) for v in opt.state[p].values())
        assert int(opt.state[p]["step"]) == 2


def test_a_dtype_change_with_a_bad_later_parameter_changes_nothing():
    # The state conversion waits until every parameter is checked: a later parameter with a
    # sparse gradient raises first, and no state was converted or stepped.
    params, opt = make_trained()
    params[0].data = params[0].data.double()
    params[0].grad = torch.randn(6, 5, dtype=torch.float64)
    params[1].grad = torch.randn(4).to_sparse()
    before = {k: v.clone() for k, v in opt.state[params[0]].items()}
    with pytest.raises(ValueError, match="sparse gradient"):
        opt.step()
    for key, value in opt.state[params[0]].items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key])


def test_a_nan_in_the_weights_is_skipped_and_counted_not_spread(step_path):
    # One NaN in X enters RMS(X) and with it every element's step size: the whole tensor
    # would turn NaN. It is skipped and counted, like a non-finite gradient; the other
    # parameters step.
    params, opt = make_trained(diagnostics=True)
    params[0].data[2, 3] = float("nan")
    before = [p.detach().clone() for p in params]
    state_before = copy.deepcopy(opt.state[params[0]])
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert torch.isnan(params[0][2, 3]) and int(torch.isnan(params[0]).sum()) == 1
    assert torch.equal(torch.nan_to_num(params[0]), torch.nan_to_num(before[0]))
    assert int(opt.state[params[0]]["nonfinite_skips"]) == 1
    for key in ("exp_avg_sq_row", "exp_avg_sq_col", "step"):
        assert torch.equal(opt.state[params[0]][key], state_before[key]), key
    assert bool(opt.diagnostics[params[0]]["skipped"])
    assert not bool(opt.diagnostics[params[1]]["skipped"])
    assert not torch.equal(params[1], before[1])


def test_a_nan_in_the_weights_raises_under_raise_naming_the_parameter_itself():
    params, opt = make_trained(nonfinite_grad="raise")
    params[1].data[0] = float("inf")
    for p in params:
        p.grad = torch.randn_like(p)
    snap = snapshot(opt, params)
    with pytest.raises(
        ValueError, match=r"non-finite values in parameter \(param_groups\[0\]\['params'\]\[1\]"
    ):
        opt.step()
    assert_unchanged(opt, params, snap)


# --- torch conventions: a Tensor lr --------------------------------------------------------


@pytest.mark.parametrize("relative_step", [True, False])
def test_a_tensor_lr_steps_exactly_like_the_same_float(step_path, relative_step):
    runs = []
    for lr in (3e-3, torch.tensor(3e-3)):
        params, _ = make_trained()
        opt = Adafactor(params, lr=lr, relative_step=relative_step, beta1=0.9)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (t + 1))
        gen = torch.Generator().manual_seed(2)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
            schedule.step()
        runs.append(params)
        if isinstance(lr, torch.Tensor):
            assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)  # the scheduler kept it
    for p, q in zip(*runs):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=0)


def test_a_tensor_lr_of_one_element_works_and_of_several_is_refused():
    p = torch.nn.Parameter(torch.ones(3, 2))
    Adafactor([p], lr=torch.tensor([1e-3]))
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        Adafactor([p], lr=torch.tensor([1e-3, 1e-2]))
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        Adafactor([p], lr=torch.tensor(-1.0))
    opt = Adafactor([p])
    with pytest.raises(ValueError, match=r"param_groups\[1\]: lr=.* must be 1-element"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "lr": torch.ones(2)})


def test_a_compiled_step_with_a_tensor_lr_does_not_recompile_when_it_changes():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    params = [torch.nn.Parameter(torch.randn(8, 6)), torch.nn.Parameter(torch.randn(6))]
    lr = torch.tensor(1e-2)
    opt = Adafactor(params, lr=lr, relative_step=False)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # the state is allocated outside the compiled step
    step = torch.compile(opt.step, fullgraph=True)
    graphs = []
    for k in range(4):
        for p in params:
            p.grad = torch.randn_like(p)
        step()
        lr.fill_(1e-2 / (k + 2))
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0 and graphs[1:] == graphs[:1] * 3
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(1e-2 / 5)
    torch._dynamo.reset()  # what dynamo learnt of this step's lr is not the next test's


def test_a_compiled_step_under_a_schedule_of_a_tensor_lr_compiles_once():
    # A scheduler fills a Tensor lr in place every step (as torch recommends for compiled
    # optimizers: a float lr would be a constant of the graph, recompiled when it changes).
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    params = [torch.nn.Parameter(torch.randn(8, 6)), torch.nn.Parameter(torch.randn(6))]
    opt = Adafactor(params, relative_step=False, lr=torch.tensor(1e-2))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (t + 1))
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    # The scheduler wraps opt.step in a function dynamo skips: compile the class's step.
    step = torch.compile(functools.partial(Adafactor.step, opt), fullgraph=True)
    graphs = []
    for _ in range(5):
        for p in params:
            p.grad = torch.randn_like(p)
        step()
        schedule.step()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1:] == graphs[:1] * 4
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(1e-2 / 6)
    torch._dynamo.reset()
