import torch

from adafactor import Adafactor, adam_state_bytes, optimizer_state_bytes, state_bytes


def test_prediction_matches_the_state_actually_kept():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(300, 512), torch.nn.Conv2d(4, 8, 3), torch.nn.LayerNorm(7)
    )
    for kwargs in ({}, {"beta1": 0.9}, {"factored": False}, {"factor_dims": "last"}):
        opt = Adafactor(model.parameters(), **kwargs)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        assert state_bytes(model.parameters(), **kwargs).adafactor == optimizer_state_bytes(opt)


def test_factored_matrix_keeps_n_plus_m_numbers():
    p = torch.nn.Parameter(torch.zeros(512, 2048))
    # n + m float32 statistics, a float32 step count and an int64 skip count.
    assert state_bytes([p]).adafactor == (512 + 2048) * 4 + 4 + 8
    assert state_bytes([p], beta1=0.9).adafactor == (512 + 2048 + 512 * 2048) * 4 + 12


def test_adam_state_and_ratio_on_meta_tensors():
    # A t5-small-sized matrix set on the meta device: nothing is allocated.
    params = [torch.empty(32128, 512, device="meta")] + [torch.empty(512, 2048, device="meta")] * 12
    report = state_bytes(params)
    assert report.adam == sum(2 * p.numel() * 4 + 4 for p in params)
    assert report.adam == adam_state_bytes(params)
    assert report.ratio < 0.005
