"""Presets that reproduce another library's Adafactor with ``adafactor.Adafactor``.

``like(peer, params, **peer_kwargs)`` takes the arguments exactly as the peer's own constructor
does (its names, its defaults, its sign conventions) and returns an ``Adafactor`` whose
parameter trajectory is the peer's:

=========================  ==================================================================
``peer``                   the optimizer it reproduces
=========================  ==================================================================
``"hf"``                   ``transformers.optimization.Adafactor``
``"torch"``                ``torch.optim.Adafactor``
``"timm"``                 ``timm.optim.Adafactor``
``"big_vision"``           ``timm.optim.AdafactorBigVision`` (timm's port of big_vision's)
``"optax"``                ``optax.adafactor``
``"pytorch_optimizer"``    ``pytorch_optimizer.AdaFactor``
=========================  ==================================================================

Each peer's options are translated into ours (see the migration guide for the tables). Peers
that pick the factored dimensions of a tensor by a rule of their own (timm factors a conv
kernel over its first two dims, optax and big_vision break ties between equal sizes towards the
later dims) get a parameter group per run of consecutive parameters that needs other factoring
options; the flattened parameter order is always the one given. A peer option that
``Adafactor`` cannot reproduce raises a ``ValueError`` naming it, never an approximation.

How each peer's arguments translate, and the deliberate deviations, are in ``peers.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .factoring import factored_dims
from .optimizer import Adafactor
from .peers import PEERS, Dims, Translation

__all__ = [
    "ADAM",
    "PEERS",
    "Translation",
    "like",
    "param_options",
    "peer_param_groups",
    "translate",
]

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
        translation = PEERS[peer](**kwargs)
    except TypeError as error:
        raise TypeError(f"like({peer!r}): {error}") from None
    # The peers write a 16-bit parameter rounded to nearest: so does their preset.
    translation.options.setdefault("rounding", "nearest")
    return translation


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
            ``"big_vision"`` (timm's ``AdafactorBigVision``), ``"optax"`` or
            ``"pytorch_optimizer"``.
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
