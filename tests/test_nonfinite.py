"""Non-finite gradients never spread: skipped and counted (no host sync), or raised on request.

Every test here runs on every step path (``helpers.STEP_PATHS``: the eager step, the C group
kernels, the Triton group kernels through the interpreter), reached through ``step()`` and
``step(closure)`` (``CALLS``).

The central check is an equivalence: a run in which faults (NaN, ±Inf, gradients whose square
overflows) are injected into some parameters' gradients at some steps is *bit-identical*, in
every parameter and every state tensor, to a run in which those gradients were simply absent
(``grad = None``). So nothing of a bad gradient reaches the row/column accumulators, the
momentum, the step count, the parameter, or any other parameter.
"""

from __future__ import annotations

import copy
import random
import zlib

import pytest
import torch

from adafactor import Adafactor
from adafactor.presets import ADAM
from helpers import (
    STEP_PATHS,
    assert_unchanged,
    snapshot,
    step_without_host_sync,
    use_step_path,
)


def _step(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()


def _step_with_closure(opt, params, grads):
    def closure():
        for p, g in zip(params, grads):
            p.grad = g
        return torch.zeros(())

    opt.step(closure)


CALLS = {"step": _step, "step(closure)": _step_with_closure}

CONFIGS = {
    "factored": {},
    "unfactored": {"factored": False},
    "momentum-step": {"beta1": 0.9},
    "momentum-gradient": {"beta1": 0.9, "momentum_of": "gradient"},
    "adam-like": {**ADAM, "factored": True, "lr": 1e-3},
    "decay-maximize-last": {"weight_decay": 0.1, "maximize": True, "factor_dims": "last"},
}

SHAPES = [(6, 5), (4, 3, 5), (7,), (), (1, 9), (0, 3)]


def _fault(kind: str, dtype: torch.dtype) -> float:
    """The injected value; ``"overflow"`` is finite but its square overflows float32."""
    if kind == "overflow":
        return 1e30 if dtype in (torch.float32, torch.bfloat16) else float("inf")
    return {"nan": float("nan"), "+inf": float("inf"), "-inf": -float("inf")}[kind]


def _faulty_runs(call, config, dtype, steps=24, seed=0):
    """Run twin optimizers: ``faulty`` gets injected bad gradients, ``clean`` gets ``None``
    where ``faulty`` got a bad one. Returns both, their params, and faults per param."""
    do_step = CALLS[call]
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]
    faulty = [x.clone().requires_grad_() for x in init]
    clean = [x.clone().requires_grad_() for x in init]
    opt_f = Adafactor(faulty, **config)
    opt_c = Adafactor(clean, **config)
    injected = [0] * len(init)
    for t in range(steps):
        grads_f, grads_c = [], []
        for i, x in enumerate(init):
            g = torch.randn(x.shape, generator=gen).to(dtype)
            # From step 3 on (so that state exists), a quarter of the gradients are poisoned.
            if t >= 3 and g.numel() and rng.random() < 0.25:
                bad = g.clone()
                flat = bad.view(-1)
                kind = rng.choice(["nan", "+inf", "-inf", "overflow"])
                for _ in range(rng.randint(1, max(1, flat.numel() // 3))):
                    flat[rng.randrange(flat.numel())] = _fault(kind, dtype)
                grads_f.append(bad)
                grads_c.append(None)
                injected[i] += 1
            else:
                grads_f.append(g)
                grads_c.append(g.clone())
        do_step(opt_f, faulty, grads_f)
        do_step(opt_c, clean, grads_c)
    return opt_f, faulty, opt_c, clean, injected


def _fault_cases():
    """Every step path × call × configuration × dtype; through the (slow) interpreter, the
    Triton kernels take ``step()``, each configuration in one dtype (float32 and bfloat16 in
    turn), over fewer steps."""
    for step_path in STEP_PATHS:
        interpreted = step_path == "triton-kernels"
        for call in ["step"] if interpreted else CALLS:
            for i, config in enumerate(CONFIGS):
                dtypes = [torch.float32, torch.bfloat16]
                for dtype in [dtypes[i % 2]] if interpreted else [*dtypes, torch.float16]:
                    name = f"{step_path}-{call}-{config}-{str(dtype)[6:]}"
                    yield pytest.param(
                        step_path, call, config, dtype, 10 if interpreted else 24, id=name
                    )


@pytest.mark.parametrize("step_path, call, config, dtype, steps", _fault_cases())
def test_injected_faults_are_bit_identical_to_absent_gradients(
    monkeypatch, step_path, call, config, dtype, steps
):
    use_step_path(monkeypatch, step_path)
    seed = zlib.crc32(f"{config}/{dtype}".encode())  # each combination its own faults
    opt_f, faulty, opt_c, clean, injected = _faulty_runs(call, CONFIGS[config], dtype, steps, seed)
    assert sum(injected) >= (3 if steps < 24 else 10)  # the faults really happen
    for i, (p, q) in enumerate(zip(faulty, clean)):
        assert torch.equal(p, q), i
        assert torch.isfinite(p).all(), i
        state_f, state_c = opt_f.state[p], opt_c.state[q]
        assert int(state_f["nonfinite_skips"]) == injected[i], i
        assert int(state_c["nonfinite_skips"]) == 0
        assert set(state_f) == set(state_c)
        for key, value in state_f.items():
            if key != "nonfinite_skips":
                assert torch.equal(value, state_c[key]), (i, key)
                assert torch.isfinite(value).all(), (i, key)
        assert int(state_f["step"]) == steps - injected[i]


@pytest.mark.parametrize("call", CALLS)
def test_diagnostics_do_not_count_a_skipped_step_as_clipped(step_path, call):
    do_step = CALLS[call]
    p = torch.nn.Parameter(torch.ones(4, 3))
    opt = Adafactor([p], clip_threshold=1e-3, diagnostics=True)  # every step clips
    do_step(opt, [p], [torch.randn(4, 3)])
    do_step(opt, [p], [torch.full((4, 3), float("nan"))])
    do_step(opt, [p], [torch.randn(4, 3)])
    assert int(opt.diagnostics[p]["clipped_steps"]) == 2
    assert int(opt.state[p]["nonfinite_skips"]) == 1


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("call", CALLS)
def test_raise_names_the_parameter_across_groups_and_changes_nothing(step_path, call, config):
    do_step = CALLS[call]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    named = list(model.named_parameters())
    opt = Adafactor(
        [{"params": named[:2]}, {"params": named[2:], "lr": 1e-3}],
        nonfinite_grad="raise",
        **CONFIGS[config],
    )
    params = [p for _, p in named]
    do_step(opt, params, [torch.randn_like(p) for p in params])
    grads = [torch.randn_like(p) for p in params]
    grads[2][1, 3] = float("nan")  # '2.weight', the first parameter of the second group
    snap = snapshot(opt, params)
    with pytest.raises(
        ValueError,
        match=r"non-finite gradient in parameter '2.weight' \(param_groups\[1\]\['params'\]\[0\]",
    ):
        do_step(opt, params, grads)
    # The healthy first group, checked first, was not stepped either.
    assert_unchanged(opt, params, snap)


# -- no host synchronisation -------------------------------------------------------------


def _meta_run(config, nonfinite_grad):
    """Two steps on the meta device: tensors without data, so any read of a value (``.item()``,
    ``bool()``, ``.cpu()``, ``.tolist()``) raises."""
    params = [torch.nn.Parameter(torch.empty(s, device="meta")) for s in SHAPES]
    opt = Adafactor(params, diagnostics=True, nonfinite_grad=nonfinite_grad, **config)
    for _ in range(2):
        for p in params:
            p.grad = torch.empty(p.shape, device="meta")
        opt.step()
    return opt, params


@pytest.mark.parametrize("config", CONFIGS)
def test_skip_mode_never_reads_a_value_on_the_host(config):
    opt, params = _meta_run(CONFIGS[config], "skip")
    for p in params:
        assert opt.state[p]["nonfinite_skips"].device.type == "meta"
        assert opt.state[p]["step"].device.type == "meta"


def test_the_meta_check_would_catch_a_host_sync():
    # Control for the test above: "raise" mode must look at the values (one sync per step),
    # and on the meta device that look fails.
    with pytest.raises((NotImplementedError, RuntimeError)):
        _meta_run({}, "raise")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("config", CONFIGS)
def test_skip_mode_does_not_synchronize_cuda(config):
    params = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in SHAPES]
    opt = Adafactor(params, diagnostics=True, **CONFIGS[config])
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # lazy state initialisation happens outside the checked region
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    step_without_host_sync(opt)
    assert all(int(opt.state[p]["nonfinite_skips"]) == (p.numel() > 0) for p in params)


# -- GradScaler: overflow steps are expected ----------------------------------------------


def test_gradscaler_fp16_training_skips_overflow_steps_and_then_learns():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
    opt = Adafactor(model.parameters(), beta1=0.9)
    # 2^40 overflows the float16 activations' gradients; the scaler halves it until it fits.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40, growth_interval=20)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(128, 16, generator=gen)
    y = torch.tanh(x)
    losses, skipped = [], 0
    for _ in range(120):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        skipped += scaler.get_scale() < scale  # the scaler halves the scale on every skip
        losses.append(loss.item())
    assert skipped >= 10  # overflow steps did happen (the first ~25, and a few after growth)
    for p in model.parameters():
        state = opt.state[p]
        assert int(state["step"]) == 120 - skipped  # exactly the steps the scaler let through
        assert int(state["nonfinite_skips"]) == 0  # the scaler caught every overflow first
        assert all(torch.isfinite(v).all() for v in state.values())
        assert torch.isfinite(p).all()
    assert losses[-1] < 0.5 * losses[skipped]


def test_fp16_overflow_without_a_scaler_is_caught_by_the_optimizer():
    # Pure float16 training whose backward overflows: our own skip is the safety net.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    model = model.half()
    opt = Adafactor(model.parameters())
    x = torch.randn(64, 8).half()
    before = copy.deepcopy(model.state_dict())
    opt.zero_grad()
    (model(x).float().pow(2).sum() * 2.0**20).backward()  # float16 gradients overflow to inf
    assert any(not torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    for name, p in model.named_parameters():
        overflowed = not torch.isfinite(p.grad).all()
        assert int(opt.state[p]["nonfinite_skips"]) == int(overflowed), name
        if overflowed:
            assert torch.equal(p, before[name]), name
        assert torch.isfinite(p).all(), name
