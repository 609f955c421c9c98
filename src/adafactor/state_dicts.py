"""What ``Adafactor.load_state_dict`` accepts: the structure of a state dict, its groups'
options, each parameter's state layout and the values themselves. Every check runs before
anything is loaded and raises a ``ValueError`` that says what is wrong and where.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from .distributed import local
from .factoring import StateSpec
from .options import validate_options

Layout = Callable[[Tensor, Mapping[str, Any]], Mapping[str, StateSpec]]
"""The state a parameter keeps under a group's options (``Adafactor.layout``)."""

RESIDUAL = "residual"
"""The state of compensated rounding: absent, it is zero (a checkpoint saved without it)."""
COUNTERS = ("step", "nonfinite_skips")
"""State that counts steps: whole numbers ≥ 0."""
STATISTICS = ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq")
"""State that averages squares: finite and ≥ 0."""

IDENTIFYING = ("lr", "eps", "clip_threshold", "decay_rate", "beta1", "beta2", "relative_step")
"""Options every group we save has: a group without them comes from another optimizer."""


def describe(group: Mapping[str, Any], g_index: int, p_index: int, p: Tensor) -> str:
    """How errors name a parameter: its name if the group has ``param_names``, its place and
    its shape."""
    names = group.get("param_names")
    name = f"{names[p_index]!r} " if names else ""
    return f"parameter {name}(param_groups[{g_index}]['params'][{p_index}], shape {tuple(p.shape)})"


def normalized_state_dict(state_dict: Any) -> dict[str, Any]:
    """A shallow copy of ``state_dict`` after checking its structure, with the spellings other
    savers use made ours: an ``eps`` saved as a list becomes a tuple, a ``step`` (or skip
    count) saved as a plain number a tensor, as every ``torch.optim`` optimizer allows."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"not an optimizer state dict: a {type(state_dict).__name__}")
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise ValueError(f"not an optimizer state dict: it has no {key!r}")
    state, groups = state_dict["state"], state_dict["param_groups"]
    if not isinstance(state, Mapping):
        raise ValueError(f"the state dict's 'state' is a {type(state).__name__}, not a dict")
    if not isinstance(groups, (list, tuple)):
        raise ValueError(
            f"the state dict's 'param_groups' is a {type(groups).__name__}, not a list"
        )
    normalized_groups = []
    for index, group in enumerate(groups):
        if not isinstance(group, Mapping):
            raise ValueError(f"param_groups[{index}] of the state dict is not a dict")
        if not isinstance(group.get("params"), (list, tuple)):
            raise ValueError(f"param_groups[{index}] of the state dict has no list 'params'")
        group = dict(group)
        if isinstance(group.get("eps"), list):
            group["eps"] = tuple(group["eps"])
        normalized_groups.append(group)
    normalized_state = {}
    for pid, values in state.items():
        if not isinstance(values, Mapping):
            raise ValueError(f"the state of parameter id {pid!r} is not a dict")
        values = dict(values)
        for key in COUNTERS:
            if key in values and _is_number(values[key]):
                dtype = torch.float32 if key == "step" else torch.int64
                values[key] = torch.tensor(values[key], dtype=dtype)
        normalized_state[pid] = values
    return {**state_dict, "state": normalized_state, "param_groups": normalized_groups}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def fits(state: Mapping[str, Any], layout: Mapping[str, StateSpec]) -> bool:
    """Whether ``state`` has exactly ``layout``'s keys, shapes and dtypes, each tensor
    contiguous (the quick test a step makes of every parameter; ``check_state`` says what is
    wrong, or the step converts)."""
    if state.keys() != layout.keys():
        return False
    for key, spec in layout.items():
        value = state[key]
        if not isinstance(value, Tensor) or value.shape != spec.shape or value.dtype != spec.dtype:
            return False
        if not local(value).is_contiguous():
            return False
    return True


def check_state(
    what: str, state: Mapping[str, Any], layout: Mapping[str, StateSpec], *, values: bool = False
) -> None:
    """Raise if ``state`` does not have ``layout``'s keys and shapes, or (``values``) holds
    values no step could have made: non-finite or negative statistics, non-finite momentum,
    counts that are not whole numbers ≥ 0. Reading the values waits for their device. A
    ``residual`` (compensated rounding) may be missing, or there without the layout's asking:
    the step then starts it at zero, or folds it into the parameter (``adopt_residual``)."""
    if set(state) - {RESIDUAL} != set(layout) - {RESIDUAL}:
        raise ValueError(
            f"{what}: state has keys {sorted(state)}, but its options call for {sorted(layout)} "
            "(was it saved with other options, or by another optimizer?)"
        )
    for key, spec in layout.items():
        if key not in state:
            continue
        value = state[key]
        if not isinstance(value, Tensor) or tuple(value.shape) != spec.shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{what}: state[{key!r}] has shape {shape}, expected {spec.shape}")
        if not (value.is_floating_point() or key == "nonfinite_skips"):
            raise ValueError(f"{what}: state[{key!r}] has dtype {value.dtype}, expected floats")
        if values:
            problem = _value_problem(key, local(value).detach())
            if problem:
                raise ValueError(f"{what}: state[{key!r}] {problem}")


def _value_problem(key: str, value: Tensor) -> str | None:
    if value.is_complex() or not (value.is_floating_point() or value.dtype == torch.int64):
        return f"has dtype {value.dtype}"
    if value.numel() == 0 or value.device.type == "meta":
        return None  # nothing to read
    if value.is_floating_point() and not bool(value.isfinite().all()):
        return "holds NaN or infinite values (a corrupt checkpoint?)"
    if key in COUNTERS:
        count = float(value)
        if count < 0 or count != int(count):
            return f"is {count}: a count of steps must be a whole number >= 0"
    if key in STATISTICS and bool((value < 0).any()):
        return "holds negative values: averages of squares cannot be negative"
    return None


def adopt_residual(
    param: Tensor, state: dict[str, Any], layout: Mapping[str, StateSpec], zeros: Tensor
) -> None:
    """Make ``state``'s residual what ``layout`` asks for, losing nothing: start a missing one
    at ``zeros``; fold one the layout no longer has (rounding switched from compensated, or a
    parameter no longer 16-bit) into ``param``, whose value it was part of."""
    if RESIDUAL in layout and RESIDUAL not in state:
        state[RESIDUAL] = zeros
    elif RESIDUAL in state and RESIDUAL not in layout:
        residual = state.pop(RESIDUAL)
        param.copy_(param.to(torch.float32).add_(residual.to(torch.float32)))


def check_loadable(
    groups: Sequence[Mapping[str, Any]],
    defaults: Mapping[str, Any],
    layout: Layout,
    state_dict: Mapping[str, Any],
) -> dict[Any, Tensor]:
    """Check a ``normalized_state_dict`` against an optimizer's ``groups``, ``defaults`` and
    ``layout``; return the map from the state dict's parameter ids to its parameters."""
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(groups):
        raise ValueError(
            f"the state dict has {len(saved_groups)} parameter groups, "
            f"this optimizer has {len(groups)}"
        )
    for index, (group, saved) in enumerate(zip(groups, saved_groups)):
        if len(group["params"]) != len(saved["params"]):
            raise ValueError(
                f"param_groups[{index}] has {len(saved['params'])} parameters in the state "
                f"dict, {len(group['params'])} in this optimizer"
            )
        missing = sorted(set(IDENTIFYING) - set(saved))
        if missing:
            raise ValueError(
                f"param_groups[{index}] of the state dict lacks the option(s) {missing}: it "
                "was not saved by adafactor.Adafactor (convert a peer's state dict first)"
            )
        validate_options({**defaults, **saved}, where=f"param_groups[{index}] of the state dict")
    id_map = dict(
        zip(
            chain.from_iterable(g["params"] for g in saved_groups),
            chain.from_iterable(g["params"] for g in groups),
        )
    )
    unknown_ids = set(state_dict["state"]) - set(id_map)
    if unknown_ids:
        raise ValueError(
            f"the state dict has state for unknown parameter ids {sorted(unknown_ids, key=str)}"
        )
    for g_index, (group, saved) in enumerate(zip(groups, saved_groups)):
        for p_index, (pid, p) in enumerate(zip(saved["params"], group["params"])):
            if pid in state_dict["state"]:
                what = describe(group, g_index, p_index, p)
                expected = layout(p, {**defaults, **saved})
                check_state(what, state_dict["state"][pid], expected, values=True)
    return id_map
