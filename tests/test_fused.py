"""The compiled fast path (``fused=True``): same results as the eager path, no host syncs."""

import copy

import pytest
import torch

from adafactor import Adafactor

OPTIONS = [
    {"beta1": 0.9, "momentum_of": "gradient", "weight_decay": 0.1},
    {"beta1": 0.9, "maximize": True, "clip_threshold": 0.5},
]


def params_and_grads(seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(320, 256), (48,), (4, 128, 160)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(4)]
    grads[2][0][3, 5] = float("nan")  # one poisoned step for the matrix
    return params, grads


@pytest.mark.parametrize("options", OPTIONS)
def test_fused_matches_eager(options):
    params, grads = params_and_grads(0)
    runs = {}
    for fused in (False, True):
        ps = [torch.nn.Parameter(p.clone()) for p in params]
        opt = Adafactor(ps, fused=fused, **options)
        for step_grads in grads:
            for p, g in zip(ps, step_grads):
                p.grad = g.clone()
            opt.step()
        runs[fused] = (ps, opt)
    (eager, eager_opt), (fused, fused_opt) = runs[False], runs[True]
    for p, q in zip(eager, fused):
        # Same float32 math, evaluated in another order by the generated loops: ulps apart.
        torch.testing.assert_close(q.detach(), p.detach(), rtol=1e-5, atol=1e-7)
        for key, value in eager_opt.state[p].items():
            # Averages that cancel to near zero keep the absolute, not relative, round-off.
            scale = value.abs().max().item() if value.is_floating_point() else 0
            torch.testing.assert_close(fused_opt.state[q][key], value, rtol=1e-5, atol=1e-6 * scale)
    assert int(fused_opt.state[fused[0]]["nonfinite_skips"]) == 1
    assert int(fused_opt.state[fused[0]]["step"]) == 3


@pytest.mark.parametrize("fused", [False, True])
def test_step_makes_no_host_sync(monkeypatch, fused):
    params, grads = params_and_grads(1)
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = Adafactor(ps, fused=fused, beta1=0.9, diagnostics=True)
    for step_grads in grads[:2]:  # compile (and settle dynamic shapes) outside the watch
        for p, g in zip(ps, step_grads):
            p.grad = g.clone()
        opt.step()

    def sync(*args, **kwargs):
        raise AssertionError("host sync inside step()")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    for p, g in zip(ps, grads[3]):
        p.grad = g.clone()
    opt.step()
    monkeypatch.undo()
    assert int(opt.state[ps[0]]["step"]) == 3


def test_whole_step_compiles_with_fullgraph():
    # torch.compile(optimizer.step, fullgraph=True) fails on any graph break: a .item(), a
    # Python branch on a tensor's value, an unsupported call. It must trace, and match eager.
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))]
    models.append(copy.deepcopy(models[0]))
    opts = [Adafactor(m.parameters(), fused=False, beta1=0.9) for m in models]
    compiled_step = torch.compile(opts[0].step, fullgraph=True)
    x, y = torch.randn(8, 16), torch.randn(8, 4)
    for _ in range(3):
        for model, opt, step in zip(models, opts, (compiled_step, opts[1].step)):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            step()
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_automatic_mode_falls_back_to_eager_when_compiling_fails(monkeypatch):
    from adafactor import fused

    def broken(*args):
        raise torch._dynamo.exc.FailOnRecompileLimitHit("recompile limit")

    monkeypatch.setattr(fused, "_compiled", lambda kernel: broken)
    monkeypatch.setattr(fused, "use_fused", lambda setting, params: setting is not False)
    fused.compiled_kernels.cache_clear()
    try:
        shape = (256, 256)
        eager, auto = torch.nn.Parameter(torch.ones(shape)), torch.nn.Parameter(torch.ones(shape))
        eager.grad, auto.grad = torch.ones(shape), torch.ones(shape)
        Adafactor([eager], fused=False).step()
        with pytest.warns(UserWarning, match="compiling the step failed"):
            Adafactor([auto]).step()  # fused=None: compiled, failing, then eager
        assert torch.equal(eager, auto)
    finally:
        fused.compiled_kernels.cache_clear()


def test_changing_options_never_recompiles():
    # A scheduler writes a new lr (and here weight decay) into the group every step; a
    # compiled step must take them as inputs, not specialise on them and compile again.
    from torch._dynamo.utils import counters

    params, grads = params_and_grads(2)
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = Adafactor(ps, fused=True, beta1=0.9, weight_decay=0.01, relative_step=False, lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (t + 1))
    graphs = []
    for step_grads in grads:
        for p, g in zip(ps, step_grads):
            p.grad = g.clone()
        opt.step()
        schedule.step()
        opt.param_groups[0]["weight_decay"] *= 0.5
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0
    assert graphs[1:] == graphs[:1] * (len(graphs) - 1)
