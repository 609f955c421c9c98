"""Options by parameter name: build ``Adafactor`` parameter groups from rules.

Like T5X's factor rules or timm's param-group helpers, a rule is a regular expression over
parameter names (``re.search``, as in ``model.named_parameters()``) and the ``Adafactor``
options for the parameters it matches::

    from adafactor import Adafactor
    from adafactor.param_rules import param_groups, NO_DECAY_FOR_NORMS_AND_BIASES

    groups = param_groups(model, [
        NO_DECAY_FOR_NORMS_AND_BIASES,
        (r"experts\\.w[12]$", {"factor_dims": "last"}),     # [n_experts, d, d_ff] stacks
        (r"embed", {"factored": False}),
    ])
    optimizer = Adafactor(groups, weight_decay=0.1)

Every rule that matches a parameter applies, in order, so a later rule overrides an earlier
one on the options both set. Parameters with the same resulting options share a group; groups
come in the order their first parameter appears in the model, and parameters keep the model's
order within a group. Each group carries ``param_names``, so ``Adafactor``'s error messages
name the parameter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .options import DEFAULTS

Rule = tuple[str, Mapping[str, Any]]
NamedParameters = torch.nn.Module | Iterable[tuple[str, Tensor]]

NO_DECAY_FOR_NORMS_AND_BIASES: Rule = (
    r"(?i)(^|\.)bias$|norm|(^|\.)ln(_\w+)?\.",
    {"weight_decay": 0.0},
)
"""No weight decay for biases and normalization weights, by name: ``…bias``, any name with
``norm`` in it (``LayerNorm``, ``layer_norm``, ``final_layer_norm``, ``norm1``) and GPT-2's
``ln_1.``/``ln_f.``. ``weight_decay_groups`` finds them by shape instead (a norm inside an
``nn.Sequential`` has only a number for a name)."""


def _named(model: NamedParameters) -> list[tuple[str, Tensor]]:
    named: list[tuple[str, Tensor]] = (
        list(model.named_parameters()) if isinstance(model, torch.nn.Module) else list(model)
    )
    return [(name, p) for name, p in named if p.requires_grad]


def param_groups(
    model: NamedParameters, rules: Sequence[Rule], *, strict: bool = True
) -> list[dict[str, Any]]:
    """Parameter groups for ``Adafactor`` from name rules (see the module docstring).

    Args:
        model: a module, or ``(name, parameter)`` pairs; parameters that do not require grad
            are left out.
        rules: ``(regex, options)`` pairs; a parameter gets the options of every rule whose
            regex ``re.search``-matches its name, later rules winning.
        strict: raise when a rule matches no parameter (a typo would otherwise go unnoticed).

    Returns:
        Groups ``{"params": [...], "param_names": [...], **options}`` for ``Adafactor``.

    Raises:
        ValueError: an invalid regex, an option ``Adafactor`` does not have, or (``strict``) a
            rule that matches nothing; each naming the rule.
    """
    compiled = []
    for index, (pattern, rule_options) in enumerate(rules):
        unknown = sorted(set(rule_options) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"rule {index} ({pattern!r}): unknown Adafactor option(s) {unknown}")
        try:
            compiled.append((re.compile(pattern), dict(rule_options)))
        except re.error as error:
            raise ValueError(f"rule {index} ({pattern!r}) is not a valid regex: {error}") from None
    named = _named(model)
    used = [False] * len(compiled)
    groups: dict[tuple[tuple[str, Any], ...], dict[str, Any]] = {}
    for name, p in named:
        options: dict[str, Any] = {}
        for index, (regex, chosen) in enumerate(compiled):
            if regex.search(name):
                used[index] = True
                options.update(chosen)
        key = tuple(sorted((k, repr(v)) for k, v in options.items()))
        group = groups.setdefault(key, {"params": [], "param_names": [], **options})
        group["params"].append(p)
        group["param_names"].append(name)
    if strict:
        unused = [rules[i][0] for i, hit in enumerate(used) if not hit]
        if unused:
            raise ValueError(f"rule(s) {unused} match no parameter name (strict=True)")
    return list(groups.values())


def weight_decay_groups(
    model: NamedParameters, weight_decay: float, *, no_decay: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Two groups, as timm's ``param_groups_weight_decay``: ``weight_decay`` for tensors of
    ≥ 2 dims, 0 for vectors and scalars (biases, norm scales) and for names in ``no_decay``.
    """
    skip = set(no_decay)
    decay: list[tuple[str, Tensor]] = []
    rest: list[tuple[str, Tensor]] = []
    for name, p in _named(model):
        (rest if p.ndim <= 1 or name in skip else decay).append((name, p))
    groups = []
    for members, value in ((decay, weight_decay), (rest, 0.0)):
        if members:
            groups.append(
                {
                    "params": [p for _, p in members],
                    "param_names": [name for name, _ in members],
                    "weight_decay": value,
                }
            )
    return groups
