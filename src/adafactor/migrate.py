"""Continue a run from another library's Adafactor checkpoint (its ``optimizer.state_dict()``).

``convert_state_dict(peer, state_dict, optimizer_or_params)`` turns a state dict saved by
HF's (``"hf"``), ``torch.optim``'s (``"torch"``), timm's (``"timm"``) or pytorch_optimizer's
(``"pytorch_optimizer"``) Adafactor into one that
``adafactor.Adafactor.load_state_dict`` accepts; training then continues as the peer would
(``presets.like`` gives the same trajectory). What each peer keeps, and what becomes of it:

========  =================================================  =================================
peer      its state per parameter                            ours
========  =================================================  =================================
hf        ``step`` (int), ``exp_avg_sq_row`` [..., n],         ``step`` (float32), row/col with
          ``exp_avg_sq_col`` [..., m] or ``exp_avg_sq``,       kept dims ([..., n, 1],
          ``exp_avg`` (with ``beta1``), ``RMS``                [..., 1, m]), ``RMS`` dropped
          (means of G² + ε1, as ours)                          (recomputed each step)
timm      as hf, factored over timm's dims (0, 1) or last two  the same, over the same dims
torch     ``step`` (tensor), ``row_var`` [..., n, 1],          + ε1² (what ours adds to G²;
          ``col_var`` [..., 1, m] or ``variance``: means of    EMA weights sum to 1, so this is
          G² without ε                                         exact)
pytorch_  as hf (momentum in its ``momentum_dtype``), but      the same; every parameter's
optimizer ``step`` (int) is its group's                        ``step`` is the group's
========  =================================================  =================================

pytorch_optimizer keeps ``decay_rate``, ``clip_threshold``, ``momentum_dtype`` and ``maximize``
on the optimizer, not in its state dict: they are taken from the optimizer the state dict is
converted for (build it with ``presets.like("pytorch_optimizer", params, **its_kwargs)``), or
are its defaults when only parameters are given.

Every parameter also gets ``nonfinite_skips = 0``. Group options are checked against the
optimizer's (as ``presets.like`` translates the checkpoint's own options); ``lr`` is taken from
the checkpoint where it means the same as ours (torch; hf and timm without relative step), so
a learning-rate scheduler's changes carry over.

What cannot be converted raises a ``ValueError`` naming the parameter or option: a peer other
than these four; options ``Adafactor`` cannot reproduce (timm's ``caution``); a checkpoint
whose options differ from the optimizer's; state keys or shapes the peer would not have saved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .factoring import factored_dims
from .optimizer import Adafactor
from .presets import like, param_options, translate

# The options each peer keeps in its param_groups, as its constructor names them.
_GROUP_OPTIONS: dict[str, tuple[str, ...]] = {
    "hf": (
        "lr",
        "eps",
        "clip_threshold",
        "decay_rate",
        "beta1",
        "weight_decay",
        "scale_parameter",
        "relative_step",
        "warmup_init",
    ),
    "torch": ("lr", "beta2_decay", "eps", "d", "weight_decay", "foreach", "maximize"),
    "timm": (
        "lr",
        "eps",
        "eps_scale",
        "clip_threshold",
        "decay_rate",
        "beta1",
        "weight_decay",
        "scale_parameter",
        "relative_step",
        "warmup_init",
        "min_dim_size_to_factor",
        "caution",
    ),
    "pytorch_optimizer": (
        "lr",
        "betas",
        "weight_decay",
        "weight_decouple",
        "fixed_decay",
        "ams_bound",
        "scale_parameter",
        "relative_step",
        "warmup_init",
        "eps1",
        "eps2",
    ),
}
_UNSAVED: dict[str, tuple[str, ...]] = {
    "pytorch_optimizer": ("decay_rate", "clip_threshold", "momentum_dtype", "maximize", "eps"),
}
"""Our options that follow from a peer's options it does not save: the optimizer's are kept."""
_STATE_KEYS: dict[str, frozenset[str]] = {
    "hf": frozenset({"step", "exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq", "RMS"}),
    "timm": frozenset({"step", "exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq", "RMS"}),
    "torch": frozenset({"step", "row_var", "col_var", "variance"}),
    "pytorch_optimizer": frozenset(
        {"exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq", "RMS"}
    ),
}
PEERS: tuple[str, ...] = tuple(_GROUP_OPTIONS)
"""The peers whose checkpoints ``convert_state_dict`` reads."""


def peer_kwargs(
    peer: str, saved_group: Mapping[str, Any], where: str = "param_groups[0]"
) -> dict[str, Any]:
    """The peer's constructor arguments that produced ``saved_group`` (one of its saved groups).

    Raises:
        ValueError: ``saved_group`` lacks an option the peer always saves (not its checkpoint).
    """
    _check_peer(peer)
    missing = [name for name in _GROUP_OPTIONS[peer] if name not in saved_group]
    if missing:
        raise ValueError(
            f"{where} of the checkpoint lacks {peer}'s option(s) {missing}: "
            f"was it saved by {peer}'s Adafactor?"
        )
    kwargs = {name: saved_group[name] for name in _GROUP_OPTIONS[peer]}
    if peer == "torch" and isinstance(kwargs["lr"], Tensor):
        kwargs["lr"] = kwargs["lr"].item()
    if peer in ("hf", "timm"):
        relative_step = kwargs["relative_step"]
        if relative_step:
            kwargs["lr"] = None  # timm writes its last step size here; hf keeps None
        if peer == "timm":
            del kwargs["relative_step"]  # timm derives it from lr
            beta1 = kwargs.pop("beta1")
            kwargs["betas"] = None if beta1 is None else (beta1, 0.999)  # timm ignores betas[1]
    return kwargs


def convert_state_dict(
    peer: str,
    state_dict: Mapping[str, Any],
    optimizer_or_params: Adafactor | Iterable[Tensor],
) -> dict[str, Any]:
    """Convert ``peer``'s Adafactor ``state_dict`` for ``adafactor.Adafactor.load_state_dict``.

    Args:
        peer: ``"hf"``, ``"torch"`` or ``"timm"``.
        state_dict: what the peer's ``optimizer.state_dict()`` returned.
        optimizer_or_params: the ``Adafactor`` that will load it (e.g. from ``presets.like``
            with the peer's arguments), whose parameters are the peer's in the same order; or
            those parameters (a flat iterable), in which case the result is for
            ``from_peer_state_dict(peer, state_dict, params)``'s optimizer.

    Returns:
        A state dict in ``Adafactor``'s format.

    Raises:
        ValueError: naming the parameter or option that cannot be converted (see the module).
    """
    _check_peer(peer)
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise ValueError(f"not an optimizer state dict: it has no {key!r}")
    saved_groups = state_dict["param_groups"]
    kwargs = [
        peer_kwargs(peer, group, f"param_groups[{i}]") for i, group in enumerate(saved_groups)
    ]
    if isinstance(optimizer_or_params, Adafactor):
        optimizer = optimizer_or_params
    else:
        optimizer = _build(peer, saved_groups, kwargs, list(optimizer_or_params))

    ours = [(g_index, p) for g_index, g in enumerate(optimizer.param_groups) for p in g["params"]]
    saved = [(s_index, pid) for s_index, g in enumerate(saved_groups) for pid in g["params"]]
    if len(ours) != len(saved):
        raise ValueError(
            f"the checkpoint has {len(saved)} parameters, the optimizer {len(ours)}; "
            "give the peer's parameters in the peer's order"
        )
    translations = [
        translate(peer, kw, [p for (s, _), (_, p) in zip(saved, ours) if s == index])
        for index, kw in enumerate(kwargs)
    ]
    result_groups = optimizer.state_dict()["param_groups"]
    new_state: dict[int, dict[str, Tensor]] = {}
    for index, ((s_index, pid), (g_index, p)) in enumerate(zip(saved, ours)):
        where = f"parameter {index} (shape {tuple(p.shape)})"
        group = optimizer.param_groups[g_index]
        translation = translations[s_index]
        expected = {**translation.options, **param_options(translation, p, where)}
        for name, value in expected.items():
            if name != "lr" and name not in _UNSAVED.get(peer, ()) and group[name] != value:
                raise ValueError(
                    f"{where}: the checkpoint's {peer} options give {name}={value!r}, the "
                    f"optimizer has {group[name]!r}; build it with "
                    f"presets.like({peer!r}, params, **{kwargs[s_index]!r})"
                )
        if _lr_carries_over(peer, kwargs[s_index]):
            result_groups[g_index]["lr"] = translation.options["lr"]
        state = state_dict["state"].get(pid)
        if state:
            if peer == "pytorch_optimizer":  # one step count per group
                state = {**state, "step": saved_groups[s_index].get("step", 0)}
            new_state[index] = _convert_param_state(peer, state, p, group, where)
    return {"state": new_state, "param_groups": result_groups}


def from_peer_state_dict(
    peer: str, state_dict: Mapping[str, Any], params: Iterable[Tensor]
) -> Adafactor:
    """An ``Adafactor`` built by ``presets.like`` from the options saved in ``state_dict``
    (one group per saved group, over ``params`` in the peer's order) with its state loaded."""
    params = list(params)
    saved_groups = state_dict["param_groups"]
    kwargs = [
        peer_kwargs(peer, group, f"param_groups[{i}]") for i, group in enumerate(saved_groups)
    ]
    optimizer = _build(peer, saved_groups, kwargs, params)
    optimizer.load_state_dict(convert_state_dict(peer, state_dict, optimizer))
    return optimizer


def _check_peer(peer: str) -> None:
    if peer not in _GROUP_OPTIONS:
        raise ValueError(
            f"cannot convert checkpoints of {peer!r}; convertible peers: {', '.join(PEERS)}"
        )


def _build(
    peer: str,
    saved_groups: list[Mapping[str, Any]],
    kwargs: list[dict[str, Any]],
    params: list[Tensor],
) -> Adafactor:
    sizes = [len(group["params"]) for group in saved_groups]
    if sum(sizes) != len(params):
        raise ValueError(f"the checkpoint has {sum(sizes)} parameters, {len(params)} were given")
    groups, start = [], 0
    for size, kw in zip(sizes, kwargs):
        groups.append({"params": params[start : start + size], **kw})
        start += size
    return like(peer, groups)


def _lr_carries_over(peer: str, kwargs: Mapping[str, Any]) -> bool:
    """Whether the checkpoint's ``lr`` means what ours does (it is ρ_t's cap or ρ_t)."""
    if peer == "pytorch_optimizer":
        return not kwargs["relative_step"]  # in relative mode its lr is not read
    return peer == "torch" or kwargs["lr"] is not None


def _convert_param_state(
    peer: str, state: Mapping[str, Any], p: Tensor, group: Mapping[str, Any], where: str
) -> dict[str, Tensor]:
    unknown = sorted(set(state) - _STATE_KEYS[peer] - {"step"})
    if unknown:
        raise ValueError(f"{where}: {peer} never saves state {unknown}; cannot convert it")
    dims = (
        factored_dims(p.shape, group["factor_dims"], group["min_dim_size_to_factor"])
        if group["factored"]
        else None
    )
    step = state["step"]
    converted = {
        "step": torch.tensor(float(step.item() if isinstance(step, Tensor) else step)),
        "nonfinite_skips": torch.tensor(0, dtype=torch.int64),
    }
    if peer == "torch":
        eps1 = group["eps"][0]  # ours adds ε1 (torch's ε1²) to G²; torch's means lack it
        names = {"row_var": "exp_avg_sq_row", "col_var": "exp_avg_sq_col", "variance": "exp_avg_sq"}
        for theirs, ours in names.items():
            if theirs in state:
                converted[ours] = state[theirs] + eps1
    else:
        converted.update({k: state[k] for k in ("exp_avg", "exp_avg_sq") if k in state})
        if "exp_avg_sq_row" in state and dims is not None:
            r, c = dims  # the peer's row statistics reduce dim c, its column statistics dim r
            converted["exp_avg_sq_row"] = state["exp_avg_sq_row"].unsqueeze(c)
            converted["exp_avg_sq_col"] = state["exp_avg_sq_col"].unsqueeze(r)
    expected = Adafactor.layout(p, group)
    if set(converted) != set(expected):
        raise ValueError(
            f"{where}: {peer} saved {sorted(set(state) - {'RMS'})}, which does not give the "
            f"state its options call for ({sorted(expected)})"
        )
    for key, spec in expected.items():
        if tuple(converted[key].shape) != spec.shape:
            raise ValueError(
                f"{where}: {peer}'s state for {key!r} converts to shape "
                f"{tuple(converted[key].shape)}, expected {spec.shape}"
            )
        converted[key] = converted[key].to(device=p.device, dtype=spec.dtype)
    return converted
