"""``Adafactor``: the ``torch.optim.Optimizer`` that validates options, keeps state and steps.

The math lives in ``equations.py`` and ``phases.py``, a group's step in ``step.py``; this
module checks what users pass, lays out each parameter's state (``factoring.py``), gathers
every group's work and checks all of it before anything changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from .distributed import check_placements, complete_sums, is_distributed, local, zeros_like_state
from .factoring import PARAM_DTYPES, StateSpec, factored_dims, state_dtype, state_layout
from .kernels import backend_for
from .kernels.group import PlanCache
from .options import (
    DEFAULTS,
    OPTIONS,
    FactorRule,
    Hyperparameters,
    Momentum,
    NonfiniteGrad,
    WeightDecayScale,
    check_tensor_lr_value,
    validate_options,
)
from .phases import Applied
from .state_dicts import check_loadable, check_state, describe, fits, normalized_state_dict
from .step import FastPath, group_step, tensor_step

_DOC = r"""Adafactor (Shazeer & Stern, ICML 2018), faithful to the paper by default.

For an n×m weight matrix X and step t = 1, 2, …::

    R_t = β̂2_t·R_{t−1} + (1 − β̂2_t)·(G_t² + ε1)·1_m          per-row statistics
    C_t = β̂2_t·C_{t−1} + (1 − β̂2_t)·1_nᵀ·(G_t² + ε1)         per-column statistics
    V̂_t = R_t·C_t / (1_nᵀ·R_t)
    Û_t = U_t / max(1, RMS(U_t)/d),   U_t = G_t / √V̂_t
    α_t = max(ε2, RMS(X_{t−1}))·ρ_t,  ρ_t = min(lr, 1/√t),  β̂2_t = 1 − t^(−c)
    X_t = X_{t−1} − α_t·Û_t

Tensors that are not factored keep a full ``V̂_t = β̂2_t·V̂_{t−1} + (1 − β̂2_t)(G_t² + ε1)``.
The state of a factored n×m matrix is n + m numbers, plus a step count.

Args:
    params: parameters or parameter groups, as for any ``torch.optim`` optimizer.
{options}

Raises:
    ValueError: on an invalid option (naming it), a complex parameter, or in ``step`` on a
        sparse gradient; in every case before anything changes.
"""


def _args_doc() -> str:
    """The ``Args`` entries of every option, from ``options.OPTIONS``."""
    import textwrap

    return "\n".join(
        textwrap.fill(
            f"{o.name}: {o.doc}", width=96, initial_indent="    ", subsequent_indent="        "
        )
        for o in OPTIONS
    )


class Adafactor(Optimizer):
    __doc__ = _DOC.replace("{options}", _args_doc())

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-2,
        *,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float | None = 1.0,
        decay_rate: float = 0.8,
        beta2_cap: float | None = None,
        decay_offset: int = 0,
        beta1: float | None = None,
        beta2: float | None = None,
        momentum_of: Momentum = "step",
        momentum_dtype: torch.dtype | None = None,
        weight_decay: float = 0.0,
        weight_decay_scale: WeightDecayScale = "rho",
        relative_step: bool = True,
        warmup_init: bool = False,
        scale_parameter: bool = True,
        factored: bool = True,
        min_dim_size_to_factor: int = 2,
        factor_dims: FactorRule = "largest",
        rms_per_slice: bool = False,
        maximize: bool = False,
        stochastic_rounding: bool = False,
        fused: bool | None = None,
        diagnostics: bool = False,
        nonfinite_grad: NonfiniteGrad = "skip",
    ) -> None:
        arguments = locals()
        defaults = {name: arguments[name] for name in DEFAULTS}  # the signature is OPTIONS'
        if isinstance(eps, list):
            defaults["eps"] = tuple(eps)
        validate_options(defaults)
        check_tensor_lr_value(lr, "Adafactor")
        super().__init__(params, defaults)
        self.diagnostics: dict[Tensor, dict[str, Tensor]] = {}
        self._plans: dict[int, PlanCache] = {}  # the group kernels' tables, per group

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("diagnostics", {})
        self.__dict__.setdefault("_plans", {})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its options are validated, and its parameters must be real tensors."""
        if isinstance(param_group.get("eps"), list):
            param_group["eps"] = tuple(param_group["eps"])
        where = f"param_groups[{len(self.param_groups)}]"
        validate_options({**self.defaults, **param_group}, where=where)
        check_tensor_lr_value(param_group.get("lr"), where)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        seen: set[int] = set()
        for index, p in enumerate(group["params"]):
            what = describe(group, len(self.param_groups) - 1, index, p)
            problem = None
            if id(p) in seen:
                problem = "appears more than once in its group; it would be stepped twice a step"
            elif p.is_complex():
                problem = (
                    "is complex; Adafactor supports real floating-point parameters only "
                    "(optimize torch.view_as_real(p) instead)"
                )
            elif p.dtype not in PARAM_DTYPES:
                problem = f"has dtype {p.dtype}; {_SUPPORTED_DTYPES}"
            elif _overlaps(p):
                problem = _OVERLAPS
            if problem:
                self.param_groups.pop()
                raise ValueError(f"{what} {problem}")
            seen.add(id(p))

    @staticmethod
    def layout(param: Tensor, group: Mapping[str, Any]) -> dict[str, StateSpec]:
        """The state that ``param`` keeps under ``group``'s options."""
        return state_layout(
            param.shape,
            param.dtype,
            factored=group["factored"],
            factor_dims=group["factor_dims"],
            min_dim_size_to_factor=group["min_dim_size_to_factor"],
            momentum=group["beta1"] is not None,
            momentum_dtype=group["momentum_dtype"],
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Make one optimization step; ``closure`` (re-evaluating the loss) runs with grad on."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        work = self._gather()
        # Every group's way of stepping is settled before any group steps, so that a group
        # whose kernels cannot be had (fused=True) raises before anything changes.
        paths = [self._fast_path(g_index, group, params) for g_index, group, params in work]
        for _, group, params in work:
            for p in params:
                state = self.state[p]
                if not state:
                    state.update(
                        {k: zeros_like_state(p, s) for k, s in self.layout(p, group).items()}
                    )
        for (_, group, params), (fast, options) in zip(work, paths):
            distributed = any(map(is_distributed, params))
            applied = self._tensor_steps(fast, group, params, options, distributed)
            if group["diagnostics"]:
                for p, result in zip(params, applied):
                    self._record(p, result, group)
        return loss

    def _fast_path(
        self, g_index: int, group: Mapping[str, Any], params: list[Tensor]
    ) -> tuple[FastPath | None, Hyperparameters]:
        """The group kernels a group steps with (``None``: eagerly), and its options."""
        options = Hyperparameters.from_group(group)
        if not params:
            return None, options
        backend = backend_for(group["fused"], local(params[0]).device)
        if backend is None:
            return None, options
        return FastPath(backend, self._plans.setdefault(g_index, PlanCache()), options), options

    def _tensor_steps(
        self,
        fast: FastPath | None,
        group: Mapping[str, Any],
        params: list[Tensor],
        options: Hyperparameters,
        distributed: bool,
    ) -> list[Applied]:
        """A group through per-tensor steps: the eager ones, the kernels for the tensors they
        take, the partial sums of distributed tensors completed between phases."""
        steps = []
        hps: dict[tuple[torch.device, torch.dtype], Hyperparameters] = {}
        for p in params:
            dtype = state_dtype(p.dtype)
            where = (local(p).device, dtype)
            if where not in hps:
                hps[where] = options.as_tensors(*where)
            assert p.grad is not None  # _gather keeps only parameters with a gradient
            steps.append(
                tensor_step(
                    local(p),
                    local(p.grad),
                    {k: local(v) for k, v in self.state[p].items()},
                    hps[where],
                    _dims(p, group),
                    p.shape,
                    p,
                    dtype,
                )
            )
        return group_step(
            steps, complete_sums if distributed else None, fast, report=group["diagnostics"]
        )

    def _record(self, p: Tensor, applied: Applied, group: Mapping[str, Any]) -> None:
        slice_shape = _slice_shape(p, group)
        record = self.diagnostics.setdefault(
            p,
            {
                "clipped_steps": torch.zeros(
                    slice_shape, dtype=torch.int64, device=applied.finite.device
                )
            },
        )
        record["step_size"] = applied.alpha_t.expand_as(applied.update_rms).reshape(slice_shape)
        record["update_rms"] = applied.update_rms.reshape(slice_shape)
        record["skipped"] = applied.finite.logical_not()
        if group["clip_threshold"] is not None:
            record["clipped_steps"].add_(
                applied.finite & (record["update_rms"] > group["clip_threshold"])
            )

    def _gather(self) -> list[tuple[int, dict[str, Any], list[Tensor]]]:
        """The parameters to update, group by group, after checking every one of them, so that
        a bad gradient or stale state raises before any parameter or state changes. State
        whose dtype no longer fits its parameter's (``model.double()``) is converted then."""
        work = []
        raising = []
        converting = []
        for g_index, group in enumerate(self.param_groups):
            # Options can change after construction (schedulers write into groups). While
            # torch.compile traces the step, a scheduled lr is a symbolic number that host-side
            # checks cannot read: the eager steps check it.
            if not torch.compiler.is_compiling():
                validate_options(group, where=f"param_groups[{g_index}]")
            params = []
            for p_index, p in enumerate(group["params"]):
                grad = p.grad
                if grad is None:
                    continue
                if (
                    grad.is_sparse
                    or grad.dtype not in PARAM_DTYPES
                    or p.dtype not in PARAM_DTYPES
                    or grad.shape != p.shape
                ):
                    _refuse_gradient(describe(group, g_index, p_index, p), p, grad)
                if _overlaps(p):
                    raise ValueError(f"{describe(group, g_index, p_index, p)} {_OVERLAPS}")
                if is_distributed(p) or is_distributed(grad):
                    check_placements(p, describe(group, g_index, p_index, p))
                state = self.state.get(p)
                if state:
                    layout = self.layout(p, group)
                    if not fits(state, layout):
                        check_state(describe(group, g_index, p_index, p), state, layout)
                        converting += [
                            (state, key, spec.dtype)
                            for key, spec in layout.items()
                            if state[key].dtype != spec.dtype
                            or not local(state[key]).is_contiguous()
                        ]
                params.append(p)
                if group["nonfinite_grad"] == "raise":
                    what = describe(group, g_index, p_index, p)
                    raising += [(f"gradient in {what}", grad), (f"values in {what} itself", p)]
            if params and group["nonfinite_grad"] == "raise" and isinstance(group["lr"], Tensor):
                raising.append((f"lr of param_groups[{g_index}]", group["lr"]))
            work.append((g_index, group, params))
        if raising:
            _raise_on_nonfinite(raising)
        for state, key, dtype in converting:
            # Contiguous too: the steps view state as the parameter's canonical shape (a
            # transposed tensor from a converted checkpoint would be read in the wrong order).
            state[key] = state[key].to(dtype).contiguous()
        return work

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by ``state_dict()``, exactly: state keeps its own dtype
        (float32 statistics for 16-bit parameters), so a resumed run continues bit for bit.

        Raises ``ValueError``, naming the parameter and the key, when the state dict is
        malformed, its groups, options or any state tensor's layout do not match, or a state
        value is corrupt (non-finite or negative statistics, counts that are not whole
        numbers ≥ 0); then nothing changes. A ``step`` saved as a plain number loads.
        """
        state_dict = normalized_state_dict(state_dict)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = normalized_state_dict(result)
        id_map = check_loadable(self.param_groups, self.defaults, self.layout, state_dict)
        # Options added in later versions take their defaults.
        state_dict["param_groups"] = [{**self.defaults, **g} for g in state_dict["param_groups"]]

        hooks = self._optimizer_load_state_dict_pre_hooks
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks = hooks
        self._plans.clear()

        groups_by_id = {
            pid: group
            for group, saved in zip(self.param_groups, state_dict["param_groups"])
            for pid in saved["params"]
        }
        for pid, values in state_dict["state"].items():
            p = id_map[pid]
            layout = self.layout(p, groups_by_id[pid])
            self.state[p] = {
                key: value.to(
                    device=p.device,
                    dtype=layout[key].dtype,
                    copy=True,
                    memory_format=torch.contiguous_format,  # the steps' canonical views need it
                )
                for key, value in values.items()
            }


_SUPPORTED_DTYPES = (
    "Adafactor steps floating-point tensors of float64, float32, bfloat16 or float16"
)
_OVERLAPS = (
    "has elements that share memory (an expanded tensor?): a step would write them several "
    "times; give it memory of its own (p.data = p.data.contiguous())"
)


def _overlaps(p: Tensor) -> bool:
    """Whether some elements of ``p`` share memory (a contiguous tensor never does)."""
    t = local(p)
    return not t.is_contiguous() and torch._debug_has_internal_overlap(t) == 1


def _refuse_gradient(what: str, p: Tensor, grad: Tensor) -> None:
    if grad.is_sparse:
        raise ValueError(f"{what} has a sparse gradient; Adafactor needs dense ones")
    if grad.is_complex():
        raise ValueError(f"{what} has a complex gradient; Adafactor needs real ones")
    if p.dtype not in PARAM_DTYPES:
        raise ValueError(f"{what} now has dtype {p.dtype}; {_SUPPORTED_DTYPES}")
    if grad.dtype not in PARAM_DTYPES:
        raise ValueError(f"{what} has a gradient of dtype {grad.dtype}; {_SUPPORTED_DTYPES}")
    raise ValueError(f"{what}: gradient shape {tuple(grad.shape)} != parameter shape")


def _raise_on_nonfinite(raising: list[tuple[str, Tensor]]) -> None:
    """``nonfinite_grad="raise"``: a ``ValueError`` naming every tensor of ``raising`` (what
    it is, the tensor: gradients, parameters, a Tensor ``lr``) that holds a NaN or an Inf
    (one host sync, and across processes one all-reduce)."""
    checks = [local(t).isfinite().all() for _, t in raising]
    finite = torch.stack([c.to(checks[0].device) for c in checks]).cpu()
    if any(is_distributed(t) for _, t in raising):
        # Every process must decide alike: a NaN on any shard counts.
        finite = finite.to(torch.int32)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not bool(finite.all()):
        bad = [what for (what, _), ok in zip(raising, finite.tolist()) if not ok]
        raise ValueError(f"non-finite {', non-finite '.join(bad)}; nothing was updated")


def _dims(p: Tensor, group: Mapping[str, Any]) -> tuple[int, int] | None:
    if not group["factored"]:
        return None
    return factored_dims(p.shape, group["factor_dims"], group["min_dim_size_to_factor"])


def _slice_shape(p: Tensor, group: Mapping[str, Any]) -> tuple[int, ...]:
    """The shape of one value per slice (``rms_per_slice``), or ``()`` for one per tensor."""
    dims = _dims(p, group)
    if not group["rms_per_slice"] or dims is None:
        return ()
    return tuple(n for i, n in enumerate(p.shape) if i not in dims)
