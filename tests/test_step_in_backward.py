"""``step_in_backward=True``: each parameter steps from its hook as soon as its gradient is
complete, and the gradient is freed. What it applies is exactly what ``step()`` would: the same
trajectory, bit for bit, as the ordinary mode on the same step path, with accumulation too.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adafactor import Adafactor
from adafactor.presets import ADAM
from helpers import packed_option_sets


def _families() -> dict[str, dict]:
    """The defaults, Adam's preset and every sample and edge case of the options table
    (``helpers.packed_option_sets``), the host-only ones too."""
    families = {"defaults": {}, "adam": {**ADAM, "factored": True, "lr": 1e-3}}
    for i, options in enumerate(packed_option_sets()):
        families[f"table-{i}"] = options
    families["diagnostics-raise"] = {"diagnostics": True, "nonfinite_grad": "raise", "beta1": 0.9}
    families["last-dims-per-slice"] = {"factor_dims": "last", "rms_per_slice": True}
    return families


FAMILIES = _families()


class Net(nn.Module):
    """A matrix used twice in one forward, a tied pair, a stacked 3-D tensor, a vector, a
    frozen matrix and one that gets no gradient on odd steps."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter((torch.randn(shape, generator=gen) * 0.3).to(dtype))

        self.embed = param(11, 8)  # tied: the input embedding and the output projection
        self.twice = param(8, 8)
        self.stack = param(8, 3, 8)  # "largest" factors dims 0 and 2, "last" dims 1 and 2
        self.bias = param(8)
        self.frozen = param(8, 8)
        self.frozen.requires_grad_(False)
        self.sometimes = param(8, 8)

    def forward(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        h = self.embed[tokens]
        h = torch.tanh(h @ self.twice) @ self.twice + self.bias
        h = h @ self.frozen
        if step % 2 == 0:
            h = h + torch.tanh(h @ self.sometimes)
        h = h + torch.einsum("bi,ije->be", h, self.stack)
        return h @ self.embed.T


def groups(net: Net) -> list[dict]:
    return [
        {"params": [net.embed, net.twice, net.frozen]},
        {"params": [net.stack, net.bias, net.sometimes], "weight_decay": 0.01},
    ]


def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randint(0, 11, (6,), generator=gen), torch.randint(0, 11, (6,), generator=gen))
        for _ in range(count)
    ]


def train(
    in_backward: bool,
    options: dict,
    dtype: torch.dtype = torch.float32,
    steps: int = 4,
    accumulation: int = 1,
) -> tuple[Net, Adafactor]:
    net = Net(dtype)
    extra = {"step_in_backward": True, "accumulation_steps": accumulation} if in_backward else {}
    opt = Adafactor(groups(net), **{"rounding_seed": 1, **options}, **extra)
    for i, (x, y) in enumerate(batches(steps * accumulation)):
        logits = net(x, i // accumulation).float()
        (nn.functional.cross_entropy(logits, y) / accumulation).backward()
        if (i + 1) % accumulation == 0:
            opt.step()
            opt.zero_grad()
    return net, opt


def assert_same_run(a: tuple[Net, Adafactor], b: tuple[Net, Adafactor]) -> None:
    (net_a, opt_a), (net_b, opt_b) = a, b
    for (name, p), q in zip(net_a.named_parameters(), net_b.parameters()):
        assert torch.equal(p, q), name
        assert opt_a.state.get(p, {}).keys() == opt_b.state.get(q, {}).keys(), name
        for key, value in opt_a.state.get(p, {}).items():
            assert torch.equal(value, opt_b.state[q][key]), (name, key)
        if p in opt_a.diagnostics:
            for key, value in opt_a.diagnostics[p].items():
                assert torch.equal(value, opt_b.diagnostics[q][key]), (name, key)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_step_in_backward_is_the_ordinary_step_bit_for_bit(step_path, family):
    steps = 2 if step_path == "triton-kernels" else 4  # the interpreter is slow
    ordinary = train(False, FAMILIES[family], steps=steps)
    in_backward = train(True, FAMILIES[family], steps=steps)
    assert int(ordinary[1].state[ordinary[0].sometimes]["step"]) == steps // 2  # odd: no gradient
    assert ordinary[0].frozen not in ordinary[1].state
    assert_same_run(ordinary, in_backward)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sixteen_bit_parameters_step_in_backward_bit_for_bit(step_path, dtype):
    options = {"beta1": 0.9, "weight_decay": 0.01}
    assert_same_run(train(False, options, dtype), train(True, options, dtype))


@pytest.mark.parametrize("accumulation", [1, 2, 4])
def test_accumulation_steps_equal_the_ordinary_mode_with_the_same_accumulation(
    step_path, accumulation
):
    # With 2 and 4, `sometimes` has a gradient in some micro-batches of a window but not in
    # its last: it steps at the end of that window's last backward pass.
    options = {"beta1": 0.9}
    ordinary = train(False, options, steps=3, accumulation=accumulation)
    in_backward = train(True, options, steps=3, accumulation=accumulation)
    assert_same_run(ordinary, in_backward)


def test_gradients_are_freed_and_never_more_than_one_is_alive_at_a_time():
    # Counted in the hooks: while parameter p's hook runs, the gradients alive are p's and
    # those of parameters not yet complete. Untied parameters: at most the largest's bytes.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)
    )
    params = list(model.parameters())
    largest = max(p.numel() * p.element_size() for p in params)
    peaks = []

    def count(_p: torch.Tensor) -> None:
        peaks.append(
            sum(q.grad.numel() * q.grad.element_size() for q in params if q.grad is not None)
        )

    for p in params:
        p.register_post_accumulate_grad_hook(count)  # runs before the optimizer's hook
    opt = Adafactor(model.parameters(), step_in_backward=True)
    for _ in range(3):
        model(torch.randn(16, 32)).square().mean().backward()
        assert all(p.grad is None for p in params)
        opt.step()
    assert len(peaks) == 3 * len(params) and max(peaks) <= largest


@pytest.mark.parametrize("in_backward", [False, True])
def test_no_gradient_outlives_its_step(step_path, in_backward):
    # The gradients themselves, not what .grad shows: once a parameter has stepped (in its
    # hook, or in step() and zero_grad()), nothing of the optimizer's (entries, plans, their
    # closures) may keep its gradient alive, or the mode frees nothing.
    import gc
    import weakref

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    params = list(model.parameters())
    grads: list[weakref.ref] = []
    for p in params:  # runs before the optimizer's hook
        p.register_post_accumulate_grad_hook(lambda q: grads.append(weakref.ref(q.grad)))
    opt = Adafactor(model.parameters(), step_in_backward=in_backward)
    for _ in range(2):
        model(torch.randn(16, 32)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        gc.collect()
        assert len(grads) == len(params) and all(g() is None for g in grads)
        grads.clear()


def test_a_tied_weight_is_stepped_once_after_both_of_its_contributions():
    net = Net()
    hits = []
    net.embed.register_post_accumulate_grad_hook(lambda p: hits.append(p.grad.clone()))
    opt = Adafactor(net.parameters(), step_in_backward=True)
    x, y = batches(1)[0]
    before = net.embed.detach().clone()
    nn.functional.cross_entropy(net(x, 0), y).backward()
    assert len(hits) == 1 and int(opt.state[net.embed]["step"]) == 1
    # The gradient it stepped from is the sum of both uses (as the ordinary mode sees it).
    reference = Net()
    nn.functional.cross_entropy(reference(x, 0), y).backward()
    assert torch.equal(hits[0], reference.embed.grad)
    assert not torch.equal(net.embed.detach(), before)


def test_schedulers_closures_zero_grad_and_checkpoints_keep_working(tmp_path):
    net = Net()
    opt = Adafactor(net.parameters(), relative_step=False, lr=1e-2, step_in_backward=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
    ref_net = Net()
    ref = Adafactor(ref_net.parameters(), relative_step=False, lr=1e-2)
    ref_schedule = torch.optim.lr_scheduler.LambdaLR(ref, lambda t: 0.5**t)
    for i, (x, y) in enumerate(batches(3)):

        def closure(model=net, x=x, y=y, i=i):
            loss = nn.functional.cross_entropy(model(x, i), y)
            loss.backward()
            return loss

        opt.zero_grad()
        loss = opt.step(closure)
        schedule.step()
        ref.zero_grad()
        ref_loss = ref.step(lambda x=x, y=y, i=i: closure(ref_net, x, y, i))
        ref_schedule.step()
        assert torch.equal(loss, ref_loss)
    assert_same_run((ref_net, ref), (net, opt))

    # A checkpoint saved in one mode resumes in the other, and back.
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt")
    resumed_net = Net()
    resumed_net.load_state_dict(saved["model"])
    resumed = Adafactor(resumed_net.parameters(), relative_step=False, lr=1e-2)
    resumed.load_state_dict(saved["opt"])
    for i, (x, y) in enumerate(batches(5)[3:]):
        for model, optimizer in ((net, opt), (resumed_net, resumed)):
            nn.functional.cross_entropy(model(x, i), y).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert_same_run((resumed_net, resumed), (net, opt))


def test_the_hooks_come_off_and_groups_added_later_get_them():
    net = Net()
    opt = Adafactor([net.embed, net.twice], step_in_backward=True)
    opt.add_param_group({"params": [net.stack, net.bias, net.sometimes]})
    x, y = batches(1)[0]
    nn.functional.cross_entropy(net(x, 0), y).backward()
    assert all(p.grad is None for p in net.parameters())
    assert int(opt.state[net.stack]["step"]) == 1
    opt.step_in_backward = False
    nn.functional.cross_entropy(net(x, 0), y).backward()
    assert net.stack.grad is not None and int(opt.state[net.stack]["step"]) == 1
    opt.step()
    assert int(opt.state[net.stack]["step"]) == 2


def test_a_parameter_in_two_optimizers_stepping_in_backward_is_refused():
    net = Net()
    first = Adafactor([net.embed, net.twice], step_in_backward=True)
    with pytest.raises(ValueError, match=r"params'\]\[0\].*already stepped in backward"):
        Adafactor([net.twice], step_in_backward=True)
    with pytest.raises(ValueError, match="already stepped in backward"):
        first_group = Adafactor([net.bias], step_in_backward=True)
        first_group.add_param_group({"params": [net.embed]})
    assert len(first_group.param_groups) == 1
    x, y = batches(1)[0]
    nn.functional.cross_entropy(net(x, 0), y).backward()
    assert int(first.state[net.twice]["step"]) == 1
    first.step_in_backward = False  # releases its parameters
    Adafactor([net.twice], step_in_backward=True)


def test_accumulation_steps_without_step_in_backward_is_refused():
    with pytest.raises(ValueError, match="accumulation_steps=2 counts micro-batches"):
        Adafactor(Net().parameters(), accumulation_steps=2)
    with pytest.raises(ValueError, match="accumulation_steps=0 is invalid"):
        Adafactor(Net().parameters(), step_in_backward=True, accumulation_steps=0)


def test_a_grad_scaler_is_refused():
    net = Net()
    opt = Adafactor(net.parameters(), step_in_backward=True)
    scaler = torch.amp.GradScaler("cpu")
    x, y = batches(1)[0]
    scaler.scale(nn.functional.cross_entropy(net(x, 0), y)).backward()
    with pytest.raises(RuntimeError, match="GradScaler cannot drive step_in_backward"):
        scaler.step(opt)


def test_nonfinite_raise_names_the_parameter_before_it_changes():
    net = Net()
    opt = Adafactor(net.parameters(), step_in_backward=True, nonfinite_grad="raise")
    net.twice.register_hook(lambda g: torch.full_like(g, float("nan")))
    before = net.twice.detach().clone()
    x, y = batches(1)[0]
    with pytest.raises(
        ValueError, match=r"non-finite gradient in parameter \(param_groups\[0\]\['params'\]\[1\]"
    ):
        nn.functional.cross_entropy(net(x, 0), y).backward()
    assert torch.equal(net.twice.detach(), before) and net.twice not in opt.state


def test_one_trainer_and_kohya_protocols_step_as_the_ordinary_mode(step_path):
    # OneTrainer: hooks call step_parameter(p, group, i), free the gradient, then step();
    # kohya's sd-scripts: step_param(p, group), free it.
    for method in ("step_parameter", "step_param"):
        net = Net()
        opt = Adafactor(groups(net), beta1=0.9)
        assert opt.supports_fused_back_pass()
        for group in opt.param_groups:
            for i, p in enumerate(group["params"]):
                if p.requires_grad:

                    def hook(t, group=group, i=i, opt=opt, method=method):
                        if method == "step_parameter":
                            opt.step_parameter(t, group, i)
                        else:
                            opt.step_param(t, group)
                        t.grad = None

                    p.register_post_accumulate_grad_hook(hook)
        for i, (x, y) in enumerate(batches(4)):
            nn.functional.cross_entropy(net(x, i), y).backward()
            opt.step()
            opt.zero_grad()
        ordinary = train(False, {"beta1": 0.9})
        ordinary_net = ordinary[0]
        for p, q in zip(ordinary_net.parameters(), net.parameters()):
            assert torch.equal(p, q)
