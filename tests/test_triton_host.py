"""The Triton backend's host side, run with its kernels in Triton's interpreter on CPU tensors:
what a CUDA-graph capture keeps alive, and what happens when a kernel cannot be compiled or
launched."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from adafactor import Adafactor
from helpers import triton_interpreted, use_step_path

pytestmark = pytest.mark.skipif(not triton_interpreted(), reason="needs triton's interpreter")


def _reachable(held: Any) -> list[Any]:
    """Everything ``held`` holds, through tuples and lists."""
    found, todo = [], [held]
    while todo:
        item = todo.pop()
        found.append(item)
        if isinstance(item, (tuple, list)):
            todo.extend(item)
    return found


def test_a_captured_step_keeps_the_host_buffers_it_copies_from(monkeypatch):
    # A CUDA graph replays the copies it captured from pinned host memory: that memory must
    # outlive the graph, or torch's host allocator hands it out again and replays read
    # someone else's bytes as lr, β… Every host tensor a step copies from without waiting
    # is held by the group's plan cache while a capture is under way.
    use_step_path(monkeypatch, "triton-kernels")
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(12, 10), (7,)]]
    opt = Adafactor(params, beta1=0.9, lr=torch.tensor(1e-2))
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    sources: list[torch.Tensor] = []
    copy = torch.Tensor.copy_

    def recording_copy(self, src, non_blocking=False):
        if non_blocking and isinstance(src, torch.Tensor):
            sources.append(src)
        return copy(self, src, non_blocking)

    monkeypatch.setattr(torch.Tensor, "copy_", recording_copy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    monkeypatch.undo()
    (cache,) = opt._plans.values()
    held = _reachable(cache.held)
    assert sources, "the step copied nothing from the host: the test sees nothing"
    for src in sources:
        assert any(h is src for h in held), "a host buffer a captured copy reads is not held"


class _Failing:
    """A kernel whose launch fails as a Triton without a C compiler fails at first launch."""

    def __init__(self, kernel: Any) -> None:
        self.__name__ = kernel.__name__

    def __getitem__(self, grid: Any) -> Any:
        def launch(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("injected: failed to build the launcher (no C compiler)")

        return launch

    def warmup(self, *args: Any, **kwargs: Any) -> None:
        self[None]()


def _trained(fused: bool | None, steps: int = 2):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(12, 10), (7,)]]
    opt = Adafactor(params, beta1=0.9, weight_decay=0.01, fused=fused)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return params, opt


@pytest.fixture
def failing_commit(monkeypatch):
    """The Triton path, with the last kernel of a step (after X is written) failing at its
    first launch, and nothing prepared yet."""
    import adafactor.kernels
    from adafactor.kernels import triton as kernels

    use_step_path(monkeypatch, "eager")
    expected = _trained(False)
    adafactor.kernels.reset()
    use_step_path(monkeypatch, "triton-kernels")
    monkeypatch.setattr(kernels, "commit", _Failing(kernels.commit))
    yield expected
    adafactor.kernels.reset()


def test_a_kernel_failing_at_its_first_launch_steps_eagerly_after_one_warning(failing_commit):
    from adafactor.kernels import KernelBuildWarning

    (eager, eager_opt) = failing_commit
    with pytest.warns(KernelBuildWarning, match="commit: RuntimeError: injected") as said:
        params, opt = _trained(None)
    assert len(said) == 1  # said once, remembered for the process
    for p, q in zip(eager, params):
        assert torch.equal(p, q)  # the eager step's numbers, bit for bit
        for key, value in eager_opt.state[p].items():
            assert torch.equal(opt.state[q][key], value), key


def test_a_kernel_failing_at_its_first_launch_raises_under_fused_true(failing_commit):
    from adafactor.kernels import KernelBuildError

    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(12, 10), (7,)]]
    opt = Adafactor(params, beta1=0.9, fused=True)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    before = [p.detach().clone() for p in params]
    with pytest.raises(KernelBuildError, match=r"fused=True: .*commit: RuntimeError: injected"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # nothing changed
    for p in params:  # the state was made, and left as made
        assert int(opt.state[p]["step"]) == 0
        assert all(not v.any() for k, v in opt.state[p].items() if k != "nonfinite_skips")


def test_a_failed_warm_up_on_choosing_the_cuda_backend_falls_back_or_raises(monkeypatch):
    # Choosing the Triton backend for a device compiles and launches every kernel on a tiny
    # plan (kernels.triton.prepare_device): where that fails, the CPU backend's rule.
    import adafactor.kernels
    from adafactor.kernels import KernelBuildError, KernelBuildWarning, backend_for
    from adafactor.kernels import triton as kernels

    def failing(device):
        raise KernelBuildError("the Triton kernels cannot be compiled: injected")

    adafactor.kernels.reset()
    monkeypatch.setattr(kernels, "available", lambda: True)
    monkeypatch.setattr(kernels, "prepare_device", failing)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    try:
        with pytest.warns(KernelBuildWarning, match="injected"):
            assert backend_for(None, torch.device("cuda")) is None
        with pytest.raises(KernelBuildError, match=r"fused=True: .*injected"):
            backend_for(True, torch.device("cuda"))
    finally:
        adafactor.kernels.reset()


def test_a_kernel_failing_at_its_first_launch_steps_phase_by_phase_eagerly(failing_commit):
    # Pieces of tensors split across processes step phase by phase, their partial sums
    # completed between phases: the eager fallback hands on the same sums (here in one
    # process, where completing them changes nothing).
    from adafactor.kernels import KernelBuildWarning
    from adafactor.kernels.group import PlanCache
    from adafactor.options import DEFAULTS, Hyperparameters
    from adafactor.step import FastPath, group_step
    from helpers import fresh_entry, interpreted_triton_backend

    hp = Hyperparameters(**{**DEFAULTS, "beta1": 0.9, "weight_decay": 0.01})

    def entries(seed):
        gen = torch.Generator().manual_seed(seed)
        return [fresh_entry(shape, hp, gen) for shape in [(12, 10), (7,), (3, 4, 5)]]

    eager, phased = entries(1), entries(1)
    sums_seen = []
    group_step(eager, None, None)
    fast = FastPath(interpreted_triton_backend(), PlanCache(), hp)
    with pytest.warns(KernelBuildWarning, match="commit"):
        results = group_step(phased, lambda sums: sums_seen.append(len(sums)), fast)
    assert sums_seen == [1 + 4 + 1 + 1 + 4, 2 + 2 + 2]  # as the eager phases hand them on
    assert len(results) == 3
    for a, b in zip(eager, phased):
        assert torch.equal(a.param, b.param)
        for key, value in a.state.items():
            assert torch.equal(b.state[key], value), key
