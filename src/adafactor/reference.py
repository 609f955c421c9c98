"""The paper's algorithms written plainly in float64: the oracle the optimizer is tested against.

Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018.

* ``ReferenceAdam``: Algorithm 1 (Adam), optionally with the factored second moment of
  Section 3 in place of v (the paper's "Adam with factored second moments").
* ``ReferenceAdafactor``: Algorithm 4 (matrices) and Algorithm 5 (vectors) with every variant
  the paper studies: momentum, clipping threshold d, decay β̂2_t = 1 − t^(−c) or Adam's constant
  β2 with bias correction, relative or absolute step size, warm-up, parameter scaling; and the
  variants peers add: a cap on β̂2_t, an offset of its schedule, and RMS per slice of a
  stacked tensor (T5X's batch dims).

Nothing here is shared with the optimizer (this module imports nothing of the package), and
nothing is clever: sums rather than means, the full n×m estimate V̂ = R·Cᵀ/(1ᵀR) built
outright, one tensor at a time. Tensors of more than two dimensions are batches of matrices over
the chosen pair of dimensions, which are moved last.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor


def choose_factored_dims(
    shape: tuple[int, ...], rule: str, min_dim_size_to_factor: int
) -> tuple[int, int] | None:
    """The two dimensions to factor over (the two largest, or the last two), in order."""
    if len(shape) < 2:
        return None
    if rule == "last":
        pair = [len(shape) - 2, len(shape) - 1]
    else:
        pair = []
        for _ in range(2):
            rest = [i for i in range(len(shape)) if i not in pair]
            biggest = max(shape[i] for i in rest)
            pair.append(min(i for i in rest if shape[i] == biggest))
        pair.sort()
    if shape[pair[0]] < min_dim_size_to_factor or shape[pair[1]] < min_dim_size_to_factor:
        return None
    return pair[0], pair[1]


class _FactoredSecondMoment:
    """Section 3: R_t and C_t, the row and column sums of the decayed G² + ε1, and V̂_t."""

    def __init__(self, shape: tuple[int, ...], dims: tuple[int, int]):
        self.dims = dims
        moved = torch.zeros(shape, dtype=torch.float64).movedim(dims, (-2, -1)).shape
        self.row = torch.zeros(moved[:-1], dtype=torch.float64)  # [..., n]
        self.col = torch.zeros(moved[:-2] + moved[-1:], dtype=torch.float64)  # [..., m]

    def update(self, grad: Tensor, beta2: float, eps1: float) -> Tensor:
        g = grad.movedim(self.dims, (-2, -1))
        n, m = g.shape[-2], g.shape[-1]
        sq = g * g + eps1 * torch.ones(n, 1, dtype=torch.float64) @ torch.ones(
            1, m, dtype=torch.float64
        )
        self.row = beta2 * self.row + (1 - beta2) * (sq @ torch.ones(m, dtype=torch.float64))
        self.col = beta2 * self.col + (1 - beta2) * (torch.ones(n, dtype=torch.float64) @ sq)
        total = self.row.sum(-1)[..., None, None]
        v_hat = self.row[..., :, None] * self.col[..., None, :] / total
        return v_hat.movedim((-2, -1), self.dims)


class _FullSecondMoment:
    """Algorithm 5: V̂_t, the decayed G² + ε1 element by element."""

    def __init__(self, shape: tuple[int, ...]):
        self.v = torch.zeros(shape, dtype=torch.float64)

    def update(self, grad: Tensor, beta2: float, eps1: float) -> Tensor:
        self.v = beta2 * self.v + (1 - beta2) * (grad * grad + eps1)
        return self.v


def _rms(x: Tensor) -> float:
    return math.sqrt(float((x * x).sum()) / x.numel()) if x.numel() else 0.0


def _slice_rms(x: Tensor, dims: tuple[int, int] | None) -> Tensor:
    """RMS(x) over the whole tensor (``dims`` None), or over ``dims`` for every index of the
    other dims (kept, so that it broadcasts)."""
    if dims is None:
        return torch.tensor(_rms(x), dtype=torch.float64)
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float64)
    return (x * x).mean(dim=dims, keepdim=True).sqrt()


class ReferenceAdafactor:
    """Algorithms 4 and 5 with the paper's variants, on float64 copies of ``params``.

    The options have the same names and meanings as ``adafactor.Adafactor``'s.
    """

    def __init__(
        self,
        params: list[Tensor],
        lr: float = 1e-2,
        *,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float | None = 1.0,
        decay_rate: float = 0.8,
        beta2_cap: float | None = None,
        decay_offset: int = 0,
        beta1: float | None = None,
        beta2: float | None = None,
        momentum_of: str = "step",
        weight_decay: float = 0.0,
        weight_decay_scale: str = "rho",
        relative_step: bool = True,
        warmup_init: bool = False,
        scale_parameter: bool = True,
        factored: bool = True,
        min_dim_size_to_factor: int = 2,
        factor_dims: str = "largest",
        rms_per_slice: bool = False,
        maximize: bool = False,
    ):
        self.params = [p.detach().to(torch.float64).clone() for p in params]
        self.lr, (self.eps1, self.eps2) = lr, eps
        self.d, self.c, self.beta1, self.beta2 = clip_threshold, decay_rate, beta1, beta2
        self.momentum_of, self.weight_decay, self.maximize = momentum_of, weight_decay, maximize
        self.weight_decay_scale = weight_decay_scale
        self.relative_step, self.warmup_init = relative_step, warmup_init
        self.scale_parameter = scale_parameter
        self.beta2_cap, self.decay_offset = beta2_cap, decay_offset
        self.t = [0 for _ in self.params]
        self.slice_dims: list[tuple[int, int] | None] = []  # the dims one RMS is taken over
        self.second_moments: list[_FactoredSecondMoment | _FullSecondMoment] = []
        for p in self.params:
            dims = choose_factored_dims(tuple(p.shape), factor_dims, min_dim_size_to_factor)
            if factored and dims is not None:
                self.second_moments.append(_FactoredSecondMoment(tuple(p.shape), dims))
                self.slice_dims.append(dims if rms_per_slice else None)
            else:
                self.second_moments.append(_FullSecondMoment(tuple(p.shape)))
                self.slice_dims.append(None)
        self.m = [torch.zeros_like(p) for p in self.params]

    def beta2_hat(self, t: int) -> float:
        """β̂2_t: 1 − t^(−c) (Section 7.2), or β2 with bias correction (Section 7.1), at
        step t − t₀ (no earlier than 1), and at most the cap."""
        t = max(t - self.decay_offset, 1)
        if self.beta2 is not None:
            value = self.beta2 * (1 - self.beta2 ** (t - 1)) / (1 - self.beta2**t)
        else:
            value = 1 - t ** (-self.c)
        return value if self.beta2_cap is None else min(value, self.beta2_cap)

    def rho(self, t: int, lr: float) -> float:
        """ρ_t: min(lr, 1/√t), min(lr, 10⁻⁶·t, 1/√t) with warm-up, or lr (Section 8)."""
        if not self.relative_step:
            return lr
        if self.warmup_init:
            return min(lr, 1e-6 * t, 1 / math.sqrt(t))
        return min(lr, 1 / math.sqrt(t))

    def step(self, grads: list[Tensor | None], lr: float | None = None) -> None:
        """One step; a ``None`` gradient leaves its parameter (and its step count) alone."""
        lr = self.lr if lr is None else lr
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            x, g = self.params[i], grad.detach().to(torch.float64)
            self.t[i] += 1
            t = self.t[i]
            rho = self.rho(t, lr)
            rms = functools.partial(_slice_rms, dims=self.slice_dims[i])
            alpha = rms(x).clamp(min=self.eps2) * rho if self.scale_parameter else rho
            v_hat = self.second_moments[i].update(g, self.beta2_hat(t), self.eps1)
            if self.beta1 is not None and self.momentum_of == "gradient":
                self.m[i] = self.beta1 * self.m[i] + (1 - self.beta1) * g
                u = (self.m[i] / (1 - self.beta1**t)) / torch.sqrt(v_hat)
            else:
                u = g / torch.sqrt(v_hat)
            if self.d is not None:
                u = u / (rms(u) / self.d).clamp(min=1.0)
            s = alpha * u
            if self.beta1 is not None and self.momentum_of == "step":
                self.m[i] = self.beta1 * self.m[i] + (1 - self.beta1) * s
                s = self.m[i]
            if self.maximize:
                s = -s
            decay = {"rho": rho, "alpha": alpha, "lr": lr, "none": 1.0}[self.weight_decay_scale]
            self.params[i] = x - s - self.weight_decay * decay * x

    def state_numbers(self, i: int) -> int:
        """How many second-moment numbers parameter ``i`` keeps."""
        sm = self.second_moments[i]
        if isinstance(sm, _FactoredSecondMoment):
            return sm.row.numel() + sm.col.numel()
        return sm.v.numel()


class ReferenceAdam:
    """Algorithm 1 (Adam), with v optionally replaced by the factored estimate of Section 3::

    m_t = β1·m_{t−1} + (1 − β1)·G_t,        v_t = β2·v_{t−1} + (1 − β2)·G_t²
    m̂_t = m_t/(1 − β1^t),  v̂_t = v_t/(1 − β2^t),   X_t = X_{t−1} − α·m̂_t/(√v̂_t + ε)
    """

    def __init__(
        self,
        params: list[Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        factored: bool = False,
    ):
        self.params = [p.detach().to(torch.float64).clone() for p in params]
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.factored = factored
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.row = [torch.zeros(p.shape[0], dtype=torch.float64) for p in self.params]
        self.col = [torch.zeros(p.shape[-1], dtype=torch.float64) for p in self.params]

    def step(self, grads: list[Tensor]) -> None:
        self.t += 1
        b1, b2, t = self.beta1, self.beta2, self.t
        for i, grad in enumerate(grads):
            g = grad.detach().to(torch.float64)
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            if self.factored and g.dim() == 2:
                self.row[i] = b2 * self.row[i] + (1 - b2) * (g * g).sum(1)
                self.col[i] = b2 * self.col[i] + (1 - b2) * (g * g).sum(0)
                v = torch.outer(self.row[i], self.col[i]) / self.row[i].sum()
            else:
                self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
                v = self.v[i]
            m_hat, v_hat = self.m[i] / (1 - b1**t), v / (1 - b2**t)
            self.params[i] = self.params[i] - self.lr * m_hat / (torch.sqrt(v_hat) + self.eps)
