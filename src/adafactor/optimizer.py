"""``Adafactor``: the ``torch.optim.Optimizer`` that validates options, keeps state and steps.

The math lives in ``algorithm.py``; this module checks what users pass, lays out each
parameter's state (``factoring.py``) and hands every parameter to the per-tensor step.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from .algorithm import (
    MOMENTUM_KINDS,
    WEIGHT_DECAY_SCALES,
    Hyperparameters,
    Momentum,
    ParamStep,
    WeightDecayScale,
    adafactor_group_step,
    whole,
)
from .distributed import check_placements, complete_sums, is_distributed, local, zeros_like_state
from .factoring import FACTOR_RULES, FactorRule, StateSpec, factored_dims, state_layout

CORE_OPTIONS = frozenset(
    {"lr", "eps", "clip_threshold", "decay_rate", "beta1", "beta2", "relative_step"}
)
"""Options every saved group of ours has; a group without them comes from another optimizer."""
NonfiniteGrad = Literal["skip", "raise"]
NONFINITE_POLICIES: tuple[str, ...] = ("skip", "raise")


class Adafactor(Optimizer):
    r"""Adafactor (Shazeer & Stern, ICML 2018), faithful to the paper by default.

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
        lr: with ``relative_step`` (default), the cap on the relative step size,
            ``ρ_t = min(lr, 1/√t)``: the paper's 10⁻². A learning-rate scheduler scales this cap
            like any ``lr``. Without ``relative_step``, ρ_t = ``lr`` (the absolute step size).
        eps: ``(ε1, ε2)``: ε1 (> 0) is added to G² before averaging, whatever the dtype; ε2 is the
            floor of the parameter scale ``max(ε2, RMS(X))``. Paper: ``(1e-30, 1e-3)``.
        clip_threshold: ``d``, the update-clipping threshold; ``None`` turns clipping off.
        decay_rate: ``c`` in ``β̂2_t = 1 − t^(−c)``, ``0 < c ≤ 1`` (paper: 0.8; torch and HF
            write it as −0.8).
        beta1: ``β1``, momentum; ``None`` (default) keeps no momentum and no memory for it.
        beta2: a constant ``β2`` with Adam's bias correction,
            ``β̂2_t = β2(1 − β2^(t−1))/(1 − β2^t)``, in place of ``1 − t^(−c)``.
        momentum: what β1 averages: ``"step"`` (default; as T5X, optax and HF) the steps
            ``α_t·Û_t``; ``"gradient"`` Adam's bias-corrected ``m̂_t``, divided by ``√V̂_t``.
        weight_decay: ``λ``, decoupled weight decay: ``X ← X − λ·s·X`` each step.
        weight_decay_scale: ``s``: ``"rho"`` (default) ρ_t, like the learning rate in AdamW;
            ``"alpha"`` α_t (HF, timm); ``"lr"`` the group's ``lr`` (torch); ``"none"`` 1 (optax).
        relative_step: use ρ_t = ``min(lr, 1/√t)`` rather than ρ_t = ``lr``.
        warmup_init: with ``relative_step``, the warm-up variant ``ρ_t = min(lr, 10⁻⁶·t, 1/√t)``.
        scale_parameter: multiply ρ_t by ``max(ε2, RMS(X_{t−1}))``.
        factored: keep factored (row and column) statistics for tensors of 2 or more dims.
        min_dim_size_to_factor: factor only when both chosen dims are at least this long; the
            default 2 factors every matrix as the paper does (1×m gains nothing from it).
        factor_dims: which two dims of a tensor to factor: ``"largest"`` (default, as optax and
            big_vision; a conv kernel [256, 128, 3, 3] over 256×128) or ``"last"`` (as torch
            and HF; the same kernel over its 3×3 window).
        maximize: ascend rather than descend (``p.grad`` is never modified).
        diagnostics: record, after each step, per parameter: ``step_size`` (α_t),
            ``update_rms`` (RMS(U_t), before clipping), ``clipped_steps`` (steps where
            RMS(U_t) > d) in ``optimizer.diagnostics[param]``; 0-d tensors, no host sync.
        nonfinite_grad: a gradient with a NaN or Inf either ``"skip"``s that parameter's step
            (no change to it or its state; ``state["nonfinite_skips"]`` counts it; no host
            sync) or ``"raise"``s a ``ValueError`` naming it before anything changes (one host
            sync per step).

    Raises:
        ValueError: on an invalid option (naming it), a complex parameter, or in ``step`` on a
            sparse gradient; in every case before anything changes.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-2,
        *,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float | None = 1.0,
        decay_rate: float = 0.8,
        beta1: float | None = None,
        beta2: float | None = None,
        momentum: Momentum = "step",
        weight_decay: float = 0.0,
        weight_decay_scale: WeightDecayScale = "rho",
        relative_step: bool = True,
        warmup_init: bool = False,
        scale_parameter: bool = True,
        factored: bool = True,
        min_dim_size_to_factor: int = 2,
        factor_dims: FactorRule = "largest",
        maximize: bool = False,
        diagnostics: bool = False,
        nonfinite_grad: NonfiniteGrad = "skip",
    ) -> None:
        defaults = dict(
            lr=lr,
            eps=tuple(eps) if isinstance(eps, (list, tuple)) else eps,
            clip_threshold=clip_threshold,
            decay_rate=decay_rate,
            beta1=beta1,
            beta2=beta2,
            momentum=momentum,
            weight_decay=weight_decay,
            weight_decay_scale=weight_decay_scale,
            relative_step=relative_step,
            warmup_init=warmup_init,
            scale_parameter=scale_parameter,
            factored=factored,
            min_dim_size_to_factor=min_dim_size_to_factor,
            factor_dims=factor_dims,
            maximize=maximize,
            diagnostics=diagnostics,
            nonfinite_grad=nonfinite_grad,
        )
        validate_options(defaults)
        super().__init__(params, defaults)
        self.diagnostics: dict[Tensor, dict[str, Tensor]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("diagnostics", {})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its options are validated, and its parameters must be real tensors."""
        if isinstance(param_group.get("eps"), list):
            param_group["eps"] = tuple(param_group["eps"])
        validate_options({**self.defaults, **param_group}, where="param_group")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for index, p in enumerate(group["params"]):
            if p.is_complex():
                self.param_groups.pop()
                raise ValueError(
                    f"{_describe(group, len(self.param_groups), index, p)} is complex; "
                    "Adafactor supports real floating-point parameters only "
                    "(optimize torch.view_as_real(p) instead)"
                )
            if not p.is_floating_point():
                self.param_groups.pop()
                raise ValueError(
                    f"{_describe(group, len(self.param_groups), index, p)} has dtype {p.dtype}; "
                    "Adafactor needs floating-point parameters"
                )

    def layout(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, StateSpec]:
        """The state that ``param`` keeps under ``group``'s options."""
        return state_layout(
            param.shape,
            param.dtype,
            factored=group["factored"],
            factor_dims=group["factor_dims"],
            min_dim_size_to_factor=group["min_dim_size_to_factor"],
            momentum=group["beta1"] is not None,
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Make one optimization step; ``closure`` (re-evaluating the loss) runs with grad on."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group, params in self._gather():
            hp = Hyperparameters.from_group(group)
            steps = []
            for p in params:
                state = self.state[p]
                if not state:
                    state.update(
                        {k: zeros_like_state(p, s) for k, s in self.layout(p, group).items()}
                    )
                local_state = {k: local(v) for k, v in state.items()}
                dims = _dims(p, group)
                steps.append(ParamStep(local(p), local(p.grad), local_state, hp, dims, p.shape, p))
            adafactor_group_step(
                steps, complete_sums if any(map(is_distributed, params)) else whole
            )
            if group["diagnostics"]:
                for p, step in zip(params, steps):
                    self._record(p, step, group["clip_threshold"])
        return loss

    def _record(self, p: Tensor, step: ParamStep, clip_threshold: float | None) -> None:
        record = self.diagnostics.setdefault(
            p, {"clipped_steps": torch.zeros((), dtype=torch.int64, device=step.t.device)}
        )
        record["step_size"] = step.alpha_t
        record["update_rms"] = step.update_rms
        if clip_threshold is not None:
            record["clipped_steps"].add_(step.finite & (step.update_rms > clip_threshold))

    def _gather(self) -> list[tuple[dict[str, Any], list[Tensor]]]:
        """The parameters to update, group by group, after checking every one of them, so that
        a bad gradient or stale state raises before any parameter or state changes."""
        work = []
        raising = []
        for g_index, group in enumerate(self.param_groups):
            params = []
            for p_index, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                what = _describe(group, g_index, p_index, p)
                if p.grad.is_sparse:
                    raise ValueError(f"{what} has a sparse gradient; Adafactor needs dense ones")
                if p.grad.is_complex():
                    raise ValueError(f"{what} has a complex gradient; Adafactor needs real ones")
                if p.grad.shape != p.shape:
                    raise ValueError(
                        f"{what}: gradient shape {tuple(p.grad.shape)} != parameter shape"
                    )
                check_placements(p, what)
                state = self.state.get(p)
                if state:
                    _check_state(what, state, self.layout(p, group))
                params.append(p)
                if group["nonfinite_grad"] == "raise":
                    raising.append((what, p.grad))
            work.append((group, params))
        if raising:
            finite = torch.stack([local(g).isfinite().all() for _, g in raising]).cpu()
            if any(is_distributed(g) for _, g in raising):
                # Every process must decide alike: a NaN on any shard counts.
                finite = finite.to(torch.int32)
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if not bool(finite.all()):
                bad = [what for (what, _), ok in zip(raising, finite.tolist()) if not ok]
                raise ValueError(f"non-finite gradient in {', '.join(bad)}; nothing was updated")
        return work

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by ``state_dict()``, exactly: state keeps its own dtype
        (float32 statistics for 16-bit parameters), so a resumed run continues bit for bit.

        Raises ``ValueError``, naming the parameter, when the groups, the options or any
        state tensor's layout do not match, and then nothing changes.
        """
        state_dict = state_dict.copy()
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        id_map = self._check_loadable(state_dict)
        # Options added in later versions take their defaults.
        state_dict["param_groups"] = [{**self.defaults, **g} for g in state_dict["param_groups"]]

        hooks = self._optimizer_load_state_dict_pre_hooks
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks = hooks

        groups_by_id = {
            pid: group
            for group, saved in zip(self.param_groups, state_dict["param_groups"])
            for pid in saved["params"]
        }
        for pid, values in state_dict["state"].items():
            p = id_map[pid]
            layout = self.layout(p, groups_by_id[pid])
            self.state[p] = {
                key: value.to(device=p.device, dtype=layout[key].dtype, copy=True)
                for key, value in values.items()
            }

    def _check_loadable(self, state_dict: Mapping[str, Any]) -> dict[Any, Tensor]:
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise ValueError(f"not an optimizer state dict: it has no {key!r}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"the state dict has {len(saved_groups)} parameter groups, "
                f"this optimizer has {len(self.param_groups)}"
            )
        for index, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(
                    f"param_groups[{index}] has {len(saved['params'])} parameters in the state "
                    f"dict, {len(group['params'])} in this optimizer"
                )
            missing = sorted(CORE_OPTIONS - set(saved))
            if missing:
                raise ValueError(
                    f"param_groups[{index}] of the state dict lacks the option(s) {missing}: it "
                    "was not saved by adafactor.Adafactor (convert a peer's state dict first)"
                )
            validate_options(
                {**self.defaults, **saved}, where=f"param_groups[{index}] of the state dict"
            )
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in self.param_groups),
            )
        )
        for g_index, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            for p_index, (pid, p) in enumerate(zip(saved["params"], group["params"])):
                if pid in state_dict["state"]:
                    what = _describe(group, g_index, p_index, p)
                    _check_state(
                        what, state_dict["state"][pid], self.layout(p, {**self.defaults, **saved})
                    )
        unknown = set(state_dict["state"]) - set(id_map)
        if unknown:
            raise ValueError(
                f"the state dict has state for unknown parameter ids {sorted(unknown)}"
            )
        return id_map


def validate_options(options: Mapping[str, Any], where: str = "Adafactor") -> None:
    """Raise a ``ValueError`` naming the first invalid option in ``options``."""

    def fail(name: str, message: str) -> None:
        raise ValueError(f"{where}: {name}={options[name]!r} is invalid: {message}")

    def is_real(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not is_real(options["lr"]) or options["lr"] < 0:
        fail("lr", "must be a finite number >= 0")
    eps = options["eps"]
    if not isinstance(eps, tuple) or len(eps) != 2:
        fail("eps", "must be a pair (eps1, eps2)")
    if not is_real(eps[0]) or eps[0] <= 0:
        fail("eps", "eps1 must be a finite number > 0 (the paper's 1e-30)")
    if not is_real(eps[1]) or eps[1] < 0:
        fail("eps", "eps2 must be a finite number >= 0 (the paper's 1e-3)")
    d = options["clip_threshold"]
    if d is not None and (not is_real(d) or d <= 0):
        fail("clip_threshold", "must be None (no clipping) or a number > 0")
    c = options["decay_rate"]
    if not is_real(c) or not 0 < c <= 1:
        hint = f"; write {-c} (torch and HF write the exponent -c)" if is_real(c) and c < 0 else ""
        fail("decay_rate", f"c in beta2_t = 1 - t^(-c) must be in (0, 1]{hint}")
    for name in ("beta1", "beta2"):
        beta = options[name]
        if beta is not None and (not is_real(beta) or not 0 <= beta < 1):
            fail(name, "must be None or a number in [0, 1)")
    if options["momentum"] not in MOMENTUM_KINDS:
        fail("momentum", f"must be one of {MOMENTUM_KINDS}")
    if not is_real(options["weight_decay"]) or options["weight_decay"] < 0:
        fail("weight_decay", "must be a finite number >= 0")
    if options["weight_decay_scale"] not in WEIGHT_DECAY_SCALES:
        fail("weight_decay_scale", f"must be one of {WEIGHT_DECAY_SCALES}")
    for name in (
        "relative_step",
        "warmup_init",
        "scale_parameter",
        "factored",
        "maximize",
        "diagnostics",
    ):
        if not isinstance(options[name], bool):
            fail(name, "must be True or False")
    if options["warmup_init"] and not options["relative_step"]:
        fail("warmup_init", "needs relative_step=True (it warms up the relative step size)")
    size = options["min_dim_size_to_factor"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        fail("min_dim_size_to_factor", "must be an integer >= 1")
    if options["factor_dims"] not in FACTOR_RULES:
        fail("factor_dims", f"must be one of {FACTOR_RULES}")
    if options["nonfinite_grad"] not in NONFINITE_POLICIES:
        fail("nonfinite_grad", f"must be one of {NONFINITE_POLICIES}")


def _dims(p: Tensor, group: Mapping[str, Any]) -> tuple[int, int] | None:
    if not group["factored"]:
        return None
    return factored_dims(p.shape, group["factor_dims"], group["min_dim_size_to_factor"])


def _check_state(what: str, state: Mapping[str, Any], layout: Mapping[str, StateSpec]) -> None:
    if set(state) != set(layout):
        raise ValueError(
            f"{what}: state has keys {sorted(state)}, but its options call for {sorted(layout)} "
            "(was it saved with other options, or by another optimizer?)"
        )
    for key, spec in layout.items():
        value = state[key]
        if not isinstance(value, Tensor) or tuple(value.shape) != spec.shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{what}: state[{key!r}] has shape {shape}, expected {spec.shape}")
        if not (value.is_floating_point() or key == "nonfinite_skips"):
            raise ValueError(f"{what}: state[{key!r}] has dtype {value.dtype}, expected floats")


def _describe(group: Mapping[str, Any], g_index: int, p_index: int, p: Tensor) -> str:
    names = group.get("param_names")
    name = f"{names[p_index]!r} " if names else ""
    return f"parameter {name}(param_groups[{g_index}]['params'][{p_index}], shape {tuple(p.shape)})"
