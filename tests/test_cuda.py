"""On a CUDA GPU (skipped elsewhere): the Triton group kernels against the eager step on the
same device, no host sync, capture in a CUDA graph, a fixed number of launches, no re-JIT
across steps and schedules, determinism and bit-identical resume.

Tolerances as in test_kernels.py: float32 sums in another order, ``rtol=1e-5``; 16-bit
parameters one rounding of their dtype per step.
"""

from __future__ import annotations

import copy

import pytest
import torch

from adafactor import Adafactor
from adafactor.presets import ADAM
from helpers import step_without_host_sync

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SHAPES = [(320, 256), (48,), (), (1, 9), (0, 4), (4, 128, 160), (1000, 3), (2, 6, 5, 4)]
FAMILIES = [
    {},
    {"beta1": 0.9, "weight_decay": 0.1},
    {**ADAM, "factored": True, "lr": 1e-3},
    {"factored": False, "maximize": True},
    {
        "factor_dims": "last",
        "rms_per_slice": True,
        "weight_decay_scale": "alpha",
        "weight_decay": 0.01,
    },
    {"beta2_cap": 0.9, "decay_offset": 2, "warmup_init": True},
    {"beta1": 0.8, "momentum_dtype": torch.bfloat16, "clip_threshold": 0.5},
]
ULP = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


def train(options, dtype, fused, steps=4, seed=0, shapes=SHAPES):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    params = [
        torch.nn.Parameter(torch.randn(s, device="cuda", generator=gen).to(dtype)) for s in shapes
    ]
    opt = Adafactor(params, fused=fused, **options)
    for k in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, device="cuda", generator=gen) * (1 + k)).to(dtype)
        if k == 2 and params[0].numel():
            params[0].grad[3, 5] = float("nan")
        opt.step()
    return params, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", FAMILIES, ids=str)
def test_the_gpu_kernels_match_the_eager_step(options, dtype):
    (eager, _), (fused, opt) = train(options, dtype, False), train(options, dtype, True)
    for p, q in zip(eager, fused):
        scale = p.detach().float().abs().max().item() if p.numel() else 0.0
        atol = ULP[dtype] * 4 * scale + 1e-7 * scale
        torch.testing.assert_close(q.float(), p.float(), rtol=1e-5, atol=atol)
    assert int(opt.state[fused[0]]["nonfinite_skips"]) == 1
    assert int(opt.state[fused[0]]["step"]) == 3


def test_a_gpu_step_makes_no_host_sync():
    params = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in SHAPES]
    lr = torch.tensor(1e-2, device="cuda")
    opt = Adafactor(params, lr=lr, beta1=0.9, diagnostics=True, stochastic_rounding=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # plans built, kernels compiled outside the watch
    for p in params:
        p.grad = torch.randn_like(p)
    step_without_host_sync(opt)
    assert int(opt.state[params[0]]["step"]) == 2


def test_the_step_is_captured_in_a_cuda_graph_and_replays_like_steps():
    def make():
        gen = torch.Generator(device="cuda").manual_seed(1)
        params = [torch.nn.Parameter(torch.randn(s, device="cuda", generator=gen)) for s in SHAPES]
        for p in params:
            p.grad = torch.randn(p.shape, device="cuda", generator=gen)
        return params, Adafactor(params, beta1=0.9, weight_decay=0.01)

    stepped, opt = make()
    for _ in range(6):
        opt.step()
    captured, graph_opt = make()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up: state, plans, compiled kernels
            graph_opt.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_opt.step()
    for _ in range(3):
        graph.replay()
    for p, q in zip(stepped, captured):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    assert int(graph_opt.state[captured[0]]["step"]) == 6


def test_launches_do_not_grow_with_the_number_of_tensors_and_nothing_re_jits():
    from adafactor.kernels import triton as kernels

    counts = []
    for count in (3, 300):
        params = [torch.nn.Parameter(torch.randn(64, 32, device="cuda")) for _ in range(count)]
        opt = Adafactor(params, beta1=0.9, relative_step=False, lr=1e-3)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (t + 1))
        for step in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            before = sum(kernels.LAUNCHES.values())
            opt.step()
            counts.append(sum(kernels.LAUNCHES.values()) - before)
            schedule.step()
            if step == 0:
                compiled = {k: len(getattr(k, "device_caches", {}) or k.cache) for k in _kernels()}
        assert {k: len(getattr(k, "device_caches", {}) or k.cache) for k in _kernels()} == compiled
    assert counts == [8] * 6


def _kernels():
    from adafactor.kernels import triton as kernels

    return [
        kernels._sums_tiles,
        kernels._sums_tensors,
        kernels._statistics,
        kernels._update_sums_tiles,
        kernels._update_sums_tensors,
        kernels._apply_scalars,
        kernels._apply_tiles,
        kernels._commit,
    ]


def test_gpu_steps_are_deterministic_and_resume_bit_for_bit():
    options = {"beta1": 0.9, "momentum_dtype": torch.bfloat16}
    a, _ = train(options, torch.bfloat16, None, steps=6, seed=3)
    b, _ = train(options, torch.bfloat16, None, steps=6, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    # Resume: 3 steps, a state dict through copy, 3 more; against 6 straight.
    gen = torch.Generator(device="cuda").manual_seed(4)
    shapes = [(64, 48), (9,)]
    grads = [[torch.randn(s, device="cuda", generator=gen) for s in shapes] for _ in range(6)]
    start = [torch.randn(s, device="cuda", generator=gen) for s in shapes]
    straight = [torch.nn.Parameter(x.clone()) for x in start]
    opt = Adafactor(straight, **options)
    first = [torch.nn.Parameter(x.clone()) for x in start]
    opt_first = Adafactor(first, **options)
    for k in range(6):
        for p, g in zip(straight, grads[k]):
            p.grad = g.clone()
        opt.step()
        if k < 3:
            for p, g in zip(first, grads[k]):
                p.grad = g.clone()
            opt_first.step()
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    opt_resumed = Adafactor(resumed, **options)
    opt_resumed.load_state_dict(copy.deepcopy(opt_first.state_dict()))
    for k in range(3, 6):
        for p, g in zip(resumed, grads[k]):
            p.grad = g.clone()
        opt_resumed.step()
    assert all(torch.equal(p, q) for p, q in zip(straight, resumed))


def test_gpu_and_cpu_kernels_agree():
    def run(device):
        gen = torch.Generator().manual_seed(5)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in SHAPES]
        opt = Adafactor(params, beta1=0.9)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(device)
            opt.step()
        return [p.detach().cpu() for p in params]

    for p, q in zip(run("cpu"), run("cuda")):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)
