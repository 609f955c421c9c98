"""Bad input beyond test_errors.py: every other invalid hyperparameter value, wherever it can
enter (constructor, ``add_param_group``, a loaded state dict), real peer state dicts, duplicate
parameters within a group, and gradients whose dtype torch no longer forces to match."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from adafactor import Adafactor
from helpers import assert_unchanged, make_trained, snapshot

INVALID = [
    ("lr", float("inf")),
    ("lr", True),
    ("lr", None),
    ("eps", (1e-30,)),
    ("eps", (float("nan"), 1e-3)),
    ("eps", (1e-30, float("inf"))),
    ("eps", (1e-30, 1e-3, 0.0)),
    ("clip_threshold", -1.0),
    ("clip_threshold", float("nan")),
    ("clip_threshold", float("inf")),
    ("decay_rate", 0.0),
    ("decay_rate", float("nan")),
    ("beta1", -0.1),
    ("beta1", "0.9"),
    ("beta2", 1.0),
    ("beta2", float("nan")),
    ("momentum_of", None),
    ("weight_decay", float("nan")),
    ("weight_decay", float("inf")),
    ("weight_decay_scale", None),
    ("relative_step", "yes"),
    ("warmup_init", 1),
    ("scale_parameter", None),
    ("factored", 1),
    ("maximize", "no"),
    ("diagnostics", 1),
    ("min_dim_size_to_factor", 2.0),
    ("min_dim_size_to_factor", True),
    ("factor_dims", None),
    ("nonfinite_grad", None),
]


@pytest.mark.parametrize("name, value", INVALID, ids=[f"{n}={v!r}" for n, v in INVALID])
def test_every_invalid_option_is_named_wherever_it_enters(name, value):
    culprit = re.escape(f"{name}={value!r}")
    with pytest.raises(ValueError, match=culprit):
        Adafactor([torch.nn.Parameter(torch.ones(3))], **{name: value})
    params, opt = make_trained()
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=culprit):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], name: value})
    assert len(opt.param_groups) == 1
    bad = copy.deepcopy(opt.state_dict())
    bad["param_groups"][0][name] = value
    with pytest.raises(ValueError, match=rf"param_groups\[0\] of the state dict: {culprit}"):
        opt.load_state_dict(bad)
    assert_unchanged(opt, params, snap)


def test_a_real_torch_adafactor_state_dict_is_refused_without_the_converter():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(4))]
    theirs = torch.optim.Adafactor(params)
    for p in params:
        p.grad = torch.randn_like(p)
    theirs.step()
    ours_params, opt = make_trained()
    snap = snapshot(opt, ours_params)
    with pytest.raises(ValueError, match=r"was not saved by adafactor\.Adafactor"):
        opt.load_state_dict(theirs.state_dict())
    assert_unchanged(opt, ours_params, snap)


def test_malformed_state_dicts_are_named_and_change_nothing():
    params, opt = make_trained()
    good = copy.deepcopy(opt.state_dict())
    snap = snapshot(opt, params)
    cases = []
    no_state = copy.deepcopy(good)
    del no_state["state"]
    cases.append((no_state, "it has no 'state'"))
    unknown = copy.deepcopy(good)
    unknown["state"][7] = copy.deepcopy(unknown["state"][1])
    cases.append((unknown, r"unknown parameter ids \[7\]"))
    integer = copy.deepcopy(good)
    integer["state"][1]["exp_avg_sq"] = torch.ones(4, dtype=torch.int64)
    cases.append((integer, r"params'\]\[1\].*exp_avg_sq'\] has dtype torch.int64"))
    not_a_tensor = copy.deepcopy(good)
    not_a_tensor["state"][0]["exp_avg_sq_col"] = [0.0] * 5
    cases.append((not_a_tensor, r"params'\]\[0\].*exp_avg_sq_col'\] has shape list"))
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            opt.load_state_dict(bad)
        assert_unchanged(opt, params, snap)


def test_duplicate_parameter_within_a_group_is_refused():
    # Across groups this is refused (test_errors); within one group torch only warns, and
    # the parameter would then be stepped twice per step with its step count run double.
    p = torch.nn.Parameter(torch.ones(3))
    q = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"duplicate|more than once"):
        Adafactor([p, q, p])


def test_a_complex_gradient_on_a_real_parameter_is_refused():
    # torch lets a gradient's dtype differ from its parameter's once grad_dtype is None.
    params, opt = make_trained()
    params[0].grad = torch.randn(6, 5)
    params[1].grad_dtype = None
    params[1].grad = torch.randn(4, dtype=torch.complex64)
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"params'\]\[1\], shape \(4,\)\) has a complex gradient"):
        opt.step()
    assert_unchanged(opt, params, snap)


def test_a_gradient_of_another_float_dtype_is_used_at_the_state_precision(step_path):
    # A float64 gradient on a bfloat16 parameter (allowed with grad_dtype=None) steps as its
    # float32 rounding does on the eager step: the math runs at the state's float32.
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)).bfloat16()
    g = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    a.grad_dtype = None
    a.grad = g
    b.grad_dtype = None
    b.grad = g.float()
    Adafactor([a]).step()  # on step_path
    Adafactor([b], fused=False).step()  # the eager step, from the float32 rounding
    assert a.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=2**-7 * b.abs().max().item())
