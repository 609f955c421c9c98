"""Checkpoints saved by HF's, torch's, timm's and pytorch_optimizer's Adafactor, loaded into
ours: training goes on as the peer's would. Real peer checkpoints, made here, round-tripped
through ``torch.save``.

Tolerances as in test_presets.py (float64, both sides differ only by round-off in another
order of operations): rtol=1e-10 over 5 + 6 steps.
"""

from __future__ import annotations

import io

import pytest
import torch

from adafactor import Adafactor
from adafactor.bench.peers import peer_optimizer_class
from adafactor.migrate import convert_state_dict, from_peer_state_dict
from adafactor.presets import like

SHAPES = [(24, 40), (40,), (32, 20, 3, 3), (5, 24, 40), (1, 30)]
RTOL, ATOL = 1e-10, 1e-13


def require(peer):
    try:
        return peer_optimizer_class(peer)
    except ImportError as error:
        pytest.skip(f"{peer}: {error}")


def make_params():
    gen = torch.Generator().manual_seed(0)
    return [
        (0.1 * torch.randn(s, generator=gen, dtype=torch.float64)).requires_grad_() for s in SHAPES
    ]


def step(opt, params, index):
    gen = torch.Generator().manual_seed(10 + index)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
    opt.step()


def saved(opt) -> dict:
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


CASES = [
    ("hf", {}),
    ("hf", {"beta1": 0.9, "weight_decay": 0.01}),
    ("hf", {"lr": 1e-3, "relative_step": False, "warmup_init": False, "decay_rate": -0.6}),
    ("torch", {}),
    ("torch", {"lr": 3e-3, "weight_decay": 0.1, "eps": (1e-12, 1e-3)}),
    ("timm", {}),
    ("timm", {"betas": (0.9, 0.999), "lr": 1e-2}),
    ("pytorch_optimizer", {"betas": (None, 0.99)}),
    ("pytorch_optimizer", {"lr": 1e-3, "relative_step": False, "betas": (None, 0.999)}),
]


@pytest.mark.parametrize("peer, kwargs", CASES, ids=str)
@pytest.mark.parametrize("how", ["optimizer", "params"])
def test_resumed_run_continues_the_peers_trajectory(peer, kwargs, how):
    cls = require(peer)
    params = make_params()
    theirs = cls(params, **kwargs)
    for i in range(5):
        step(theirs, params, i)
    checkpoint = saved(theirs)

    ours_params = [p.detach().clone().requires_grad_() for p in params]
    if how == "optimizer":
        ours = like(peer, ours_params, **kwargs)
        ours.load_state_dict(convert_state_dict(peer, checkpoint, ours))
    else:
        ours = from_peer_state_dict(peer, checkpoint, ours_params)
    assert all(float(s["step"]) == 5.0 for s in ours.state.values())
    for i in range(5, 11):
        step(theirs, params, i)
        step(ours, ours_params, i)
        for a, b in zip(params, ours_params):
            torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL, msg=f"step {i}")


def test_pytorch_optimizer_options_it_does_not_save_come_from_the_optimizer():
    # Its momentum dtype and decay rate live on the optimizer, not in the state dict: given
    # an optimizer built with them, the conversion keeps them and the run goes on as theirs.
    cls = require("pytorch_optimizer")
    kwargs = {"momentum_dtype": torch.float64, "decay_rate": -0.6, "weight_decay": 0.01}
    params = make_params()
    theirs = cls(params, **kwargs)
    for i in range(5):
        step(theirs, params, i)
    checkpoint = saved(theirs)
    ours_params = [p.detach().clone().requires_grad_() for p in params]
    ours = like("pytorch_optimizer", ours_params, **kwargs)
    ours.load_state_dict(convert_state_dict("pytorch_optimizer", checkpoint, ours))
    assert ours.state[ours_params[0]]["exp_avg"].dtype == torch.float64
    for i in range(5, 11):
        step(theirs, params, i)
        step(ours, ours_params, i)
        for a, b in zip(params, ours_params):
            torch.testing.assert_close(b, a, rtol=RTOL, atol=ATOL, msg=f"step {i}")


def test_a_fresh_optimizer_would_not_continue_the_trajectory():
    """The converted state matters: without it, the next step differs by far more than RTOL."""
    cls = require("hf")
    params = make_params()
    theirs = cls(params)
    for i in range(5):
        step(theirs, params, i)
    fresh_params = [p.detach().clone().requires_grad_() for p in params]
    fresh = like("hf", fresh_params)
    step(theirs, params, 5)
    step(fresh, fresh_params, 5)
    assert max((a - b).abs().max().item() for a, b in zip(params, fresh_params)) > 1e-4


def test_torch_statistics_gain_eps1_squared_and_the_scheduled_lr_carries_over():
    params = make_params()
    theirs = torch.optim.Adafactor(params, lr=0.02, eps=(1e-6, 1e-3))
    scheduler = torch.optim.lr_scheduler.StepLR(theirs, step_size=1, gamma=0.5)
    for i in range(3):
        step(theirs, params, i)
        scheduler.step()
    checkpoint = saved(theirs)
    ours = like("torch", [p.detach().clone() for p in params], lr=0.02, eps=(1e-6, 1e-3))
    converted = convert_state_dict("torch", checkpoint, ours)
    assert converted["param_groups"][0]["lr"] == pytest.approx(0.02 / 8)
    row = checkpoint["state"][0]["row_var"]
    torch.testing.assert_close(converted["state"][0]["exp_avg_sq_row"], row + 1e-12)
    ours.load_state_dict(converted)
    assert ours.param_groups[0]["lr"] == pytest.approx(0.0025)


def _hf_checkpoint(**kwargs):
    cls = require("hf")
    params = make_params()
    opt = cls(params, **kwargs)
    step(opt, params, 0)
    return saved(opt), params


def test_unknown_peer_is_refused_naming_the_convertible_ones():
    checkpoint, params = _hf_checkpoint()
    with pytest.raises(ValueError, match=r"'fairseq'.*hf, torch, timm, pytorch_optimizer"):
        convert_state_dict("fairseq", checkpoint, params)


def test_a_checkpoint_of_another_peer_is_refused():
    params = make_params()
    opt = torch.optim.Adafactor(params)
    step(opt, params, 0)
    with pytest.raises(ValueError, match=r"param_groups\[0\] .* lacks hf's option"):
        convert_state_dict("hf", saved(opt), Adafactor(params))


def test_options_that_differ_from_the_optimizers_are_named():
    checkpoint, params = _hf_checkpoint(beta1=0.9)
    with pytest.raises(ValueError, match=r"parameter 0 .* beta1=0.9, the optimizer has None"):
        convert_state_dict("hf", checkpoint, like("hf", params))


def test_parameter_count_mismatch_is_refused():
    checkpoint, params = _hf_checkpoint()
    with pytest.raises(ValueError, match="5 parameters, the optimizer 4"):
        convert_state_dict("hf", checkpoint, like("hf", params[:4]))


def test_state_the_peer_never_saves_is_refused():
    checkpoint, params = _hf_checkpoint()
    checkpoint["state"][0]["exp_avg_sq_hat"] = torch.zeros(24, 40)
    with pytest.raises(ValueError, match=r"parameter 0 .*never saves state \['exp_avg_sq_hat'\]"):
        convert_state_dict("hf", checkpoint, like("hf", params))


def test_timm_caution_cannot_be_converted():
    cls = require("timm")
    params = make_params()
    opt = cls(params, caution=True, betas=(0.9, 0.999))
    step(opt, params, 0)
    with pytest.raises(ValueError, match="caution=True cannot be reproduced"):
        convert_state_dict("timm", saved(opt), params)
