"""numpy scalars are options wherever torch takes Python numbers (numpy registers them as
``numbers.Real`` and ``numbers.Integral``), and step exactly as the same Python numbers on
every step path; bools, numpy's included, are still refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adafactor import Adafactor
from adafactor.options import Hyperparameters

NUMPY = {
    "lr": np.float32(1e-2),
    "weight_decay": np.float64(0.1),
    "decay_offset": np.int64(2),
    "eps": (np.float32(1e-30), np.float32(1e-3)),
    "clip_threshold": np.float32(1.0),
}
# The same values as Python numbers (np.float32(1e-2) is 0.009999999776482582).
PYTHON = {
    "lr": float(np.float32(1e-2)),
    "weight_decay": 0.1,
    "decay_offset": 2,
    "eps": (float(np.float32(1e-30)), float(np.float32(1e-3))),
    "clip_threshold": 1.0,
}
LATER_LR = (np.float32(3e-3), float(np.float32(3e-3)))


def train(options: dict, later_lr: float | np.floating) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype))
        for s, dtype in [((6, 5), torch.float32), ((4,), torch.float32), ((6, 5), torch.bfloat16)]
    ]
    opt = Adafactor(params, beta1=0.9, **options)
    for k in range(4):
        if k == 2:
            opt.param_groups[0]["lr"] = later_lr  # as a scheduler or a user would
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        opt.step()
    state = [v for p in params for v in opt.state[p].values()]
    return [p.detach() for p in params] + state


def test_numpy_scalars_step_exactly_as_the_same_python_numbers(step_path):
    # The same path both times: the property is bit-identity with Python numbers.
    mine, expected = train(NUMPY, LATER_LR[0]), train(PYTHON, LATER_LR[1])
    for a, b in zip(mine, expected):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_the_step_reads_numpy_scalars_as_python_numbers():
    group = {**Adafactor([torch.nn.Parameter(torch.ones(2))]).defaults, **NUMPY}
    hp = Hyperparameters.from_group(group)
    for name, value in PYTHON.items():
        assert getattr(hp, name) == value
    assert type(hp.lr) is float and type(hp.decay_offset) is int
    assert type(hp.weight_decay) is float  # np.float64 subclasses float, but is not one
    assert all(type(e) is float for e in hp.eps)


@pytest.mark.parametrize(
    "options",
    [
        {"lr": True},
        {"lr": np.bool_(True)},
        {"decay_offset": True},
        {"decay_offset": np.float64(2.0)},  # a count must be an integer
        {"min_dim_size_to_factor": np.int64(0)},
        {"lr": np.float32("nan")},
        {"eps": (np.float32(0.0), 1e-3)},
    ],
    ids=repr,
)
def test_bools_and_out_of_range_numpy_scalars_are_refused(options):
    (name,) = options
    with pytest.raises(ValueError, match=f"{name}="):
        Adafactor([torch.nn.Parameter(torch.ones(2))], **options)


def test_numpy_options_save_as_plain_numbers_that_load_with_weights_only(tmp_path):
    # torch.load(weights_only=True), torch's default, refuses numpy scalars in a checkpoint.
    params = [torch.nn.Parameter(torch.randn(4, 3))]
    opt = Adafactor(params, lr=np.float32(1e-2), weight_decay=np.float64(0.1))
    opt.param_groups[0]["decay_offset"] = np.int64(2)  # set later, as a sweep tool may
    params[0].grad = torch.randn(4, 3)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    saved = torch.load(tmp_path / "opt.pt", weights_only=True)
    group = saved["param_groups"][0]
    assert type(group["lr"]) is float and type(group["decay_offset"]) is int
