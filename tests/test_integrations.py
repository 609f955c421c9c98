"""The examples in examples/ run here on tiny models: HF Trainer, Lightning, AMP with
GradScaler, torch.compile of a train step, and torch.optim.lr_scheduler schedules."""

from __future__ import annotations

import pytest
import torch

from adafactor import Adafactor
from adafactor.reference import ReferenceAdafactor
from helpers import example


def test_trainer_with_our_defaults_and_its_default_linear_schedule():
    pytest.importorskip("transformers")
    trainer = example("trainer_tiny").main(max_steps=5, warmup_steps=1)
    opt = (
        trainer.optimizer.optimizer
        if hasattr(trainer.optimizer, "optimizer")
        else trainer.optimizer
    )
    assert isinstance(opt, Adafactor)
    assert all(g["relative_step"] and g["scale_parameter"] for g in opt.param_groups)
    # The schedule scales our lr (the cap of ρ_t) linearly: warm-up to 1e-2, then down to 0.
    lrs = [e["learning_rate"] for e in trainer.state.log_history if "loss" in e]
    assert lrs == pytest.approx([0.0, 1e-2, 7.5e-3, 5e-3, 2.5e-3])
    assert all(g["lr"] == 0.0 for g in opt.param_groups)
    assert all(float(s["step"]) == 5.0 for s in opt.state.values())
    decays = sorted({g["weight_decay"] for g in opt.param_groups})
    assert decays == [0.0, 0.01]


def test_hf_adafactor_defaults_crash_under_the_trainers_schedule():
    """Why the helper exists: HF's own Adafactor keeps lr=None, which the scheduler multiplies."""
    pytest.importorskip("transformers")
    from transformers import get_linear_schedule_with_warmup
    from transformers.optimization import Adafactor as HFAdafactor

    module = example("trainer_tiny")
    model = module.GPT2LMHeadModel(
        module.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    )
    optimizer = HFAdafactor(model.parameters())
    with pytest.raises(TypeError):
        get_linear_schedule_with_warmup(optimizer, 1, 5)


def test_lightning_configure_optimizers_with_a_cosine_schedule():
    pytest.importorskip("lightning")
    module = example("lightning_tiny").main(max_steps=40)
    assert len(module.losses) == 40
    assert module.losses[-1] < module.losses[0] / 3
    opt = module.trainer.optimizers[0]
    assert isinstance(opt, Adafactor)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine reached 0


def test_gradscaler_scaling_is_exact_and_leaves_the_trajectory_unchanged():
    """Power-of-two loss scaling and unscaling are exact in float32: bit-identical runs."""
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    runs = []
    for scale in (None, 2.0**12):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
        opt = Adafactor(model.parameters(), beta1=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=scale) if scale else None
        for _ in range(5):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), torch.sin(x))
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_gradscaler_overflow_skips_the_step_and_keeps_the_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
    opt = Adafactor(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # overflows float16 gradients
    x = torch.randn(128, 16)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast(device_type="cpu", dtype=torch.float16):
        loss = torch.nn.functional.mse_loss(model(x).float(), torch.tanh(x))
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**39
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert len(opt.state) == 0  # the optimizer never stepped


def test_amp_example_trains():
    history = example("amp_fp16").main(steps=30)
    assert history["loss"][-1] < 0.7 * history["loss"][0]


def test_compiled_train_step_matches_eager():
    """aot_eager traces the whole step (forward, backward, Adafactor.step) through dynamo and
    AOT autograd as inductor does, without the ~20 s of C++ code generation on 2 cores; the
    example itself compiles with inductor."""
    compiled, eager = example("compile_train_step").main(steps=5, backend="aot_eager")
    assert compiled == pytest.approx(eager, rel=1e-6)
    assert compiled[-1] < compiled[0]


def _vector_steps(opt_factory, scheduler_factory, steps=6):
    p = torch.nn.Parameter(torch.linspace(-1, 1, 10, dtype=torch.float64))
    opt = opt_factory([p])
    scheduler = scheduler_factory(opt)
    lrs = []
    for t in range(steps):
        p.grad = torch.cos(torch.arange(10, dtype=torch.float64) + t)
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
        scheduler.step()
    return p.detach(), lrs


def test_a_scheduler_scales_the_relative_step_cap():
    """ConstantLR(factor=0.5) halves lr: ρ_t = min(5e-3, 1/√t), the reference with lr=5e-3."""
    p, lrs = _vector_steps(
        lambda ps: Adafactor(ps),
        lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=0.5, total_iters=100),
    )
    ref = ReferenceAdafactor([torch.linspace(-1, 1, 10, dtype=torch.float64)], lr=5e-3)
    for t in range(6):
        ref.step([torch.cos(torch.arange(10, dtype=torch.float64) + t)])
    torch.testing.assert_close(p, ref.params[0], rtol=1e-12, atol=0)
    assert lrs == [5e-3] * 6  # the optimizer never writes group["lr"]


def test_a_scheduler_drives_the_absolute_step_size():
    """relative_step=False: ρ_t is the scheduled lr; same as setting lr by hand each step."""
    p, lrs = _vector_steps(
        lambda ps: Adafactor(ps, lr=0.1, relative_step=False),
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.1),
    )
    q = torch.nn.Parameter(torch.linspace(-1, 1, 10, dtype=torch.float64))
    manual = Adafactor([q], lr=0.1, relative_step=False)
    for t, lr in enumerate(lrs):
        manual.param_groups[0]["lr"] = lr
        q.grad = torch.cos(torch.arange(10, dtype=torch.float64) + t)
        manual.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3])
    torch.testing.assert_close(p, q.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_steps_in_backward_exactly_as_it_steps_after(accumulation):
    # The Trainer's gradient_accumulation_steps = our accumulation_steps; its global clipping
    # off in both runs (it sees no gradients in backward mode).
    pytest.importorskip("transformers")
    module = example("trainer_tiny")
    runs = [
        module.main(
            max_steps=3, step_in_backward=mode, accumulation=accumulation, max_grad_norm=0.0
        )
        for mode in (False, True)
    ]
    ordinary, in_backward = (r.model for r in runs)
    for p, q in zip(ordinary.parameters(), in_backward.parameters()):
        assert torch.equal(p, q)
        assert q.grad is None
    losses = [[e["loss"] for e in r.state.log_history if "loss" in e] for r in runs]
    assert losses[0] == losses[1] and len(losses[0]) == 3


@pytest.mark.parametrize("accumulation", [1, 2])
def test_lightning_steps_in_backward_exactly_as_it_steps_after(accumulation):
    pytest.importorskip("lightning")
    module = example("lightning_tiny")
    ordinary, in_backward = (
        module.main(max_steps=6, step_in_backward=mode, accumulation=accumulation)
        for mode in (False, True)
    )
    assert in_backward.losses == ordinary.losses and len(ordinary.losses) == 6 * accumulation
    for p, q in zip(ordinary.parameters(), in_backward.parameters()):
        assert torch.equal(p, q)


def test_a_compiled_step_warns_of_no_cache_it_bypasses(recwarn):
    # Dynamo warns when it traces through a functools cache; factoring's are bypassed.
    params = [torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(3, 2, 5))]
    opt = Adafactor(params, beta1=0.9)
    for p in params:
        p.grad = torch.randn_like(p)
    torch.compile(opt.step, backend="eager")()
    assert not [w for w in recwarn if "cache" in str(w.message)]


def test_the_plain_loop_example_holds_one_gradient_at_a_time():
    module = example("step_in_backward")
    losses, most, total = module.main(steps=30)
    largest = max(p.nbytes for p in module.model().parameters())
    assert most <= largest < total / 2
    assert sum(losses[-5:]) < sum(losses[:5])
    losses, most, _ = module.main(steps=3, accumulation=2)
    assert most == total  # held across a window's micro-batches
