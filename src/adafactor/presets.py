"""Presets that reproduce another library's Adafactor with ``adafactor.Adafactor``.

``like(peer, params, **peer_kwargs)`` takes the arguments exactly as the peer's own constructor
does (its names, its defaults, its sign conventions) and returns an ``Adafactor`` whose
parameter trajectory is the peer's:

=================  ==========================================================================
``peer``           the optimizer it reproduces
=================  ==========================================================================
``"hf"``           ``transformers.optimization.Adafactor``
``"torch"``        ``torch.optim.Adafactor``
``"timm"``         ``timm.optim.Adafactor``
``"big_vision"``   ``timm.optim.AdafactorBigVision`` (timm's port of big_vision's variant)
``"optax"``        ``optax.adafactor``
=================  ==========================================================================

Each peer's options are translated into ours (see the migration guide for the tables). Peers
that pick the factored dimensions of a tensor by a rule of their own (timm factors a conv
kernel over its first two dims, optax and big_vision break ties between equal sizes towards the
later dims) get a parameter group per run of consecutive parameters that needs other factoring
options; the flattened parameter order is always the one given. A peer option that
``Adafactor`` cannot reproduce raises a ``ValueError`` naming it, never an approximation.

Deliberate deviations (documented in the migration guide and tested):

* ``"torch"``: torch clamps ``mean(R)`` at ε1 and ``V̂`` at ε1² instead of adding ε1 to G².
  The preset adds ε1² (ε1 = torch's, by default the dtype's machine epsilon, resolved once per
  group from its first parameter as torch does). Both agree to ~ε1²/V̂ relative when
  ``mean(G²) ≥ ε1``; with smaller gradients torch's clamps change the step, ours does not.
* ``"big_vision"``: its momentum averages the clipped update before the learning rate scales
  it; ours averages the scaled step. Identical for a constant ``lr``; under a schedule that
  changes ``lr`` while ``momentum`` is on, the two differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .factoring import factored_dims
from .optimizer import Adafactor

Dims = tuple[int, int] | None

ADAM: dict[str, Any] = dict(
    beta1=0.9,
    beta2=0.999,
    momentum_of="gradient",
    clip_threshold=None,
    relative_step=False,
    scale_parameter=False,
    factored=False,
)
"""The options that make ``Adafactor(params, lr, **ADAM)`` the paper's Algorithm 1 (Adam, its ε
inside the square root as ε1); with ``factored=True``, Adam with factored second moments."""


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
    if decay_offset != 0:
        raise _unsupported(peer, "decay_offset", decay_offset, "beta2_t has no step offset")
    if beta2_cap < 1.0:
        raise _unsupported(
            peer,
            "beta2_cap",
            beta2_cap,
            "beta2_t is never capped (pass beta2_cap=1.0, which caps nothing)",
        )
    for name, value in (("caution", caution), ("corrected_weight_decay", corrected_weight_decay)):
        if value:
            raise _unsupported(peer, name, value, "Adafactor has no such option")
    options = dict(
        lr=float(lr),
        eps=(1e-30 if eps is None else eps, 1e-3),  # 1e-30 unless 16-bit, refused above
        clip_threshold=clipping_threshold,
        decay_rate=decay_rate,
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
    if decay_offset != 0:
        raise _unsupported(peer, "decay_offset", decay_offset, "beta2_t has no step offset")
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


PEERS: dict[str, Callable[..., Translation]] = {
    "hf": _hf,
    "torch": _torch,
    "timm": _timm,
    "big_vision": _big_vision,
    "optax": _optax,
}
"""The peers ``like`` knows, each mapped to the translator of its constructor's arguments."""


def translate(peer: str, peer_kwargs: Mapping[str, Any], params: list[Tensor]) -> Translation:
    """Translate ``peer``'s constructor arguments into ``Adafactor`` options for ``params``.

    Raises:
        ValueError: an unknown ``peer``, or a peer option ``Adafactor`` cannot reproduce.
        TypeError: an argument the peer's constructor does not take.
    """
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; known peers: {', '.join(PEERS)}")
    kwargs = dict(peer_kwargs)
    if peer == "torch":
        kwargs["first_param_dtype"] = params[0].dtype if params else torch.float32
    try:
        return PEERS[peer](**kwargs)
    except TypeError as error:
        raise TypeError(f"like({peer!r}): {error}") from None


def _our_dims(shape: tuple[int, ...], options: Mapping[str, Any]) -> Dims:
    if not options["factored"]:
        return None
    return factored_dims(shape, options["factor_dims"], options["min_dim_size_to_factor"])


def param_options(translation: Translation, p: Tensor, where: str) -> dict[str, Any]:
    """The options ``p`` needs beyond ``translation.options`` to be factored as the peer does.

    Tries the group's own factoring, then the other ``factor_dims`` rule, then a full
    accumulator; raises a ``ValueError`` naming ``where`` when none of them matches.
    """
    extra = translation.per_param(p) if translation.per_param else {}
    shape = tuple(p.shape)
    wanted = translation.peer_dims(shape)
    base = translation.options
    other_rule = "last" if base["factor_dims"] == "largest" else "largest"
    candidates: list[dict[str, Any]] = [
        {},
        {"factor_dims": other_rule},
        {"factored": False},
    ]
    if p.numel() == 0:
        return extra
    for candidate in candidates:
        if _our_dims(shape, {**base, **candidate}) == wanted:
            return {**extra, **candidate}
    raise ValueError(
        f"{where} (shape {shape}): the peer factors it over dims {wanted}, which neither "
        "factor_dims='largest' nor 'last' selects; give it its own parameter group"
    )


def _groups(params: Any) -> list[dict[str, Any]]:
    if isinstance(params, Tensor):
        raise TypeError("params must be an iterable of tensors or of dicts, not a tensor")
    items = list(params)
    if not items:
        raise ValueError("like(): got an empty parameter list")
    if all(isinstance(item, Mapping) for item in items):
        return [dict(item) for item in items]
    if any(isinstance(item, Mapping) for item in items):
        raise TypeError("params must be all tensors or all parameter-group dicts")
    return [{"params": items}]


def peer_param_groups(
    peer: str, params: Any, **peer_kwargs: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Our parameter groups and default options for ``like(peer, params, **peer_kwargs)``.

    A group given with peer options (e.g. ``{"params": ..., "weight_decay": 0.0}`` for HF)
    is translated with them over the call's ``peer_kwargs``. Each group is split into runs of
    consecutive parameters that need the same factoring options, so the flattened order of the
    parameters is the order given.
    """
    user_groups = _groups(params)
    for group in user_groups:
        group_params = group["params"]
        group["params"] = [group_params] if isinstance(group_params, Tensor) else list(group_params)
    defaults = translate(peer, peer_kwargs, user_groups[0]["params"]).options
    groups: list[dict[str, Any]] = []
    for g_index, group in enumerate(user_groups):
        group_params = group.pop("params")
        translation = translate(peer, {**peer_kwargs, **group}, group_params)
        run: list[Tensor] = []
        run_extra: dict[str, Any] | None = None
        for p_index, p in enumerate(group_params):
            where = f"like({peer!r}): param_groups[{g_index}]['params'][{p_index}]"
            extra = param_options(translation, p, where)
            if run and extra != run_extra:
                groups.append({**translation.options, **(run_extra or {}), "params": run})
                run = []
            run.append(p)
            run_extra = extra
        if run or not group_params:
            groups.append({**translation.options, **(run_extra or {}), "params": run})
    return groups, defaults


def like(
    peer: str, params: Iterable[Tensor] | Iterable[dict[str, Any]], **peer_kwargs: Any
) -> Adafactor:
    """An ``Adafactor`` that takes ``peer``'s constructor arguments and follows its trajectory.

    Args:
        peer: ``"hf"`` (transformers), ``"torch"`` (``torch.optim.Adafactor``), ``"timm"``,
            ``"big_vision"`` (timm's ``AdafactorBigVision``) or ``"optax"``.
        params: parameters or parameter groups, as for the peer; a group may carry the peer's
            options under the peer's names.
        **peer_kwargs: the peer's constructor arguments, with the peer's names and defaults
            (e.g. HF's ``decay_rate=-0.8``, optax's ``learning_rate``).

    Returns:
        An ``Adafactor``; its groups hold our options (``optimizer.param_groups``).

    Raises:
        ValueError: an unknown peer, or a peer option that ``Adafactor`` cannot reproduce
            (named in the message).
        TypeError: an argument the peer's constructor does not take.

    Example:
        ``like("hf", model.parameters(), lr=1e-3, relative_step=False, scale_parameter=False)``
    """
    groups, defaults = peer_param_groups(peer, params, **peer_kwargs)
    return Adafactor(groups, **defaults)
