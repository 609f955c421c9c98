"""The step inside the backward pass: each parameter steps as soon as its gradient is complete,
and its gradient is freed, so that a backward pass never holds every gradient at once.

Adafactor fits this exactly: all it normalises by (R_t, C_t, RMS(U_t) for update clipping,
RMS(X) for the relative step) is per tensor, so a parameter's step needs its own gradient and
nothing else. What a hook applies is what ``step()`` would apply to that parameter: the hook
only applies it early, once no more gradient can be added before ``step()``, which is at the
end of the backward pass that completes a window of ``accumulation_steps`` micro-batches.

This module holds the hooks and the counting; the step itself is the optimizer's
(``Adafactor._step_parameters``), through the same route as ``step()``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

CLAIM = "_adafactor_in_backward"
"""The attribute a parameter carries while an optimizer steps it in backward (the optimizer,
weakly), so that a second one is refused rather than stepping it twice."""


class InBackward:
    """The hooks of one optimizer: ``step_now(params)`` steps those parameters (each holds its
    complete gradient) and frees their gradients, ``held()`` lists its parameters that hold a
    gradient. A window of ``accumulation_steps`` backward passes steps in the last one: each
    parameter from its hook, and at the end of that pass those whose hook did not run then
    (no gradient in the last micro-batch, or no hook) but hold one from earlier."""

    def __init__(
        self,
        owner: Any,
        step_now: Callable[[list[Tensor]], None],
        held: Callable[[], list[Tensor]],
        accumulation_steps: int,
    ) -> None:
        self.owner = weakref.ref(owner)
        self.step_now = step_now
        self.held = held
        self.accumulation_steps = accumulation_steps
        self.micro_batch = 0  # backward passes completed in the current window
        self.queued = False  # whether this backward pass's end is awaited
        self.handles: dict[int, Any] = {}

    def attach(self, params: Iterable[Tensor], describe: Callable[[Tensor], str]) -> None:
        """Hook every parameter of ``params`` that requires a gradient (one that starts to
        later is stepped by ``step()``). Raises before hooking any if one is claimed by
        another optimizer."""
        params = [p for p in params if p.requires_grad and id(p) not in self.handles]
        for p in params:
            other = getattr(p, CLAIM, None)
            other = other() if other is not None else None
            if other is not None and other is not self.owner():
                raise ValueError(
                    f"{describe(p)} is already stepped in backward by another optimizer; "
                    "a parameter can be stepped by one optimizer only"
                )
        for p in params:
            setattr(p, CLAIM, self.owner)
            self.handles[id(p)] = p.register_post_accumulate_grad_hook(self.on_gradient)

    def detach(self, params: Iterable[Tensor]) -> None:
        """Remove every hook, and the parameters' claims."""
        for p in params:
            handle = self.handles.pop(id(p), None)
            if handle is not None:
                handle.remove()
                if getattr(p, CLAIM, None) is self.owner:
                    delattr(p, CLAIM)

    def on_gradient(self, p: Tensor) -> None:
        """A hook: ``p``'s gradient of this backward pass is complete."""
        if not self.queued:
            # Count the backward pass once it is over (every hook of it has run).
            self.queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self.on_backward_end)
        if self.micro_batch + 1 >= self.accumulation_steps:
            self.step_now([p])

    def on_backward_end(self) -> None:
        self.queued = False
        self.micro_batch += 1
        if self.micro_batch >= self.accumulation_steps:
            self.micro_batch = 0
            rest = self.held()
            if rest:
                self.step_now(rest)

    def restart_window(self) -> None:
        """``step()`` or ``zero_grad()``: a new window of micro-batches starts."""
        self.micro_batch = 0
