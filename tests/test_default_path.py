"""The default path (``fused=None``: the C kernels on CPU, Triton on CUDA, run here by its
interpreter) keeps every promise of the eager step: whatever the dtypes and layouts of the
parameter, its gradient and its state, every path gives the eager step's result on clean,
contiguous copies of the same values, or refuses before anything changes.

Tolerances as in test_kernels.py: float32 to ``rtol=1e-5``; a 16-bit parameter may land one
rounding step apart per step.
"""

from __future__ import annotations

import pytest
import torch

import adafactor.kernels
from adafactor import Adafactor
from helpers import assert_unchanged, snapshot, use_step_path

ULP = {torch.float32: 0.0, torch.float64: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
FLOATS = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def assert_close_run(got, want, steps):
    """``got`` parameters as ``want``'s, to the kernels' tolerance after ``steps`` steps."""
    for q, p in zip(got, want):
        assert q.dtype == p.dtype and q.shape == p.shape
        scale = p.detach().double().abs().max().item() if p.numel() else 0.0
        atol = ULP[p.dtype] * steps * scale + 1e-7 * scale
        torch.testing.assert_close(q.double(), p.double(), rtol=1e-5, atol=atol)


def gradients(shapes, dtypes, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        [(torch.randn(s, generator=gen) * (1 + k)).to(d) for s, d in zip(shapes, dtypes)]
        for k in range(steps)
    ]


def train(params, grads_per_step, **options):
    opt = Adafactor(params, **options)
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad_dtype = None  # torch then lets the gradient's dtype differ from p's
            p.grad = g
        opt.step()
    return opt


def fresh(values):
    return [torch.nn.Parameter(v.clone()) for v in values]


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grad_dtype", FLOATS)
def test_a_gradient_of_another_dtype_steps_as_the_eager_step(
    monkeypatch, step_path, param_dtype, grad_dtype
):
    # Before: the kernels read a gradient in its parameter's dtype (a bfloat16 gradient of a
    # float32 parameter read as float32: past its end; a float32 one of a bfloat16 parameter
    # read as garbage bits, every step skipped as non-finite).
    shapes = [(33, 20), (7,)]
    gen = torch.Generator().manual_seed(1)
    values = [torch.randn(s, generator=gen).to(param_dtype) for s in shapes]
    grads = gradients(shapes, [grad_dtype] * 2, steps=2)
    use_step_path(monkeypatch, "eager")
    want = fresh(values)
    train(want, grads, beta1=0.9, weight_decay=0.01)
    use_step_path(monkeypatch, step_path)
    got = fresh(values)
    opt = train(got, grads, beta1=0.9, weight_decay=0.01, nonfinite_grad="raise")
    assert_close_run(got, want, steps=2)
    assert all(int(opt.state[p]["nonfinite_skips"]) == 0 for p in got)


def test_a_large_bfloat16_gradient_of_a_float32_parameter_is_read_in_its_own_dtype(monkeypatch):
    # The case that crashed the process: 1024×1024, the C kernels reading 4 bytes an element
    # from a 2-byte buffer.
    gen = torch.Generator().manual_seed(2)
    value = torch.randn(1024, 1024, generator=gen)
    grads = [[torch.randn(1024, 1024, generator=gen).bfloat16()]]
    use_step_path(monkeypatch, "eager")
    want = fresh([value])
    train(want, grads)
    use_step_path(monkeypatch, "cpu-kernels")
    got = fresh([value])
    train(got, grads)
    assert_close_run(got, want, steps=1)


def _layouts():
    """Parameters, gradients and state in the layouts users make: (name, make the
    parameter's value from clean values, make the gradient from clean values)."""

    def transposed(v):
        return v.t().contiguous().t() if v.dim() == 2 else v

    def sliced(v):  # every other column of a wider tensor
        if v.dim() != 2:
            return v
        wide = torch.zeros(v.shape[0], 2 * v.shape[1], dtype=v.dtype)
        wide[:, ::2] = v
        return wide[:, ::2]

    def offset(v):  # contiguous, starting one element into its storage
        flat = torch.cat([torch.zeros(1, dtype=v.dtype), v.reshape(-1)])
        return flat[1:].view(v.shape)

    def expanded(v):  # a gradient broadcast from one row (every row the same)
        return v[:1].expand_as(v) if v.dim() == 2 else v

    same = lambda v: v  # noqa: E731
    return {
        "transposed-parameter": (transposed, same),
        "sliced-parameter": (sliced, same),
        "offset-parameter": (offset, same),
        "transposed-gradient": (same, transposed),
        "sliced-gradient": (same, sliced),
        "expanded-gradient": (same, expanded),
        "offset-gradient": (same, offset),
    }


LAYOUTS = _layouts()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_layout_steps_as_clean_contiguous_copies_do(monkeypatch, step_path, layout, dtype):
    make_param, make_grad = LAYOUTS[layout]
    shapes = [(12, 9), (5,), (), (0, 4)]
    gen = torch.Generator().manual_seed(3)
    values = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [[make_grad(g) for g in step] for step in gradients(shapes, [dtype] * 4, steps=2)]
    use_step_path(monkeypatch, "eager")
    want = fresh(values)
    train(want, [[g.contiguous() for g in step] for step in grads], beta1=0.9)
    use_step_path(monkeypatch, step_path)
    got = [torch.nn.Parameter(make_param(v.clone())) for v in values]
    train(got, grads, beta1=0.9)
    assert_close_run(got, want, steps=2)


def test_channels_last_parameters_step_as_contiguous_ones(monkeypatch, step_path):
    gen = torch.Generator().manual_seed(4)
    value = torch.randn(6, 4, 3, 3, generator=gen)
    grads = gradients([value.shape], [torch.float32], steps=2)
    use_step_path(monkeypatch, "eager")
    want = fresh([value])
    train(want, grads)
    use_step_path(monkeypatch, step_path)
    got = [torch.nn.Parameter(value.clone().to(memory_format=torch.channels_last))]
    train(got, grads)
    assert not got[0].is_contiguous()  # still the user's layout
    assert_close_run(got, want, steps=2)


@pytest.mark.parametrize("factored", [True, False])
def test_state_loaded_with_transposed_strides_steps_right(monkeypatch, step_path, factored):
    # What converting an (in, out) checkpoint to nn.Linear leaves: the right values with
    # transposed strides (torch.load keeps them). Before, the C step read momentum in the
    # wrong order, and an unfactored exp_avg_sq raised an error naming no parameter.
    gen = torch.Generator().manual_seed(5)
    value = torch.randn(10, 7, generator=gen)
    grads = gradients([value.shape], [torch.float32], steps=3, seed=6)
    options = dict(beta1=0.9, factored=factored)
    use_step_path(monkeypatch, "eager")
    source = fresh([value])
    opt = train(source, grads[:1], **options)
    saved = opt.state_dict()
    want = fresh([source[0].detach()])
    reference = Adafactor(want, **options)
    reference.load_state_dict(saved)
    for g in grads[1:]:
        want[0].grad = g[0]
        reference.step()

    use_step_path(monkeypatch, step_path)
    got = fresh([source[0].detach()])
    opt = Adafactor(got, **options)
    strided = {
        "state": {
            0: {
                k: (v.t().contiguous().t() if v.dim() == 2 else v)
                for k, v in saved["state"][0].items()
            }
        },
        "param_groups": saved["param_groups"],
    }
    assert not strided["state"][0]["exp_avg"].is_contiguous()
    opt.load_state_dict(strided)
    for g in grads[1:]:
        got[0].grad = g[0]
        opt.step()
    assert_close_run(got, want, steps=2)


def test_state_set_by_hand_with_another_layout_is_made_contiguous(monkeypatch, step_path):
    gen = torch.Generator().manual_seed(7)
    value = torch.randn(8, 6, generator=gen)
    grads = gradients([value.shape], [torch.float32], steps=2)
    use_step_path(monkeypatch, "eager")
    want = fresh([value])
    train(want, grads, beta1=0.9)
    use_step_path(monkeypatch, step_path)
    got = fresh([value])
    opt = Adafactor(got, beta1=0.9)
    got[0].grad = grads[0][0]
    opt.step()
    state = opt.state[got[0]]
    state["exp_avg"] = state["exp_avg"].t().contiguous().t()
    got[0].grad = grads[1][0]
    opt.step()
    assert state["exp_avg"].is_contiguous()
    assert_close_run(got, want, steps=2)


def test_a_group_that_cannot_get_its_kernels_raises_before_an_earlier_group_steps(
    monkeypatch,
):
    # fused=True in the second group, and no kernels here: before, the first group had
    # already stepped when the second raised.
    monkeypatch.setattr(adafactor.kernels, "_backend", lambda device_type: None)
    a, b = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))
    opt = Adafactor([{"params": [a], "fused": False}, {"params": [b], "fused": True}])
    a.grad, b.grad = torch.randn(4, 3), torch.randn(5)
    snap = snapshot(opt, [a, b])
    with pytest.raises(RuntimeError, match="fused=True"):
        opt.step()
    assert_unchanged(opt, [a, b], snap)
    assert not opt.state  # not even initialized


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.int32])
def test_parameters_no_path_can_step_are_refused_at_construction(dtype):
    good = torch.nn.Parameter(torch.randn(3))
    bad = torch.nn.Parameter(torch.zeros(2, 2).to(dtype), requires_grad=False)
    with pytest.raises(ValueError, match=rf"params'\]\[1\], shape \(2, 2\)\) has dtype {dtype}"):
        Adafactor([good, bad])


def test_a_parameter_made_float8_later_or_a_float8_gradient_changes_nothing(step_path):
    a, b = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))
    opt = Adafactor([a, b])
    a.grad, b.grad = torch.randn(4, 3), torch.randn(5)
    opt.step()
    b.grad_dtype = None
    b.grad = torch.randn(5).to(torch.float8_e4m3fn)
    a.grad = torch.randn(4, 3)
    snap = snapshot(opt, [a, b])
    with pytest.raises(ValueError, match=r"\[1\], shape \(5,\)\) has a gradient of dtype"):
        opt.step()
    assert_unchanged(opt, [a, b], snap)
    b.data = b.data.to(torch.float8_e5m2)
    b.grad = None
    with pytest.raises(ValueError, match=r"\[1\], shape \(5,\)\) now has dtype"):
        b.grad = torch.randn(5)
        opt.step()


def test_a_parameter_whose_elements_share_memory_is_refused():
    p = torch.nn.Parameter(torch.randn(3, 1).expand(3, 4))
    with pytest.raises(ValueError, match=r"shape \(3, 4\)\) has elements that share memory"):
        Adafactor([p])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_tensor_lr_skips_the_step_on_every_path(step_path, bad):
    # Before: the C kernels read NaN as "no cap" (a 70× step), eager wrote NaN everywhere.
    gen = torch.Generator().manual_seed(8)
    params = fresh([torch.randn(6, 5, generator=gen), torch.randn(4, generator=gen)])
    lr = torch.tensor(1e-2)
    opt = Adafactor(params, lr=lr, relative_step=False, beta1=0.9)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    lr.fill_(bad)
    snap = snapshot(opt, params)
    before = [int(opt.state[p]["nonfinite_skips"]) for p in params]
    opt.step()
    values, state = snap
    for p, v in zip(params, values):
        assert torch.equal(p, v)
    for index, (p, skips) in enumerate(zip(params, before)):
        assert int(opt.state[p]["nonfinite_skips"]) == skips + 1
        assert int(opt.state[p]["step"]) == int(state["state"][index]["step"]) == 1
    lr.fill_(1e-2)  # and training goes on
    opt.step()
    assert all(int(opt.state[p]["step"]) == 2 for p in params)
    assert all(p.isfinite().all() for p in params)


def test_a_non_finite_tensor_lr_raises_under_raise_before_anything_changes(step_path):
    params = fresh([torch.randn(6, 5), torch.randn(4)])
    lr = torch.tensor(float("nan"))
    opt = Adafactor(params, lr=torch.tensor(1e-2), nonfinite_grad="raise")
    opt.param_groups[0]["lr"] = lr
    for p in params:
        p.grad = torch.randn_like(p)
    values = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=r"non-finite lr of param_groups\[0\]"):
        opt.step()
    assert all(torch.equal(p, v) for p, v in zip(params, values))
    assert not opt.state


def test_rocm_steps_eagerly_unless_fused_is_true(monkeypatch):
    # ROCm reports its GPUs as "cuda"; the Triton kernels have never run on one.
    from adafactor.kernels import backend_for

    found = object()
    monkeypatch.setattr(torch.version, "hip", "6.2.0")
    monkeypatch.setattr(adafactor.kernels, "_backend", lambda device_type: found)
    assert backend_for(None, torch.device("cuda")) is None
    assert backend_for(True, torch.device("cuda")) is found
    assert backend_for(None, torch.device("cpu")) is found


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_state_saved_in_another_dtype_loads_converted_and_steps_as_eager(
    monkeypatch, step_path, param_dtype, state_dtype
):
    # A checkpoint whose statistics and momentum are in another dtype than the layout's
    # (float32 for 16-bit parameters, else the parameter's): converted on load, exactly where
    # the conversion widens, then every path steps as the eager step from the same state.
    gen = torch.Generator().manual_seed(9)
    value = torch.randn(10, 6, generator=gen).to(param_dtype)
    grads = gradients([value.shape], [param_dtype], steps=2, seed=10)
    use_step_path(monkeypatch, "eager")
    source = fresh([value])
    saved = train(source, grads[:1], beta1=0.9).state_dict()
    for key in ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg"):
        saved["state"][0][key] = saved["state"][0][key].to(state_dtype)
    runs = []
    for path in ("eager", step_path):
        use_step_path(monkeypatch, path)
        params = fresh([source[0].detach()])
        opt = Adafactor(params, beta1=0.9)
        opt.load_state_dict(saved)
        layout = opt.layout(params[0], opt.param_groups[0])
        assert all(opt.state[params[0]][k].dtype == spec.dtype for k, spec in layout.items())
        params[0].grad = grads[1][0]
        opt.step()
        runs.append(params)
    assert_close_run(runs[1], runs[0], steps=1)
