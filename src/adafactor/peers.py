"""How each peer's constructor arguments become ``Adafactor`` options: one translator per peer,
taking the peer's own names, defaults and sign conventions (see ``presets.like`` and the
migration guide's tables). A peer option that ``Adafactor`` cannot reproduce raises a
``ValueError`` naming it, never an approximation.

Deliberate deviations (documented in the migration guide and tested):

* ``"torch"``: torch clamps ``mean(R)`` at ε1 and ``V̂`` at ε1² instead of adding ε1 to G².
  The preset adds ε1² (ε1 = torch's, by default the dtype's machine epsilon, resolved once per
  group from its first parameter as torch does). Both agree to ~ε1²/V̂ relative when
  ``mean(G²) ≥ ε1``; with smaller gradients torch's clamps change the step, ours does not.
* ``"big_vision"``: its momentum averages the clipped update before the learning rate scales
  it; ours averages the scaled step. Identical for a constant ``lr``; under a schedule that
  changes ``lr`` while ``momentum`` is on, the two differ.
* ``"optax"`` with ``decay_offset``: optax's β̂2 divides by zero at the offset's step and is
  NaN before it; ours stays at its first value, 0, until then. From the step after the
  offset on they are the same.
* ``"pytorch_optimizer"``: it counts steps per group, whether or not a parameter had a
  gradient; ours counts them per parameter. The same when every parameter gets a gradient
  every step. Its bfloat16 momentum rounds the step to bfloat16 before averaging; ours
  averages in float32 and rounds the result (both apply the momentum as stored): they agree
  to the last bit of bfloat16.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

Dims = tuple[int, int] | None


@dataclass(frozen=True)
class Translation:
    """A peer's configuration in our terms.

    Attributes:
        options: ``Adafactor`` keyword options for the whole group.
        peer_dims: the dims the peer factors a tensor of a given shape over (sorted), or None.
        per_param: options a parameter needs beyond ``options`` whatever its factoring (e.g.
            an ε1 that the peer resolves from the parameter's dtype); may be None.
    """

    options: dict[str, Any]
    peer_dims: Callable[[tuple[int, ...]], Dims]
    per_param: Callable[[Tensor], dict[str, Any]] | None = None


def _unsupported(peer: str, option: str, value: Any, why: str) -> ValueError:
    return ValueError(f"like({peer!r}): {option}={value!r} cannot be reproduced: {why}")


def _decay_exponent(peer: str, name: str, value: float) -> float:
    """The peer's negative exponent (β̂2_t = 1 − t^value) as our positive ``decay_rate``."""
    if not -1.0 <= value < 0.0:
        raise _unsupported(
            peer, name, value, "beta2_t = 1 - t^decay_rate needs decay_rate in [-1, 0)"
        )
    return -value


def _last_two(shape: tuple[int, ...], min_size: int = 1) -> Dims:
    if len(shape) < 2 or min(shape[-2], shape[-1]) < min_size:
        return None
    return len(shape) - 2, len(shape) - 1


def _two_largest_later_ties(shape: tuple[int, ...], min_size: int) -> Dims:
    """optax's and big_vision's choice: the two largest dims, equal sizes broken towards the
    later dim (a stable sort by size)."""
    if len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda i: (shape[i], i))
    if shape[order[-2]] < min_size:
        return None
    return tuple(sorted(order[-2:]))  # type: ignore[return-value]


def _hf(
    lr: float | None = None,
    eps: tuple[float, float] = (1e-30, 1e-3),
    clip_threshold: float = 1.0,
    decay_rate: float = -0.8,
    beta1: float | None = None,
    weight_decay: float = 0.0,
    scale_parameter: bool = True,
    relative_step: bool = True,
    warmup_init: bool = False,
) -> Translation:
    """``transformers.optimization.Adafactor``: ρ_t = min(10⁻², 1/√t) (its cap is fixed, ours
    is ``lr = 1e-2``) or ``lr``; the step size is scaled by RMS(X) in both modes; weight decay
    by α_t; every tensor of ≥ 2 dims factored over its last two."""
    if lr is not None and relative_step:
        raise ValueError("like('hf'): lr must be None with relative_step=True (as in HF)")
    if lr is None and not relative_step:
        raise ValueError("like('hf'): relative_step=False needs a number for lr")
    options = dict(
        lr=1e-2 if relative_step else float(lr),  # type: ignore[arg-type]
        eps=tuple(eps),
        clip_threshold=clip_threshold,
        decay_rate=_decay_exponent("hf", "decay_rate", decay_rate),
        beta1=beta1,
        momentum_of="step",
        weight_decay=weight_decay,
        weight_decay_scale="alpha",
        relative_step=relative_step,
        warmup_init=warmup_init,
        scale_parameter=scale_parameter,
        factored=True,
        min_dim_size_to_factor=1,
        factor_dims="last",
    )
    return Translation(options, _last_two)


def _torch(
    lr: float | Tensor = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    first_param_dtype: torch.dtype = torch.float32,
) -> Translation:
    """``torch.optim.Adafactor``: always relative, ρ_t = min(lr, 1/√t), scaled by RMS(X);
    weight decay by the group's ``lr``; ≥ 2-dim tensors factored over the last two dims.
    ``foreach`` only picks torch's kernels and does not change the result."""
    del foreach
    eps1 = torch.finfo(first_param_dtype).eps if eps[0] is None else eps[0]
    if eps1 <= 0:
        raise _unsupported(
            "torch", "eps", tuple(eps), "eps1 must be > 0 (ours adds eps1**2 to G^2)"
        )
    options = dict(
        lr=float(lr),
        eps=(eps1 * eps1, eps[1]),
        clip_threshold=d,
        decay_rate=_decay_exponent("torch", "beta2_decay", beta2_decay),
        beta1=None,
        weight_decay=weight_decay,
        weight_decay_scale="lr",
        relative_step=True,
        warmup_init=False,
        scale_parameter=True,
        factored=True,
        min_dim_size_to_factor=1,
        factor_dims="last",
        maximize=maximize,
    )
    return Translation(options, _last_two)


def _timm(
    lr: float | None = None,
    eps: float = 1e-30,
    eps_scale: float = 1e-3,
    clip_threshold: float = 1.0,
    decay_rate: float = -0.8,
    betas: tuple[float, float] | None = None,
    weight_decay: float = 0.0,
    scale_parameter: bool = True,
    warmup_init: bool = False,
    min_dim_size_to_factor: int = 16,
    caution: bool = False,
) -> Translation:
    """``timm.optim.Adafactor``: relative step when ``lr is None`` (then scaled by RMS(X) if
    ``scale_parameter``), else ρ_t = ``lr`` unscaled; weight decay by the step size; a tensor
    of > 2 dims factored over dims 0 and 1 when both exceed ``min_dim_size_to_factor``, else
    over its last two when those do."""
    if caution:
        raise _unsupported("timm", "caution", caution, "Adafactor has no cautious masking")
    relative_step = lr is None
    if warmup_init and not relative_step:
        raise ValueError("like('timm'): warmup_init requires lr=None (relative step), as in timm")
    size = min_dim_size_to_factor

    def peer_dims(shape: tuple[int, ...]) -> Dims:
        if len(shape) > 2 and shape[0] > size and shape[1] > size:
            return 0, 1
        return _last_two(shape, size + 1)

    options = dict(
        lr=1e-2 if relative_step else float(lr),  # type: ignore[arg-type]
        eps=(eps, eps_scale),
        clip_threshold=clip_threshold,
        decay_rate=_decay_exponent("timm", "decay_rate", decay_rate),
        beta1=None if betas is None else betas[0],
        momentum_of="step",
        weight_decay=weight_decay,
        weight_decay_scale="alpha",
        relative_step=relative_step,
        warmup_init=warmup_init,
        scale_parameter=scale_parameter and relative_step,
        factored=True,
        min_dim_size_to_factor=size + 1,
        factor_dims="last",
    )
    return Translation(options, peer_dims)


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """timm's spelling of a momentum dtype (a name or a ``torch.dtype``) as a ``torch.dtype``."""
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def _big_vision(
    lr: float = 1.0,
    min_dim_size_to_factor: int = 16,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    beta2_cap: float = 0.999,
    momentum: float | None = 0.9,
    momentum_dtype: str | torch.dtype = torch.bfloat16,
    eps: float | None = None,
    weight_decay: float = 0.0,
    clipping_threshold: float | None = None,
    unscaled_wd: bool = False,
    caution: bool = False,
    corrected_weight_decay: bool = False,
) -> Translation:
    """``timm.optim.AdafactorBigVision`` (big_vision's ``scale_by_adafactor``): ρ_t = ``lr``,
    no parameter scaling, momentum on by default, weight decay by ``lr`` (or unscaled), the two
    largest dims factored."""
    peer = "big_vision"
    for name, value in (("caution", caution), ("corrected_weight_decay", corrected_weight_decay)):
        if value:
            raise _unsupported(peer, name, value, "Adafactor has no such option")
    options = dict(
        lr=float(lr),
        eps=(1e-30 if eps is None else eps, 1e-3),  # 1e-30 unless 16-bit, refused above
        clip_threshold=clipping_threshold,
        decay_rate=decay_rate,
        beta2_cap=None if beta2_cap >= 1.0 else float(beta2_cap),  # a cap of 1 caps nothing
        decay_offset=decay_offset,
        beta1=momentum,
        momentum_of="step",
        weight_decay=weight_decay,
        weight_decay_scale="none" if unscaled_wd else "lr",
        relative_step=False,
        warmup_init=False,
        scale_parameter=False,
        factored=True,
        min_dim_size_to_factor=min_dim_size_to_factor,
        factor_dims="largest",
    )

    def per_param(p: Tensor) -> dict[str, Any]:
        if p.dtype in (torch.float16, torch.bfloat16):
            raise _unsupported(
                peer,
                "params",
                f"<{p.dtype} tensor of shape {tuple(p.shape)}>",
                "big_vision computes in the 16-bit dtype, Adafactor in float32",
            )
        if momentum is not None and _torch_dtype(momentum_dtype) != p.dtype:
            raise _unsupported(
                peer,
                "momentum_dtype",
                momentum_dtype,
                f"momentum is kept in the parameters' dtype, here {p.dtype} "
                f"(pass momentum_dtype={p.dtype} or momentum=None)",
            )
        return {}

    return Translation(
        options, lambda shape: _two_largest_later_ties(shape, min_dim_size_to_factor), per_param
    )


def _optax(
    learning_rate: float | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    dtype_momentum: Any = "float32",
    weight_decay_rate: float | None = None,
    eps: float = 1e-30,
    factored: bool = True,
    weight_decay_mask: Any = None,
) -> Translation:
    """``optax.adafactor``: ρ_t = ``learning_rate`` (1 when None), scaled by
    ``max(1e-3, RMS(X))``; momentum an EMA of the step without debiasing; weight decay
    unscaled; the two largest dims factored when both are ≥ ``min_dim_size_to_factor``."""
    peer = "optax"
    for name, value in (("learning_rate", learning_rate), ("weight_decay_rate", weight_decay_rate)):
        if callable(value):
            raise _unsupported(
                peer,
                name,
                value,
                "use a number here and a torch.optim.lr_scheduler for the schedule",
            )
    if momentum is not None and str(getattr(dtype_momentum, "name", dtype_momentum)) not in (
        "float32",
        "torch.float32",
    ):
        raise _unsupported(peer, "dtype_momentum", dtype_momentum, "momentum is kept in float32")
    if weight_decay_mask is not None:
        raise _unsupported(
            peer,
            "weight_decay_mask",
            weight_decay_mask,
            "select the decayed parameters with parameter groups (adafactor.param_rules)",
        )
    options = dict(
        lr=1.0 if learning_rate is None else float(learning_rate),
        eps=(eps, 1e-3),
        clip_threshold=clipping_threshold,
        decay_rate=decay_rate,
        decay_offset=decay_offset,  # optax's 1 − (t − t₀)^−c, defined here before t₀ too
        beta1=momentum,
        momentum_of="step",
        weight_decay=0.0 if weight_decay_rate is None else float(weight_decay_rate),
        weight_decay_scale="none",
        relative_step=False,
        warmup_init=False,
        scale_parameter=multiply_by_parameter_scale,
        factored=factored,
        min_dim_size_to_factor=min_dim_size_to_factor,
        factor_dims="largest",
    )

    def peer_dims(shape: tuple[int, ...]) -> Dims:
        return _two_largest_later_ties(shape, min_dim_size_to_factor) if factored else None

    return Translation(options, peer_dims)


def _pytorch_optimizer(
    lr: float | None = 1e-3,
    betas: tuple[float | None, ...] = (0.9, 0.999),
    decay_rate: float = -0.8,
    weight_decay: float = 0.0,
    weight_decouple: bool = True,
    fixed_decay: bool = False,
    clip_threshold: float = 1.0,
    ams_bound: bool = False,
    scale_parameter: bool = True,
    relative_step: bool = True,
    warmup_init: bool = False,
    eps1: float = 1e-30,
    eps2: float = 1e-3,
    momentum_dtype: torch.dtype = torch.bfloat16,
    foreach: bool | None = None,
    maximize: bool = False,
    **kwargs: Any,
) -> Translation:
    """``pytorch_optimizer.AdaFactor``: ρ_t = min(10⁻², 1/√t) (``min(10⁻⁶·t, 1/√t)`` with
    warm-up; ``lr`` unused) or ``lr``; scaled by RMS(X); β̂2_t = min(``betas[1]``,
    1 − t^decay_rate); momentum of the step, on by default and kept in ``momentum_dtype``
    (bfloat16); decoupled weight decay by α_t (or unscaled with ``fixed_decay``); every
    tensor of ≥ 2 dims factored over its last two. ``foreach`` only picks its kernels."""
    del foreach
    peer = "pytorch_optimizer"
    if ams_bound:
        raise _unsupported(peer, "ams_bound", ams_bound, "Adafactor keeps no running maximum")
    if not weight_decouple and weight_decay:
        raise _unsupported(
            peer, "weight_decouple", weight_decouple, "weight decay is decoupled (not L2)"
        )
    for name, value in kwargs.items():
        if value:
            raise _unsupported(peer, name, value, "Adafactor has no such option")
    beta1, cap = betas[0], betas[1]
    options = dict(
        lr=1e-2 if relative_step else float(lr),  # type: ignore[arg-type]
        # pytorch_optimizer sets ε1 to 1e-7 when momentum is kept in float16.
        eps=(1e-7 if momentum_dtype == torch.float16 else eps1, eps2),
        clip_threshold=clip_threshold,
        decay_rate=_decay_exponent(peer, "decay_rate", decay_rate),
        beta2_cap=None if cap is None or cap >= 1.0 else float(cap),
        beta1=beta1,
        momentum_of="step",
        momentum_dtype=momentum_dtype if beta1 is not None else None,
        weight_decay=weight_decay,
        weight_decay_scale="none" if fixed_decay else "alpha",
        relative_step=relative_step,
        warmup_init=warmup_init,
        scale_parameter=scale_parameter,
        factored=True,
        min_dim_size_to_factor=1,
        factor_dims="last",
        maximize=maximize,
    )

    def per_param(p: Tensor) -> dict[str, Any]:
        if p.dtype in (torch.float16, torch.bfloat16):
            raise _unsupported(
                peer,
                "params",
                f"<{p.dtype} tensor of shape {tuple(p.shape)}>",
                "pytorch_optimizer keeps 16-bit statistics, Adafactor float32 ones",
            )
        return {}

    return Translation(options, _last_two, per_param)


PEERS: dict[str, Callable[..., Translation]] = {
    "hf": _hf,
    "torch": _torch,
    "timm": _timm,
    "big_vision": _big_vision,
    "optax": _optax,
    "pytorch_optimizer": _pytorch_optimizer,
}
"""The peers ``like`` knows, each mapped to the translator of its constructor's arguments."""
