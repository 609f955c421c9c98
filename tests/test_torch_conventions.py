"""PyTorch's generic optimizer contract (the checks of its ``TestOptimRenewed`` that apply to an
Adafactor), written here for ours: the direction of a step, parameter groups, no-op steps,
printing, deterministic state dicts, older and named state dicts, ``weights_only`` loading,
deepcopy, hooks, and the error inputs torch expects of every optimizer. Two of torch's
expectations are refused on purpose (documented in the README): a parameter listed twice in
a group (torch warns, we raise) and complex parameters (torch's Adafactor refuses them too).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.nn import Parameter

from adafactor import Adafactor

INPUTS = [
    {},
    {"weight_decay": 0.1, "lr": 0.01},
    {"weight_decay": 0.1, "maximize": True},
    {"beta1": 0.9},
    {"decay_rate": 1.0, "clip_threshold": 1.5},
    {"relative_step": False, "lr": 1e-2, "scale_parameter": False},
    {"lr": torch.tensor(1e-2)},
]


def _loss(weight, bias, x):
    return (weight.mv(x) + bias).pow(2).sum()


@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("kwargs", INPUTS, ids=str)
def test_a_step_goes_the_right_direction(step_path, kwargs, contiguous):
    torch.manual_seed(0)
    if contiguous:
        weight, bias = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10))
    else:  # views with strides: stepped eagerly and written back
        weight = Parameter(torch.randn(10, 5, 2)[..., 0])
        bias = Parameter(torch.randn(10, 2)[..., 0])
    x = torch.randn(5)
    opt = Adafactor([weight, bias], **kwargs)

    def closure():
        opt.zero_grad()
        loss = _loss(weight, bias, x)
        loss.backward()
        return loss

    initial = closure().item()
    for _ in range(20):
        opt.step(closure)
    if kwargs.get("maximize"):
        assert closure().item() > initial
    else:
        assert closure().item() < initial


@pytest.mark.parametrize("kwargs", INPUTS, ids=str)
def test_param_groups_with_their_own_weight_decay_and_lr(kwargs):
    torch.manual_seed(1)
    weight, bias = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10))
    irrelevant = Parameter(torch.randn(2))
    before = irrelevant.detach().clone()
    x = torch.randn(5)
    groups = [
        {"params": [weight], **kwargs},
        {"params": [bias], **{**kwargs, "weight_decay": 0.0}},
        {"params": [irrelevant], "lr": 1e-28},  # ρ_t ≤ lr: no visible move
    ]
    opt = Adafactor(groups)
    initial = _loss(weight, bias, x).item()
    for _ in range(20):
        opt.zero_grad()
        _loss(weight, bias, x).backward()
        irrelevant.grad = torch.rand_like(irrelevant)
        opt.step()
    loss = _loss(weight, bias, x).item()
    assert loss > initial if kwargs.get("maximize") else loss < initial
    torch.testing.assert_close(irrelevant.detach(), before, rtol=1e-20, atol=1e-20)


@pytest.mark.parametrize("kwargs", INPUTS, ids=str)
def test_a_step_without_gradients_or_with_zero_ones_changes_nothing(kwargs):
    params = [torch.randn(2, 3) for _ in range(2)]  # no requires_grad, no grad
    before = [p.clone() for p in params]
    Adafactor(params, **kwargs).step(lambda: torch.tensor([1.0]))
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    if kwargs.get("weight_decay", 0):
        return  # decay moves the parameter whatever its gradient
    p = torch.randn(5, 1, requires_grad=True)
    before = p.detach().clone()
    p.grad = torch.zeros_like(p)
    Adafactor([p], **kwargs).step()
    assert torch.equal(p.detach(), before)


def test_the_optimizer_can_be_printed():
    text = repr(Adafactor([Parameter(torch.randn(2, 3))], beta1=0.9))
    assert (
        text.startswith("Adafactor (") and "beta1: 0.9" in text and "rms_per_slice: False" in text
    )


@pytest.mark.parametrize("kwargs", INPUTS, ids=str)
def test_the_state_dict_is_deterministic_and_resumes_exactly(step_path, kwargs):
    torch.manual_seed(2)
    weight, bias, x = Parameter(torch.randn(2, 3)), Parameter(torch.randn(2)), torch.randn(3)

    def run(opt, w, b, steps):
        for _ in range(steps):
            opt.zero_grad()
            _loss(w, b, x).backward()
            opt.step()

    opt = Adafactor([weight, bias], **kwargs)
    run(opt, weight, bias, 10)
    with torch.no_grad():
        weight_c, bias_c = Parameter(weight.clone()), Parameter(bias.clone())
    opt_c = Adafactor([weight_c, bias_c], **kwargs)
    opt_c.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(10):
        run(opt, weight, bias, 1)
        run(opt_c, weight_c, bias_c, 1)
        assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c)
    mine, theirs = opt.state_dict(), opt_c.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    for pid, entries in mine["state"].items():
        assert all(torch.equal(v, theirs["state"][pid][k]) for k, v in entries.items())
    # Repeated groups are represented identically (torch #36831).
    opt_c.param_groups.extend(opt_c.param_groups)
    assert opt.state_dict()["param_groups"][-1] == opt_c.state_dict()["param_groups"][-1]


@pytest.mark.parametrize("kwargs", INPUTS, ids=str)
def test_an_older_state_dict_without_the_newer_flags_loads_and_steps(kwargs):
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2))
    x = torch.rand(1, 4, 16, 16)
    opt = Adafactor(model.parameters(), **kwargs)
    for _ in range(3):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:  # torch's "new flags", and ours from 0.2.0
        for flag in (
            "maximize",
            "foreach",
            "fused",
            "differentiable",
            "capturable",
            "beta2_cap",
            "decay_offset",
            "rms_per_slice",
        ):
            group.pop(flag, None)
    opt.load_state_dict(old)
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()
    assert opt.param_groups[0]["rms_per_slice"] is False


def test_named_parameters_give_named_state_dicts_and_errors():
    model = torch.nn.Linear(3, 2)
    opt = Adafactor(model.named_parameters())
    assert opt.param_groups[0]["param_names"] == ["weight", "bias"]
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]
    model.weight.grad = torch.randn(2, 3).to_sparse()
    with pytest.raises(ValueError, match=r"parameter 'weight' \(param_groups\[0\]"):
        opt.step()


def test_the_state_dict_loads_with_weights_only():
    p = Parameter(torch.randn(4, 3))
    opt = Adafactor([p], beta1=0.9, momentum_dtype=torch.bfloat16, lr=torch.tensor(0.01))
    p.grad = torch.randn_like(p)
    opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = Adafactor([Parameter(p.detach().clone())], beta1=0.9, momentum_dtype=torch.bfloat16)
    fresh.load_state_dict(loaded)
    assert fresh.state_dict()["param_groups"][0]["momentum_dtype"] == torch.bfloat16


def test_deepcopy_copies_every_public_attribute():
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.rand_like(p)
    opt = Adafactor(params, diagnostics=True)
    for _ in range(3):
        opt.step()
    public = {k for k in opt.__dict__ if not k.startswith("_")}
    copied = copy.deepcopy(opt)
    assert public == {k for k in copied.__dict__ if not k.startswith("_")}
    copied.step()  # the copy steps on its own (its plans are rebuilt for its tensors)


def test_step_and_state_dict_hooks_run():
    p = Parameter(torch.randn(3, 2))
    p.grad = torch.randn_like(p)
    opt = Adafactor([p])
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("state_dict") or sd)
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load pre") or sd)
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load post"))
    opt.step()
    opt.load_state_dict(opt.state_dict())
    assert calls == ["pre", "post", "state_dict", "load pre", "load post"]


def test_the_error_inputs_torch_expects_of_every_optimizer():
    sample, other = Parameter(torch.randn(1, 1)), Parameter(torch.randn(1, 1))
    with pytest.raises(TypeError, match="params argument given to the optimizer should be"):
        Adafactor(sample)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter"):
        Adafactor([{"params": sample}, {"params": sample}])
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        Adafactor([sample], lr=torch.tensor([0.001, 0.001]))
    with pytest.raises(ValueError, match="all optimizer params should be with/without names"):
        Adafactor([("weight", sample), other])


def test_the_two_deliberate_refusals():
    sample = Parameter(torch.randn(2, 2))
    # torch warns and steps the parameter twice per step; we refuse, naming it.
    with pytest.raises(ValueError, match="appears more than once in its group"):
        Adafactor([sample, sample])
    # A complex parameter: optimize torch.view_as_real(p) instead (as torch's Adafactor).
    with pytest.raises(ValueError, match="is complex"):
        Adafactor([Parameter(torch.randn(2, 2, dtype=torch.complex64))])
