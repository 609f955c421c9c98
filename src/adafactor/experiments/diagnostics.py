"""The paper's Figure 1 diagnostic, and the test for a run that has diverged.

``RMS(U_t)``, ``U_t = G_t/√V̂_t``, is the root mean square of the update before clipping and
before the step size. With a well-estimated second moment it stays near 1; when V̂ lags behind
growing gradients (β2 = 0.999 and no warm-up) it climbs far above 1 and the run is unstable
(Section 6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import Adafactor

BLOW_UP_NATS = 2.0
"""A run has diverged when its smoothed training loss rises this far above its best so far."""
SMOOTHING = 20
"""Training losses are smoothed over this many steps."""


def second_moment(optimizer: Adafactor, param: Tensor) -> Tensor:
    """``V̂_t`` of ``param`` from its state: the full estimate, or ``R·C/mean_r(R)``."""
    state = optimizer.state[param]
    if "exp_avg_sq" in state:
        return state["exp_avg_sq"]
    row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
    # R keeps the factored rows' dim r, which C has summed away (both keep their dims).
    r = next(d for d, (n, m) in enumerate(zip(row.shape, col.shape)) if m == 1 and n > 1)
    return row * col / row.mean(dim=r, keepdim=True)


@torch.no_grad()
def unscaled_update_rms(optimizer: Adafactor, param: Tensor) -> float:
    """``RMS(U_t)``, ``U_t = G_t/√V̂_t``, of ``param`` for the step just made."""
    if param.grad is None:
        raise ValueError("unscaled_update_rms needs the gradient of the step just made")
    update = param.grad / second_moment(optimizer, param).sqrt()
    return update.square().mean().sqrt().item()


def moving_average(values: Sequence[float | None], window: int = SMOOTHING) -> list[float]:
    """The mean of each value and the ``window − 1`` before it (NaN for a missing value)."""
    out: list[float] = []
    recent: list[float] = []
    for v in values:
        recent = [*recent, math.nan if v is None else v][-window:]
        out.append(sum(recent) / len(recent))
    return out


def peak_update_rms(rms_by_tensor: Mapping[str, Sequence[float | None]]) -> float | None:
    """The highest ``SMOOTHING``-step mean of RMS(U_t), taking at each step the largest over
    the watched tensors: a sustained rise, not one noisy step."""
    per_step = [
        max((x for x in xs if x is not None), default=math.nan)
        for xs in zip(*rms_by_tensor.values())
    ]
    finite = [x for x in moving_average(per_step) if math.isfinite(x)]
    return max(finite, default=None)


@dataclass
class DivergenceMonitor:
    """Watches the training loss: non-finite, or a smoothed loss ``BLOW_UP_NATS`` above the
    best smoothed loss so far, is divergence. Also tracks the largest rise seen (a spike)."""

    recent: list[float] = field(default_factory=list)
    best: float = math.inf
    largest_rise: float = 0.0

    def diverged(self, loss: float) -> bool:
        """Record one step's loss; whether the run has now diverged."""
        if not math.isfinite(loss):
            return True
        self.recent = [*self.recent, loss][-SMOOTHING:]
        if len(self.recent) < SMOOTHING:
            return False
        smoothed = sum(self.recent) / SMOOTHING
        self.best = min(self.best, smoothed)
        self.largest_rise = max(self.largest_rise, smoothed - self.best)
        return smoothed - self.best > BLOW_UP_NATS
