"""Bad input gets a clear error naming the culprit, and changes nothing."""

import copy

import pytest
import torch

from adafactor import Adafactor
from helpers import assert_unchanged, make_trained, snapshot


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": "0.01"}, "lr"),
        ({"eps": (0.0, 1e-3)}, "eps"),
        ({"eps": (1e-30, -1.0)}, "eps"),
        ({"eps": 1e-30}, "eps"),
        ({"clip_threshold": 0.0}, "clip_threshold"),
        ({"decay_rate": -0.8}, "decay_rate"),
        ({"decay_rate": 1.5}, "decay_rate"),
        ({"beta1": 1.0}, "beta1"),
        ({"beta2": -0.1}, "beta2"),
        ({"momentum_of": "nesterov"}, "momentum_of"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"weight_decay_scale": "alpha_t"}, "weight_decay_scale"),
        ({"relative_step": 1}, "relative_step"),
        ({"warmup_init": True, "relative_step": False}, "warmup_init"),
        ({"min_dim_size_to_factor": 0}, "min_dim_size_to_factor"),
        ({"factor_dims": "first"}, "factor_dims"),
        ({"nonfinite_grad": "ignore"}, "nonfinite_grad"),
    ],
)
def test_invalid_options_are_named(kwargs, culprit):
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=rf"{culprit}="):
        Adafactor([p], **kwargs)
    opt = Adafactor([p])
    with pytest.raises(ValueError, match=rf"{culprit}="):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], **kwargs})
    assert len(opt.param_groups) == 1


def test_negative_decay_rate_hints_at_sign_convention():
    with pytest.raises(ValueError, match=r"write 0\.8"):
        Adafactor([torch.nn.Parameter(torch.ones(3))], decay_rate=-0.8)


def test_complex_and_integer_params_are_refused():
    with pytest.raises(ValueError, match=r"params'\]\[1\].*complex"):
        Adafactor(
            [
                torch.nn.Parameter(torch.ones(2)),
                torch.nn.Parameter(torch.ones(2, dtype=torch.complex64)),
            ]
        )
    opt = Adafactor([torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="complex"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))]})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match="floating-point"):
        Adafactor([torch.ones(2, dtype=torch.int64)])


def test_duplicate_and_non_leaf_params_are_refused():
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="more than one parameter group"):
        Adafactor([{"params": [p]}, {"params": [p]}])
    with pytest.raises(ValueError, match="non-leaf"):
        Adafactor([p * 2])


def test_sparse_gradient_raises_before_anything_changes():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    dense = torch.nn.Parameter(torch.ones(3, 3))
    opt = Adafactor([dense, emb.weight])
    dense.grad = torch.ones(3, 3)
    emb(torch.tensor([1, 2])).sum().backward()
    snap = snapshot(opt, [dense, emb.weight])
    with pytest.raises(ValueError, match=r"params'\]\[1\].*sparse"):
        opt.step()
    assert_unchanged(opt, [dense, emb.weight], snap)
    assert not opt.state  # not even lazily initialised


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(
    "kwargs", [{}, {"beta1": 0.9}, {"factored": False}, {"beta1": 0.9, "momentum_of": "gradient"}]
)
def test_nonfinite_gradient_is_skipped_and_counted(bad, kwargs):
    params, opt = make_trained(**kwargs)
    good_grad = torch.randn(4)
    bad_grad = torch.randn(6, 5)
    bad_grad[2, 3] = bad
    before_bad = copy.deepcopy(opt.state[params[0]])
    values = params[0].detach().clone()
    params[0].grad, params[1].grad = bad_grad, good_grad
    opt.step()
    # The poisoned parameter and its row/column statistics are untouched...
    assert torch.equal(params[0], values)
    for key, value in before_bad.items():
        if key != "nonfinite_skips":
            assert torch.equal(opt.state[params[0]][key], value), key
    assert int(opt.state[params[0]]["nonfinite_skips"]) == 1
    # ...while the healthy parameter stepped as usual.
    assert int(opt.state[params[1]]["step"]) == 4
    # Training goes on cleanly afterwards.
    params[0].grad = torch.randn(6, 5)
    opt.step()
    assert torch.isfinite(params[0]).all()
    assert all(torch.isfinite(v).all() for v in opt.state[params[0]].values())
    assert int(opt.state[params[0]]["step"]) == 4


def test_nonfinite_gradient_can_raise_naming_the_parameter():
    params, opt = make_trained(nonfinite_grad="raise")
    params[0].grad = torch.randn(6, 5)
    params[1].grad = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    snap = snapshot(opt, params)
    with pytest.raises(
        ValueError,
        match=r"non-finite gradient in parameter "
        r"\(param_groups\[0\]\['params'\]\[1\], shape \(4,\)\)",
    ):
        opt.step()
    assert_unchanged(opt, params, snap)


def test_changed_factoring_option_after_state_exists_is_named():
    params, opt = make_trained()
    for p in params:
        p.grad = torch.randn_like(p)
    snap = snapshot(opt, params)
    opt.param_groups[0]["factored"] = False
    with pytest.raises(ValueError, match=r"params'\]\[0\].*state has keys"):
        opt.step()
    opt.param_groups[0]["factored"] = True
    assert_unchanged(opt, params, snap)


def test_load_state_dict_mismatches_are_named_and_change_nothing():
    params, opt = make_trained()
    good = copy.deepcopy(opt.state_dict())
    snap = snapshot(opt, params)

    wrong_shape = copy.deepcopy(good)
    wrong_shape["state"][0]["exp_avg_sq_row"] = torch.zeros(7, 1)
    with pytest.raises(
        ValueError,
        match=r"params'\]\[0\], shape \(6, 5\)\): state\['exp_avg_sq_row'\] has shape \(7, 1\)",
    ):
        opt.load_state_dict(wrong_shape)

    missing_key = copy.deepcopy(good)
    del missing_key["state"][1]["exp_avg_sq"]
    with pytest.raises(ValueError, match=r"params'\]\[1\].*state has keys"):
        opt.load_state_dict(missing_key)

    two_groups = copy.deepcopy(good)
    two_groups["param_groups"].append(copy.deepcopy(two_groups["param_groups"][0]))
    with pytest.raises(ValueError, match="2 parameter groups"):
        opt.load_state_dict(two_groups)

    other_size = copy.deepcopy(good)
    other_size["param_groups"][0]["params"] = [0]
    with pytest.raises(ValueError, match="1 parameters in the state dict, 2"):
        opt.load_state_dict(other_size)

    bad_option = copy.deepcopy(good)
    bad_option["param_groups"][0]["decay_rate"] = -0.8
    with pytest.raises(ValueError, match="decay_rate"):
        opt.load_state_dict(bad_option)

    # A state dict from HF's Adafactor: other options, other state layout.
    hf_like = {
        "state": {
            0: {
                "step": 3,
                "exp_avg_sq_row": torch.zeros(6),
                "exp_avg_sq_col": torch.zeros(5),
                "RMS": 1.0,
            }
        },
        "param_groups": [
            {
                "lr": None,
                "eps": (1e-30, 1e-3),
                "clip_threshold": 1.0,
                "decay_rate": -0.8,
                "beta1": None,
                "weight_decay": 0.0,
                "scale_parameter": True,
                "relative_step": True,
                "warmup_init": False,
                "params": [0, 1],
            }
        ],
    }
    with pytest.raises(ValueError, match=r"was not saved by adafactor\.Adafactor"):
        opt.load_state_dict(hf_like)

    assert_unchanged(opt, params, snap)
    opt.load_state_dict(good)  # and the good one still loads


def test_options_changed_after_construction_are_checked_at_step():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Adafactor([p])
    p.grad = torch.ones(3)
    opt.param_groups[0]["clip_threshold"] = -1.0
    with pytest.raises(ValueError, match=r"param_groups\[0\]: clip_threshold=-1.0"):
        opt.step()
    assert not opt.state
