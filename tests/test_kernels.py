"""The group kernels (C on CPU; Triton, run here by its interpreter) against the eager step,
which defines the math, and what they promise besides: a fixed number of launches however
many tensors a group holds, no host sync, nothing re-JIT-ed across steps, plans that follow new
storage, a clear fallback where they cannot be built, a logged build.

Tolerances: the kernels sum in other orders than torch (tiles, then tiles' partials), so
float32 results agree to a few ulps per operation: over a few steps of O(10) operations
``rtol=1e-5``. A 16-bit parameter is rounded once per step from float32 values that agree
that far, so it may land one rounding step apart: at most one ulp of its dtype per step.
"""

from __future__ import annotations

import logging
import math
import re

import pytest
import torch

import adafactor.kernels
from adafactor import Adafactor
from adafactor.kernels import cpu
from adafactor.kernels.group import PlanCache
from adafactor.kernels.plan import Geometry
from adafactor.presets import ADAM
from helpers import (
    packed_option_sets,
    triton_interpreted,
    use_step_path,
)

KERNEL_PATHS = ["cpu-kernels", "triton-kernels"]
SHAPES = [(37, 29), (7,), (), (1, 5), (0, 4), (3, 8, 6), (2, 3, 5, 2)]
# The defaults, the Adam preset, and every sample and edge case of the options table packed
# into a few option sets (helpers.packed_option_sets): a new option is in them the day it is
# added. Each is named by the options it sets.
FAMILIES = {
    "defaults": {},
    "momentum-gradient-adam": {**ADAM, "factored": True, "lr": 1e-3},
    **{"+".join(options): options for options in packed_option_sets()},
}
ULP = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


def train(shapes, options, dtype, steps, nan_at=1, geometry=None, seed=0):
    """``steps`` steps of an optimizer over ``shapes`` (a NaN in the first tensor's gradient
    at step ``nan_at``); the parameters and the optimizer."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]
    opt = Adafactor(params, **options)
    if geometry is not None:
        opt._plans[0] = PlanCache(geometry)
    for k in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=gen) * (1 + k)).to(dtype)
        if k == nan_at and params[0].numel():
            params[0].grad.view(-1)[5] = float("nan")
        opt.step()
    return params, opt


def assert_same_run(eager, kernels, dtype, steps):
    (ps, opt), (qs, kopt) = eager, kernels
    for p, q in zip(ps, qs):
        scale = p.detach().float().abs().max().item() if p.numel() else 0.0
        ulps = ULP[dtype] * steps * scale
        torch.testing.assert_close(q.float(), p.float(), rtol=1e-5, atol=ulps + 1e-7 * scale)
        for key, value in opt.state[p].items():
            mine = kopt.state[q][key]
            assert mine.dtype == value.dtype and mine.shape == value.shape, key
            if not value.is_floating_point():
                assert torch.equal(mine, value), key
                continue
            v_scale = value.float().abs().max().item() if value.numel() else 0.0
            slack = (ULP.get(value.dtype, 0.0) * steps + 1e-6) * v_scale
            torch.testing.assert_close(mine.float(), value.float(), rtol=1e-5, atol=slack, msg=key)
    # The NaN step was skipped and counted on both paths.
    if ps[0].numel():
        assert int(kopt.state[qs[0]]["nonfinite_skips"]) == 1
        assert int(kopt.state[qs[0]]["step"]) == steps - 1


def run_both(monkeypatch, path, shapes, options, dtype, steps, geometry=None):
    use_step_path(monkeypatch, "eager")
    eager = train(shapes, options, dtype, steps)
    use_step_path(monkeypatch, path)
    kernels = train(shapes, options, dtype, steps, geometry=geometry)
    assert_same_run(eager, kernels, dtype, steps)
    return kernels


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_kernels_match_the_eager_step_in_float32(monkeypatch, path, family):
    run_both(monkeypatch, path, SHAPES, FAMILIES[family], torch.float32, steps=3)


# The defaults in both 16-bit dtypes, the other families in one each, in turn (the interpreter
# is slow); without options that draw random bits, which the paths draw differently.
SIXTEEN_BITS = [("defaults", torch.float16)] + [
    (family, (torch.bfloat16, torch.float16)[i % 2]) for i, family in enumerate(FAMILIES)
]


@pytest.mark.parametrize(
    ("family", "dtype"), SIXTEEN_BITS, ids=[f"{f}-{str(d)[6:]}" for f, d in SIXTEEN_BITS]
)
@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_kernels_match_the_eager_step_in_16_bits(monkeypatch, path, family, dtype):
    run_both(monkeypatch, path, SHAPES, FAMILIES[family], dtype, steps=3)


@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_small_tiles_split_slices_into_many_tiles(monkeypatch, path):
    # 4×8 tiles: a 37×29 matrix is 10×4 tiles, so every row and column sum goes through the
    # tiles' partials and the second, fixed-order reduction.
    options = {"beta1": 0.9, "rms_per_slice": True, "weight_decay": 0.01}
    run_both(
        monkeypatch, path, [(37, 29), (3, 8, 6), (45,)], options, torch.float32, 2, Geometry(4, 8)
    )


@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_the_backends_own_tiles_split_long_rows_and_many_rows(monkeypatch, path):
    # With each backend's own geometry (CPU: whole rows up to 4096 wide, 512 at a time;
    # Triton: 512 × 512): rows longer than a tile, more rows than a tile, a long vector.
    options = {"beta1": 0.9, "weight_decay": 0.01}
    run_both(monkeypatch, path, [(3, 4100), (600, 7), (9000,)], options, torch.float32, 2)


def test_the_cpu_tiles_fit_the_c_kernels_buffers():
    from adafactor.kernels import cpu

    max_cols = int(re.search(r"#define MAX_COLS (\d+)", cpu.SOURCE.read_text())[1])
    assert cpu.GEOMETRY.cols <= max_cols


@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_mixed_dtypes_in_one_group(monkeypatch, path):
    # float32, bfloat16 and float16 tensors share the kernels' calls; float64 steps eagerly
    # beside them, in the same group step.
    def run(step_path):
        use_step_path(monkeypatch, step_path)
        gen = torch.Generator().manual_seed(3)
        dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
        params = [
            torch.nn.Parameter(torch.randn(16, 12, generator=gen).to(dtype)) for dtype in dtypes
        ]
        opt = Adafactor(params, beta1=0.9)
        for _ in range(2):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            opt.step()
        return params

    for p, q in zip(run("eager"), run(path)):
        ulp = ULP.get(p.dtype, 0.0)
        atol = 2 * ulp * p.detach().float().abs().max().item() + 1e-7
        torch.testing.assert_close(q.float(), p.float(), rtol=1e-5, atol=atol)


@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_the_plan_follows_new_storage(monkeypatch, path):
    # Moving a parameter's data (``p.data = ...``) between steps: the plan is rebuilt from the
    # new pointers, and the run matches one stepped eagerly.
    def run(step_path):
        use_step_path(monkeypatch, step_path)
        gen = torch.Generator().manual_seed(4)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(9, 7), (5,)]]
        opt = Adafactor(params)
        for k in range(3):
            if k == 1:
                params[0].data = params[0].data.clone()
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        return params

    for p, q in zip(run("eager"), run(path)):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not triton_interpreted(), reason="needs triton's interpreter")
def test_launches_are_the_same_for_3_and_300_tensors(monkeypatch):
    # Counted, not run: what is launched per step is decided on the host (the warm-up
    # launches of a first step with new flags left out).
    from adafactor.kernels import triton as kernels

    use_step_path(monkeypatch, "triton-kernels")
    launched: list[str] = []
    monkeypatch.setattr(kernels, "prepare", lambda *_: None)
    monkeypatch.setattr(kernels, "_launch", lambda kernel, *_, **__: launched.append(kernel))
    counts = []
    for count in (3, 300):
        shapes = [(6, 4) if i % 3 else (5,) for i in range(count)]
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        opt = Adafactor(params, beta1=0.9)
        for p in params:
            p.grad = torch.randn_like(p)
        before = len(launched)
        opt.step()
        counts.append(len(launched) - before)
    # Five job kernels and three tile kernels, each of these once per way of reading its
    # tensors (Access): vectors for (6, 4), one element at a time for (5,).
    assert counts == [11, 11]


@pytest.mark.skipif(not triton_interpreted(), reason="needs triton's interpreter")
def test_nothing_is_re_jitted_across_steps_schedules_or_a_changed_lr(monkeypatch):
    # Triton compiles a kernel once per set of compile-time constants and argument types;
    # every argument here is a tensor, so the constants are what could change. A scheduler
    # changing lr and a changed weight decay must not change them.
    from adafactor.kernels import triton as kernels

    use_step_path(monkeypatch, "triton-kernels")
    seen = []
    launch = kernels._launch

    def record(kernel, grid, *args, **constants):
        seen.append(
            (kernel.__name__, tuple(sorted(constants.items())), tuple(a.dtype for a in args))
        )
        launch(kernel, grid, *args, **constants)

    monkeypatch.setattr(kernels, "_launch", record)
    monkeypatch.setattr(kernels, "_prepared", {})  # the warm-up runs here, whatever ran before
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(12, 10), (7,)]]
    opt = Adafactor(params, beta1=0.9, relative_step=False, lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (t + 1))
    variants = []
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        schedule.step()
        opt.param_groups[0]["weight_decay"] *= 0.5
        variants.append(set(seen))
    # Eight kernels, the three tile kernels also compiled to read vectors by the warm-up's
    # (4,) tensor (these tensors are read one element at a time).
    assert len(variants[0]) == 11 and variants[0] == variants[1] == variants[2]


@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_a_kernel_step_makes_no_host_sync(monkeypatch, path):
    use_step_path(monkeypatch, path)
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(12, 10), (7,), (3, 4, 5)]]
    opt = Adafactor(params, beta1=0.9, diagnostics=True, stochastic_rounding=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # the plan is built (and the library loaded) outside the watch

    def sync(*args, **kwargs):
        raise AssertionError("host sync inside step()")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    monkeypatch.undo()
    assert int(opt.state[params[0]]["step"]) == 2


def test_fused_true_raises_where_no_kernels_can_run():
    p = torch.nn.Parameter(torch.ones(4, 3, device="meta"))
    p.grad = torch.ones(4, 3, device="meta")
    with pytest.raises(RuntimeError, match="fused=True: no group kernels for meta"):
        Adafactor([p], fused=True).step()


@pytest.fixture
def fresh_cpu_build(monkeypatch, tmp_path):
    """A build of the CPU kernels from scratch, into an empty cache, for this test only."""
    monkeypatch.setenv("ADAFACTOR_CACHE_DIR", str(tmp_path / "cache"))
    adafactor.kernels.reset()
    yield tmp_path / "cache"
    adafactor.kernels.reset()


def test_a_failed_build_falls_back_to_eager_or_raises(monkeypatch, fresh_cpu_build):
    monkeypatch.setattr(cpu, "compiler", lambda: "false")  # a compiler that always fails
    eager, auto = torch.nn.Parameter(torch.ones(6, 4)), torch.nn.Parameter(torch.ones(6, 4))
    eager.grad, auto.grad = torch.ones(6, 4), torch.ones(6, 4)
    Adafactor([eager], fused=False).step()
    with pytest.warns(UserWarning, match="cannot be built, stepping eagerly"):
        Adafactor([auto]).step()
    assert torch.equal(eager, auto)
    with pytest.raises(RuntimeError, match="building the CPU kernels failed"):
        Adafactor([auto], fused=True).step()
    assert torch.equal(eager, auto)  # nothing changed


def test_the_build_is_logged_once_with_its_time(fresh_cpu_build, caplog):
    caplog.set_level(logging.INFO, logger="adafactor")
    for _ in range(2):
        p = torch.nn.Parameter(torch.ones(6, 4))
        p.grad = torch.ones(6, 4)
        Adafactor([p]).step()
    messages = [r.getMessage() for r in caplog.records if r.name == "adafactor"]
    assert len(messages) == 2, messages
    assert messages[0].startswith("adafactor: building the CPU kernels")
    seconds = float(messages[1].split(" in ")[1].split(" s")[0])
    assert messages[1].startswith("adafactor: built the CPU kernels") and seconds > 0
    assert len(list(fresh_cpu_build.glob("*.so"))) == 1  # cached for the next process


def test_torch_compile_of_the_step_traces_the_eager_step():
    # torch.compile(optimizer.step, fullgraph=True) fails on any graph break; under tracing
    # the step takes the eager phases (a C call cannot be traced), and matches the kernels.
    torch.manual_seed(0)

    def make():
        return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))

    models = [make()]
    models.append(make())
    models[1].load_state_dict(models[0].state_dict())
    opts = [Adafactor(m.parameters(), beta1=0.9) for m in models]
    compiled_step = torch.compile(opts[0].step, fullgraph=True)
    x, y = torch.randn(8, 16), torch.randn(8, 4)
    for _ in range(3):
        for model, opt, step in zip(models, opts, (compiled_step, opts[1].step)):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            step()
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_stochastic_rounding_is_unbiased_on_every_path(step_path):
    # 20 steps that each move a bfloat16 parameter by far less than half a bfloat16 step:
    # round-to-nearest loses all of them, stochastic rounding keeps their sum on average.
    # An element just below 1 rounds down (by 2^-8) with probability 1e-5/2^-8 per step, so
    # the count of roundings is about Poisson: the mean drift is within 3 standard deviations,
    # 3/√(expected count), of the exact drift.
    side = 64 if step_path == "triton-kernels" else 256  # the interpreter is slow
    events = side * side * 20 * 1e-5 / 2**-8

    def drift(stochastic: bool) -> float:
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.ones(side, side, dtype=torch.bfloat16))
        opt = Adafactor(
            [p],
            relative_step=False,
            scale_parameter=False,
            lr=1e-5,
            clip_threshold=None,
            rounding="stochastic" if stochastic else "nearest",
        )
        for _ in range(20):
            p.grad = torch.ones_like(p)
            opt.step()
        return (p.double() - 1.0).mean().item()

    assert drift(False) == 0.0
    assert math.isclose(drift(True), -20 * 1e-5, rel_tol=3 / math.sqrt(events))
