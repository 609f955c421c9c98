"""Adafactor as a torch.optim.Optimizer: groups, state_dict, closure, hooks, schedulers, dtypes."""

import copy
import io
import math
import pickle

import pytest
import torch

from adafactor import Adafactor
from adafactor.reference import ReferenceAdafactor


def make_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3)).to(
        dtype
    )


def batch(step, dtype=torch.float32):
    """Minibatch ``step`` of a fixed regression set of 4 batches."""
    gen = torch.Generator().manual_seed(1000 + step % 4)
    x = torch.randn(16, 12, generator=gen).to(dtype)
    return x, torch.sin(x[:, :3])


def train(model, opt, steps, start=0, scheduler=None):
    for s in range(start, start + steps):
        x, y = batch(s, next(model.parameters()).dtype)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return loss.item()


def test_trains_a_small_model():
    model = make_model()
    opt = Adafactor(model.parameters())
    first = train(model, opt, 1)
    last = train(model, opt, 300, start=1)
    assert last < 0.5 * first


def test_param_groups_have_their_own_options():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    b = torch.randn(10, generator=gen, dtype=torch.float64)
    pa, pb = a.clone().requires_grad_(), b.clone().requires_grad_()
    opt = Adafactor(
        [{"params": [pa]}, {"params": [pb], "relative_step": False, "lr": 0.05, "beta1": 0.9}],
        clip_threshold=None,
    )
    ref_a = ReferenceAdafactor([a], clip_threshold=None)
    ref_b = ReferenceAdafactor([b], relative_step=False, lr=0.05, beta1=0.9, clip_threshold=None)
    for _ in range(5):
        ga, gb = (
            torch.randn(8, 6, generator=gen, dtype=torch.float64),
            torch.randn(10, generator=gen, dtype=torch.float64),
        )
        pa.grad, pb.grad = ga, gb
        opt.step()
        ref_a.step([ga])
        ref_b.step([gb])
    torch.testing.assert_close(pa.detach(), ref_a.params[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(pb.detach(), ref_b.params[0], rtol=1e-12, atol=0)
    assert "exp_avg" in opt.state[pb] and "exp_avg" not in opt.state[pa]


def test_add_param_group_mid_training():
    model = make_model()
    extra = torch.nn.Parameter(torch.randn(5, 4))
    opt = Adafactor(model.parameters())
    train(model, opt, 3)
    opt.add_param_group({"params": [extra], "weight_decay": 0.1})
    extra.grad = torch.ones(5, 4)
    before = extra.detach().clone()
    opt.step()
    assert opt.param_groups[1]["weight_decay"] == 0.1
    assert int(opt.state[extra]["step"]) == 1
    assert not torch.equal(extra.detach(), before)


def test_state_dict_resume_is_bit_identical():
    for dtype in (torch.float32, torch.bfloat16):
        kwargs = dict(beta1=0.9, weight_decay=0.01)
        model = make_model(dtype=dtype)
        opt = Adafactor(model.parameters(), **kwargs)
        train(model, opt, 10)
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
        train(model, opt, 10, start=10)

        buffer.seek(0)
        saved = torch.load(buffer)
        resumed = make_model(seed=123, dtype=dtype)
        resumed.load_state_dict(saved["model"])
        opt2 = Adafactor(resumed.parameters(), **kwargs)
        opt2.load_state_dict(saved["opt"])
        # 16-bit parameters keep float32 statistics through the round trip.
        state = opt2.state[resumed[0].weight]
        assert state["exp_avg_sq_row"].dtype == torch.float32
        train(resumed, opt2, 10, start=10)
        for p, q in zip(model.parameters(), resumed.parameters()):
            assert torch.equal(p, q)
        for p, q in zip(model.parameters(), resumed.parameters()):
            for key, value in opt.state[p].items():
                assert torch.equal(value, opt2.state[q][key]), key
                assert value.dtype == opt2.state[q][key].dtype


def test_closure_can_compute_gradients():
    # HF's Adafactor runs the closure under no_grad, so backward() inside it fails.
    model = make_model()
    opt = Adafactor(model.parameters())
    x, y = batch(0)

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_maximize_ascends_without_touching_grad():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    g = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    up = x0.clone().requires_grad_()
    down = x0.clone().requires_grad_()
    up.grad, down.grad = g.clone(), -g.clone()
    Adafactor([up], maximize=True).step()
    Adafactor([down]).step()
    assert torch.equal(up.grad, g)  # pytorch_optimizer negates p.grad in place
    torch.testing.assert_close(up.detach(), down.detach(), rtol=0, atol=0)


def test_zero_grad_and_params_without_grad():
    model = make_model()
    opt = Adafactor(model.parameters())
    train(model, opt, 2)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    frozen = model[2].bias
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    steps_before = int(opt.state[frozen]["step"])
    train(model, opt, 3, start=2)
    assert torch.equal(frozen, before)
    assert int(opt.state[frozen]["step"]) == steps_before


def test_step_hooks_run():
    model = make_model()
    opt = Adafactor(model.parameters())
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    train(model, opt, 2)
    assert calls == ["pre", "post", "pre", "post"]


def test_lr_schedulers_drive_the_step_and_lr_is_never_rewritten():
    # HF Trainer's default: linear warm-up then linear decay, a LambdaLR on group["lr"].
    warmup, total = 5, 20

    def linear(step):
        if step < warmup:
            return step / warmup
        return max(0.0, (total - step) / (total - warmup))

    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = Adafactor([p])
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, linear)
    lrs = []
    for t in range(1, total + 1):
        lr = opt.param_groups[0]["lr"]
        lrs.append(lr)
        p.grad = torch.ones(3, dtype=torch.float64)
        before = p.detach().clone()
        opt.step()
        scheduler.step()
        # First step: U = sign(G) = 1, RMS(X) may be 0 -> alpha = max(eps2, RMS(X)) rho_t.
        rho = min(lr, 1 / math.sqrt(t))
        expected_alpha = max(1e-3, before.pow(2).mean().sqrt().item()) * rho
        torch.testing.assert_close(
            before - p.detach(),
            torch.full((3,), expected_alpha, dtype=torch.float64),
            rtol=1e-12,
            atol=1e-300,
        )
    assert lrs[0] == 0.0 and lrs[warmup] == pytest.approx(1e-2)
    # fairseq writes the computed step size back into group["lr"]; ours never does.
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * linear(total))
    for scheduler_cls, kwargs in [
        (torch.optim.lr_scheduler.CosineAnnealingLR, {"T_max": 10}),
        (
            torch.optim.lr_scheduler.OneCycleLR,
            {"max_lr": 1e-2, "total_steps": 10, "cycle_momentum": False},
        ),
        (torch.optim.lr_scheduler.StepLR, {"step_size": 2}),
    ]:
        model = make_model()
        opt = Adafactor(model.parameters())
        sched = scheduler_cls(opt, **kwargs)
        train(model, opt, 8, scheduler=sched)
        assert all(math.isfinite(p.sum().item()) for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_dtypes_train_and_keep_state_in_float32_or_wider(dtype):
    model = make_model(dtype=dtype)
    opt = Adafactor(model.parameters())
    first = train(model, opt, 1)
    last = train(model, opt, 150, start=1)
    assert last < first
    for p in model.parameters():
        assert p.dtype == dtype
        for key, value in opt.state[p].items():
            if key.startswith("exp_avg"):
                assert value.dtype == (
                    torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
                )


def test_bf16_steps_are_as_large_as_fp32_steps():
    # torch's Adafactor clamps by eps1 = bf16's machine epsilon, shrinking bf16 steps 9-250x.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 64, generator=gen) * 0.02
    g = torch.randn(64, 64, generator=gen) * 1e-3
    moved = {}
    for dtype in (torch.float32, torch.bfloat16):
        p = x.detach().to(dtype).clone().requires_grad_()
        p.grad = g.to(dtype)
        opt = Adafactor([p])
        start = p.detach().float().clone()
        opt.step()
        moved[dtype] = (p.detach().float() - start).pow(2).mean().sqrt().item()
    assert moved[torch.bfloat16] == pytest.approx(moved[torch.float32], rel=0.05)


def test_eps1_is_per_parameter_not_per_group():
    # One group with a bf16 and an fp32 parameter; each behaves as if alone.
    gen = torch.Generator().manual_seed(0)
    x16 = (torch.randn(8, 8, generator=gen) * 1e-3).bfloat16()
    x32 = torch.randn(8, 8, generator=gen) * 1e-3
    g = torch.randn(8, 8, generator=gen) * 1e-4
    together = [x16.clone().requires_grad_(), x32.clone().requires_grad_()]
    alone = [x16.clone().requires_grad_(), x32.clone().requires_grad_()]
    for p in together + alone:
        p.grad = g.to(p.dtype)
    Adafactor(together).step()
    for p in alone:
        Adafactor([p]).step()
    for a, b in zip(together, alone):
        assert torch.equal(a, b)


def test_deepcopy_and_pickle():
    model = make_model()
    opt = Adafactor(model.parameters(), beta1=0.9)
    train(model, opt, 3)
    clone = copy.deepcopy(opt)
    assert clone.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    restored = pickle.loads(pickle.dumps(opt))
    assert isinstance(restored, Adafactor)
    assert {k: restored.defaults[k] for k in opt.defaults} == opt.defaults
    for (_, s1), (_, s2) in zip(
        opt.state_dict()["state"].items(), restored.state_dict()["state"].items()
    ):
        for key in s1:
            assert torch.equal(s1[key], s2[key])


def test_empty_scalar_and_vector_params():
    params = [
        torch.nn.Parameter(torch.zeros(0, 5)),
        torch.nn.Parameter(torch.tensor(1.5)),
        torch.nn.Parameter(torch.ones(7)),
    ]
    opt = Adafactor(params)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert params[0].shape == (0, 5)
    assert params[1].item() == pytest.approx(1.5 - 1e-2 * 1.5)
    torch.testing.assert_close(params[2].detach(), torch.full((7,), 1 - 1e-2))


def test_diagnostics_report_step_size_update_rms_and_clipping():
    # First step on a vector: V = G^2 + eps1, so U = sign(G) and RMS(U) = 1 exactly; with
    # d = 0.5 clipping fires, with d = 2 it does not.
    for d, clipped in ((0.5, 1), (2.0, 0)):
        p = torch.nn.Parameter(torch.full((4,), 2.0, dtype=torch.float64))
        opt = Adafactor([p], clip_threshold=d, diagnostics=True)
        p.grad = torch.tensor([1.0, -3.0, 2e-5, 1e5], dtype=torch.float64)
        opt.step()
        record = opt.diagnostics[p]
        assert record["update_rms"].item() == pytest.approx(1.0, rel=1e-12)
        assert record["step_size"].item() == pytest.approx(1e-2 * 2.0)  # rho_1 * RMS(X_0)
        assert int(record["clipped_steps"]) == clipped
    quiet = Adafactor([torch.nn.Parameter(torch.ones(3))])
    assert quiet.diagnostics == {}


def test_state_dict_from_before_an_option_existed_loads_with_defaults():
    model = make_model()
    opt = Adafactor(model.parameters())
    train(model, opt, 2)
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        del group["diagnostics"], group["weight_decay_scale"]
    restored = Adafactor(make_model().parameters())
    restored.load_state_dict(saved)
    assert restored.param_groups[0]["weight_decay_scale"] == "rho"
    assert restored.param_groups[0]["diagnostics"] is False


def test_params_on_different_devices_step_independently():
    # Model-parallel layouts put parameters on several devices; each steps on its own. Here a
    # meta-device parameter (shapes only) sits beside a CPU one.
    cpu = torch.nn.Parameter(torch.ones(4, 3))
    meta = torch.nn.Parameter(torch.ones(4, 3, device="meta"))
    opt = Adafactor([cpu, meta])
    cpu.grad = torch.ones(4, 3)
    meta.grad = torch.ones(4, 3, device="meta")
    opt.step()
    assert opt.state[meta]["exp_avg_sq_row"].device.type == "meta"
    torch.testing.assert_close(cpu.detach(), torch.full((4, 3), 1 - 1e-2))
