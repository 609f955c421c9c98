"""The Triton group kernels as a GPU runs them, against the eager step on the same device: the
option families of the options table, no host sync, capture in a CUDA graph (replays reading
the step's own numbers, whatever reuses the host memory they came from), a fixed number of
launches, no re-JIT across steps and schedules, determinism and bit-identical resume.

Every test runs twice: on ``cuda`` (marked ``cuda``: ``pytest -m cuda`` selects them; skipped
without a GPU) and on ``cpu``, where Triton's interpreter runs the same kernels on CPU tensors
(small shapes, fewer cases), so that this file's logic is exercised by CI and cannot rot
unseen. Only what needs a GPU (CUDA graphs, compiled variants, the sync-debug mode) is
GPU-only.

Tolerances as in test_kernels.py: float32 sums in another order, ``rtol=1e-5``; 16-bit
parameters one rounding of their dtype per step. A 16-bit momentum may round one way on one
path and the other way on the other (its float32 value agrees to ``rtol`` only): the step it
makes then differs by one rounding of the momentum, at most 2⁻⁷ (bfloat16) or 2⁻¹⁰ (float16)
of that step's update, per element and step.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from adafactor import Adafactor
from adafactor.presets import ADAM
from helpers import packed_option_sets, triton_interpreted, use_step_path

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_interpreter = pytest.mark.skipif(
    not triton_interpreted(), reason="needs triton's interpreter"
)
DEVICES = [
    pytest.param("cuda", marks=[pytest.mark.cuda, needs_cuda], id="cuda"),
    pytest.param("cpu", marks=needs_interpreter, id="interpreted"),
]
SHAPES = {
    "cuda": [(320, 256), (48,), (), (1, 9), (0, 4), (4, 128, 160), (1000, 3), (2, 6, 5, 4)],
    "cpu": [(37, 29), (48,), (), (1, 9), (0, 4), (3, 12, 10), (2, 6, 5, 4)],
}
FAMILIES = {
    "defaults": {},
    "momentum-gradient-adam": {**ADAM, "factored": True, "lr": 1e-3},
    **{"+".join(options): options for options in packed_option_sets()},
}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ULP = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
# On a GPU every family in every dtype; interpreted, each family in one dtype, in turn.
CASES = [
    pytest.param(device, family, dtype, marks=marks, id=f"{name}-{family}-{str(dtype)[6:]}")
    for device, marks, name in (
        ("cuda", [pytest.mark.cuda, needs_cuda], "cuda"),
        ("cpu", [needs_interpreter], "interpreted"),
    )
    for i, family in enumerate(FAMILIES)
    for dtype in (DTYPES if device == "cuda" else [DTYPES[i % 3]])
]


@pytest.fixture
def stepping(monkeypatch: pytest.MonkeyPatch):
    """``stepping(device, path)``: the options that make an optimizer on ``device`` step on
    ``path`` ("eager", "triton" or, on CPU only, "c"): on CUDA the ``fused`` option; on CPU
    the step path (``helpers.use_step_path``, which then holds for every CPU optimizer) with
    ``fused=None``, or for the C kernels ``fused=True`` (call it first)."""

    def choose(device: str, path: str) -> dict[str, Any]:
        if device == "cuda" or path == "c":  # the C kernels: CPU's own, chosen by fused=True
            assert path != "c" or device == "cpu"
            return {"fused": path != "eager"}
        use_step_path(
            monkeypatch, {"eager": "eager", "triton": "triton-kernels"}.get(path, "cpu-kernels")
        )
        return {}

    return choose


def train(device, options, dtype, steps=4, seed=0, shapes=None, nan_at=2):
    """``steps`` steps over ``shapes`` (a NaN in the first gradient at step ``nan_at``): the
    parameters, the optimizer, and each step's update of every parameter."""
    gen = torch.Generator(device=device).manual_seed(seed)
    params = [
        torch.nn.Parameter(torch.randn(s, device=device, generator=gen).to(dtype))
        for s in shapes or SHAPES[device]
    ]
    opt = Adafactor(params, **options)
    updates: list[list[torch.Tensor]] = []
    for k in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, device=device, generator=gen) * (1 + k)).to(dtype)
        if k == nan_at and params[0].numel():
            params[0].grad.view(-1)[5] = float("nan")
        before = [p.detach().float().clone() for p in params]
        opt.step()
        updates.append([p.detach().float() - b for p, b in zip(params, before)])
    return params, opt, updates


def assert_matches(eager, fused, dtype, steps):
    """``fused`` stepped as ``eager`` did, to the tolerances of the module docstring."""
    (ps, opt, updates), (qs, fopt, _) = eager, fused
    for i, (p, q) in enumerate(zip(ps, qs)):
        scale = p.detach().float().abs().max().item() if p.numel() else 0.0
        allowed = 1e-5 * p.detach().float().abs() + (ULP[dtype] * steps + 1e-7) * scale
        momentum = opt.state[p].get("exp_avg")
        if momentum is not None and momentum.dtype in (torch.bfloat16, torch.float16):
            allowed = allowed + ULP[momentum.dtype] * sum(u[i].abs() for u in updates)
        diff = (q.detach().float() - p.detach().float()).abs()
        assert bool((diff <= allowed).all()), (i, p.shape, float((diff - allowed).max()))
        for key, value in opt.state[p].items():
            mine = fopt.state[q][key]
            assert mine.dtype == value.dtype and mine.shape == value.shape, key
            if not value.is_floating_point():
                assert torch.equal(mine, value), key
                continue
            v_scale = value.float().abs().max().item() if value.numel() else 0.0
            slack = (ULP.get(value.dtype, 0.0) * steps + 1e-6) * v_scale
            if value.dtype != torch.float32:  # one rounding of its own dtype, elementwise
                slack = slack + ULP[value.dtype] * value.float().abs()
            diff = (mine.float() - value.float()).abs()
            assert bool((diff <= 1e-5 * value.float().abs() + slack).all()), (i, key)
    assert int(fopt.state[qs[0]]["nonfinite_skips"]) == 1  # the NaN step, skipped
    assert int(fopt.state[qs[0]]["step"]) == steps - 1


@pytest.mark.parametrize(("device", "family", "dtype"), CASES)
def test_the_gpu_kernels_match_the_eager_step(stepping, device, family, dtype):
    options = dict(FAMILIES[family])
    eager = train(device, {**options, **stepping(device, "eager")}, dtype)
    fused = train(device, {**options, **stepping(device, "triton")}, dtype)
    assert_matches(eager, fused, dtype, steps=4)


@contextlib.contextmanager
def no_host_sync(device: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every host sync raises: on CUDA torch's sync-debug mode; on CPU, where nothing waits,
    every way a tensor's value reaches Python."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return

    def sync(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("host sync inside step()")

    with monkeypatch.context() as patched:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
            patched.setattr(torch.Tensor, name, sync)
        yield


@pytest.mark.parametrize("device", DEVICES)
def test_a_gpu_step_makes_no_host_sync(stepping, monkeypatch, device):
    shapes = SHAPES[device]
    params = [torch.nn.Parameter(torch.randn(s, device=device)) for s in shapes]
    lr = torch.tensor(1e-2, device=device)
    opt = Adafactor(
        params,
        lr=lr,
        beta1=0.9,
        diagnostics=True,
        stochastic_rounding=True,
        **stepping(device, "triton"),
    )
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # plans built, kernels compiled outside the watch
    for p in params:
        p.grad = torch.randn_like(p)
    with no_host_sync(device, monkeypatch):
        opt.step()
    assert int(opt.state[params[0]]["step"]) == 2


@pytest.mark.cuda
@needs_cuda
def test_the_step_is_captured_in_a_cuda_graph_and_replays_like_steps():
    def make():
        gen = torch.Generator(device="cuda").manual_seed(1)
        params = [
            torch.nn.Parameter(torch.randn(s, device="cuda", generator=gen)) for s in SHAPES["cuda"]
        ]
        for p in params:
            p.grad = torch.randn(p.shape, device="cuda", generator=gen)
        return params, Adafactor(params, beta1=0.9, weight_decay=0.01, fused=True)

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
    # Pinned host memory freed after the capture is handed out again by torch's caching host
    # allocator: fill whatever it hands out with garbage, as a pinned DataLoader would. The
    # replays must read the step's own numbers all the same.
    garbage = [torch.full((n,), 1e30).pin_memory() for n in (10, 16, 64, 256, 4096) for _ in "ab"]
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    del garbage
    for p, q in zip(stepped, captured):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    assert int(graph_opt.state[captured[0]]["step"]) == 6


def _compiled_variants() -> dict[str, int]:
    """How many variants of each kernel Triton has compiled, on every device."""
    from adafactor.kernels import triton as kernels

    counts = {}
    for kernel in kernels.KERNELS:
        caches = getattr(kernel, "device_caches", {})
        counts[kernel.__name__] = sum(len(c[0]) for c in caches.values())
    return counts


@pytest.mark.parametrize("device", DEVICES)
def test_launches_do_not_grow_with_the_number_of_tensors_and_nothing_re_jits(
    stepping, monkeypatch, device
):
    from adafactor.kernels import triton as kernels

    variants: set[tuple[Any, ...]] = set()  # what Triton compiles a variant for
    launch = kernels._launch

    def record(kernel, grid, *args, **constants):
        if kernels._warming is None:
            signature = tuple(a.dtype if isinstance(a, torch.Tensor) else type(a) for a in args)
            variants.add((kernel.__name__, tuple(sorted(constants.items())), signature))
        launch(kernel, grid, *args, **constants)

    monkeypatch.setattr(kernels, "_launch", record)
    counts = []
    for count in (3, 300 if device == "cuda" else 12):
        params = [torch.nn.Parameter(torch.randn(12, 10, device=device)) for _ in range(count)]
        opt = Adafactor(
            params, beta1=0.9, relative_step=False, lr=1e-3, **stepping(device, "triton")
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (t + 1))
        for step in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            before = sum(kernels.LAUNCHES.values())
            opt.step()
            counts.append(sum(kernels.LAUNCHES.values()) - before)
            schedule.step()
            opt.param_groups[0]["weight_decay"] = 0.01 * (step + 1)  # a number, not a flag
            if step == 0:
                seen, compiled = set(variants), _compiled_variants()
        assert variants == seen  # nothing new to compile after the first step
        assert _compiled_variants() == compiled
    assert len(seen) == kernels.LAUNCHES_PER_STEP
    assert counts == [kernels.LAUNCHES_PER_STEP] * 6


@pytest.mark.parametrize("device", DEVICES)
def test_gpu_steps_are_deterministic_and_resume_bit_for_bit(stepping, device):
    options = {"beta1": 0.9, "momentum_dtype": torch.bfloat16, **stepping(device, "triton")}
    shapes = None if device == "cuda" else [(20, 12), (9,), (2, 6, 5, 4)]
    a, _, _ = train(device, options, torch.bfloat16, steps=6, seed=3, shapes=shapes)
    b, _, _ = train(device, options, torch.bfloat16, steps=6, seed=3, shapes=shapes)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    # Resume: 3 steps, a state dict through copy, 3 more; against 6 straight.
    gen = torch.Generator(device=device).manual_seed(4)
    shapes = [(64, 48), (9,)] if device == "cuda" else [(24, 16), (9,)]
    grads = [[torch.randn(s, device=device, generator=gen) for s in shapes] for _ in range(6)]
    start = [torch.randn(s, device=device, generator=gen) for s in shapes]
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


@pytest.mark.parametrize("device", DEVICES)
def test_gpu_and_cpu_kernels_agree(stepping, device):
    # The Triton kernels on ``device`` against the C kernels on the CPU.
    def run(on: str, path: str):
        gen = torch.Generator().manual_seed(5)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(on)) for s in SHAPES[device]]
        opt = Adafactor(params, beta1=0.9, **stepping(on, path))
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(on)
            opt.step()
        return [p.detach().cpu() for p in params]

    c = run("cpu", "c")
    for p, q in zip(c, run(device, "triton")):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_an_unused_row_beside_huge_gradients_steps_as_eagerly(stepping, device):
    # R_i/R̄ of a row that never had a gradient, beside rows of |G| ~ 1e5, is ~1e-40: a
    # subnormal. A GPU that flushes it to 0 (sqrt.approx.ftz, div.full) makes its factor
    # infinite and 0·inf a NaN in U: the tensor would be skipped, where the eager step (and
    # the float64 reference) updates it.
    def run(path):
        gen = torch.Generator(device=device).manual_seed(6)
        p = torch.nn.Parameter(torch.randn(256, 64, device=device, generator=gen))
        opt = Adafactor([p], **stepping(device, path))
        for _ in range(2):
            g = torch.randn(256, 64, device=device, generator=gen) * 1e5
            g[17] = 0.0
            p.grad = g
            opt.step()
        return p, opt

    (p, opt), (q, fopt) = run("eager"), run("triton")
    assert int(opt.state[p]["nonfinite_skips"]) == int(fopt.state[q]["nonfinite_skips"]) == 0
    torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)


if importlib.util.find_spec("triton") is not None:
    import triton
    import triton.language as tl

    from adafactor.kernels.triton_lanes import store_as

    @triton.jit
    def store_nans(src, dst_at, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        x = tl.load(src + offs)
        x = tl.where(offs == 0, tl.sqrt_rn(x - 2.0), x)  # lane 0: √−1, the GPU's own NaN
        store_as(tl.load(dst_at), offs, x, offs < BLOCK, 1, 1)


@pytest.mark.cuda
@needs_cuda
def test_a_nan_stored_as_bfloat16_on_the_gpu_stays_a_nan():
    # The GPU's own NaN (0x7FFFFFFF, from √−1) and a signalling one (0x7F800001), rounded to
    # bfloat16 as the kernels store momentum and parameters: NaN, not −0.0 or +inf.
    bits = torch.tensor([0x3F800000, 0x7F800001, 0x7FFFFFFF, 0xFF800001], dtype=torch.int64)
    src = bits.to(torch.int32).view(torch.float32).cuda()
    out = torch.empty(4, dtype=torch.bfloat16, device="cuda")
    store_nans[(1,)](src, torch.tensor([out.data_ptr()], device="cuda"), BLOCK=4)
    assert bool(out.float().isnan().all()), out.view(torch.int16).tolist()
