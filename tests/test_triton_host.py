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
