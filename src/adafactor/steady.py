"""A selection's step again, as the last one: the host's work that need not grow with the
number of tensors.

A step through the group kernels checks every gradient and state tensor, decides which
tensors the kernels take and plans their tiles. All of that depends on the tensors' memory,
dtypes, shapes and layouts and on the group's options, not on their values, and from one step
to the next usually only the gradients are new tensors (``zero_grad()`` frees them). A
``Steady`` record keeps what a selection's last step found (a group's, or one parameter's for
a hook inside the backward pass) with the key that says it still holds, compared as a few
lists; while it holds, the step reads each gradient's pointer and goes to the kernels: no
per-tensor entries, views, signatures or checks in Python beyond those lists.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from itertools import chain
from operator import attrgetter
from typing import Any

from torch import Tensor

from .kernels.plan import Plan
from .step import FastPath

_grad = attrgetter("grad")
_layout = attrgetter("dtype", "shape", "device")


class Steady:
    """What a selection's last step through the kernels found, and its key: the group's list
    of parameters (each one), those of the selection that stepped (each had a gradient) and
    those that had none (``idle``), the options and kernels; every stepped parameter's memory,
    dtype, shape and device, its gradient's dtype, shape and device (and that both are
    contiguous), and the tensors of its state and their memory (which can change under a
    tensor: ``v.data = ...``). The state is watched, not held (neither its dicts nor its
    tensors): a tensor given back ends the record, so that no other can pass for it by taking
    its ``id``, and state moved elsewhere or cleared (offloaded, say) is not kept alive here.
    ``positions`` says where each parameter's dict is among ``optimizer.state``'s values, for
    a whole group's record (Python hashes a tensor slowly: one list of every dict beats
    looking each one up); a hook's record is its parameter's, at ``slot`` in the group's list
    (the rest of the list is not its business: a hook must not cost the group's size)."""

    def __init__(
        self,
        members: list[Tensor],
        params: list[Tensor],
        idle: list[Tensor],
        path: FastPath | None,
        fixed: tuple[int, ...],
        dicts: Sequence[dict[str, Any]],
        positions: list[int] | None,
        slot: int | None = None,
    ) -> None:
        self.members, self.slot = members, slot
        self.member_ids = list(map(id, members)) if slot is None else []
        self.params, self.idle, self.path, self.fixed = params, idle, path, fixed
        self.positions = positions
        self.layouts = list(map(_layout, map(_grad, params)))
        self.param_layouts = list(map(_layout, params))
        self.pointers = list(map(Tensor.data_ptr, params))
        values = _values(dicts)
        self.state_ids = list(map(id, values))
        self.state_pointers = list(map(Tensor.data_ptr, values))
        live = self.live = [True]

        def ended(_: object) -> None:
            live[0] = False

        self._watch = [weakref.ref(v, ended) for v in values if isinstance(v, Tensor)]

    def gradients(
        self, members: list[Tensor], fixed: tuple[int, ...], dicts: Sequence[Any]
    ) -> list[Tensor] | None:
        """This step's gradients when nothing but their memory changed since the recorded
        step (``fixed``: the identities of the group's options but ``lr``, which a scheduler
        writes every step; ``dicts``: each stepped parameter's state now), else ``None``.
        Reads, changes nothing."""
        if not (
            self.live[0]
            and members is self.members
            and (
                list(map(id, members)) == self.member_ids
                if self.slot is None
                else len(members) > self.slot and members[self.slot] is self.params[0]
            )
            and fixed == self.fixed
            and all(p.grad is None for p in self.idle)
        ):
            return None
        params, grads = self.params, list(map(_grad, self.params))
        try:  # a parameter without a gradient or state, or a sparse gradient, raises here
            values = _values(dicts)
            same = (
                list(map(_layout, grads)) == self.layouts
                and all(map(Tensor.is_contiguous, grads))
                and list(map(Tensor.data_ptr, params)) == self.pointers
                and list(map(_layout, params)) == self.param_layouts
                and all(map(Tensor.is_contiguous, params))
                and list(map(id, values)) == self.state_ids
                and list(map(Tensor.data_ptr, values)) == self.state_pointers
            )
        except (AttributeError, TypeError, RuntimeError):
            return None
        return grads if same else None

    def plan_with(self, grads: list[Tensor]) -> Plan | None:
        """The kernels' plan with ``grads`` written in, or ``None`` where a gradient's
        alignment moved its tiles to another launch (the whole step builds it again)."""
        assert self.path is not None
        return self.path.cache.with_gradients(list(map(Tensor.data_ptr, grads)))


def _values(dicts: Sequence[dict[str, Any]]) -> list[Any]:
    return list(chain.from_iterable(map(dict.values, dicts)))
