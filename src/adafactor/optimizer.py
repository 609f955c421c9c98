"""``Adafactor``: the ``torch.optim.Optimizer`` that validates options, keeps state and steps.

The math lives in ``equations.py`` and ``phases.py``, a group's step in ``step.py``; this
module checks what users pass, lays out each parameter's state (``factoring.py``), gathers
every group's work and checks all of it before anything changes.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

from .distributed import (
    check_placements,
    complete_sums,
    is_distributed,
    local,
    shard_salt,
    zeros_like_state,
)
from .factoring import PARAM_DTYPES, StateSpec, factored_dims, state_dtype, state_layout
from .in_backward import InBackward
from .kernels import backend_for
from .kernels.group import PlanCache
from .options import (
    DEFAULTS,
    OPTIONS,
    FactorRule,
    Hyperparameters,
    Momentum,
    NonfiniteGrad,
    Rounding,
    WeightDecayScale,
    check_tensor_lr_value,
    checked_lr,
    plain_numbers,
    validate_options,
)
from .phases import Applied
from .state_dicts import (
    RESIDUAL,
    adopt_residual,
    check_loadable,
    check_state,
    describe,
    fits,
    normalized_state_dict,
)
from .steady import Steady
from .step import Entry, FastPath, group_step, group_step_again

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
    step_in_backward: step each parameter inside the backward pass, from a hook, as soon as
        its gradient is complete, and free that gradient: exactly the update ``step()`` would
        make (docs/step_in_backward.md). Settable later as an attribute.
    accumulation_steps: with ``step_in_backward``, the number of backward passes whose
        gradients add up to one step; parameters step in the last of each window.

Raises:
    ValueError: on an invalid option (naming it), a complex, float8 or integer parameter, or in
        ``step`` on a sparse gradient or one of such a dtype; in every case before anything
        changes.
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
        rounding: Rounding = "stochastic",
        rounding_seed: int | None = None,
        fused: bool | None = None,
        diagnostics: bool = False,
        nonfinite_grad: NonfiniteGrad = "skip",
        step_in_backward: bool = False,
        accumulation_steps: int = 1,
    ) -> None:
        arguments = locals()
        defaults = {name: arguments[name] for name in DEFAULTS}  # the options are OPTIONS'
        if isinstance(eps, list):
            defaults["eps"] = tuple(eps)
        validate_options(defaults)
        plain_numbers(defaults)
        if rounding_seed is None:  # then saved with the groups: a resume goes on
            # torch's seed, not a draw from its generator, which would move the user's stream.
            defaults["rounding_seed"] = torch.initial_seed() & 0xFFFFFFFF
        check_tensor_lr_value(lr, "Adafactor")
        _check_accumulation_steps(accumulation_steps)
        if not isinstance(step_in_backward, bool):
            raise ValueError(f"step_in_backward={step_in_backward!r} must be True or False")
        if accumulation_steps != 1 and not step_in_backward:
            raise ValueError(
                f"accumulation_steps={accumulation_steps} counts micro-batches for "
                "step_in_backward=True; without it, call step() once every "
                f"{accumulation_steps} backward passes"
            )
        self._in_backward: InBackward | None = None
        self._where: dict[int, tuple[int, int]] = {}  # id(p) → (group, index in group)
        super().__init__(params, defaults)
        self.diagnostics: dict[Tensor, dict[str, Tensor]] = {}
        self._plans: dict[Any, PlanCache] = {}  # the group kernels' tables, per group
        self._steady: dict[Any, Steady] = {}  # per plan, what its last step found
        self._state_dicts: list[int] = []  # the ids of optimizer.state's dicts, last whole step
        self._validated: dict[int, _Options] = {}
        self._fitted: dict[int, tuple[Tensor, tuple[Any, ...], tuple[Any, ...]]] = {}
        self._accumulation_steps = accumulation_steps
        self.step_in_backward = step_in_backward

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("diagnostics", {})
        self.__dict__.setdefault("_plans", {})
        self.__dict__.setdefault("_accumulation_steps", 1)
        self._validated = {}
        self._fitted = {}
        self._steady = {}
        self._state_dicts = []
        self._in_backward = None  # hooks are not pickled: a copy steps in step()
        self._where = {
            id(p): (g, i)
            for g, group in enumerate(self.param_groups)
            for i, p in enumerate(group["params"])
        }

    @property
    def step_in_backward(self) -> bool:
        """Whether each parameter steps inside the backward pass, as soon as its gradient is
        complete, its gradient then freed (``docs/step_in_backward.md``). Setting it to
        ``False`` removes the hooks: ``step()`` steps every parameter again."""
        return self._in_backward is not None

    @step_in_backward.setter
    def step_in_backward(self, on: bool) -> None:
        params = [p for group in self.param_groups for p in group["params"]]
        if on and self._in_backward is None:
            for p in params:
                self._refuse_in_backward(p)
            hooks = InBackward(self, self._step_and_free, self._holding, self._accumulation_steps)
            hooks.attach(params, self._describe)
            self._in_backward = hooks
        elif not on and self._in_backward is not None:
            self._in_backward.detach(params)
            self._in_backward = None

    @property
    def accumulation_steps(self) -> int:
        """With ``step_in_backward``, the number of backward passes (micro-batches) whose
        gradients add up to one step: parameters step in the last one of each window."""
        return self._accumulation_steps

    @accumulation_steps.setter
    def accumulation_steps(self, k: int) -> None:
        _check_accumulation_steps(k)
        self._accumulation_steps = k
        if self._in_backward is not None:
            self._in_backward.accumulation_steps = k
            self._in_backward.restart_window()

    def _describe(self, p: Tensor) -> str:
        g_index, p_index = self._where[id(p)]
        return describe(self.param_groups[g_index], g_index, p_index, p)

    def _refuse_in_backward(self, p: Tensor) -> None:
        """Raise for a parameter whose gradient is not complete when its hook runs: one
        replicated across processes (DDP averages gradients after the hooks)."""
        if (
            not is_distributed(p)
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            raise ValueError(
                f"{self._describe(p)} is not sharded, and step_in_backward=True steps it from "
                "its own process's gradient: DistributedDataParallel averages gradients only "
                "after the hooks run. Shard the model with FSDP2 (torch.distributed.fsdp."
                "fully_shard), whose hooks run on the reduced gradient, or use "
                "step_in_backward=False"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its options are validated, and its parameters must be real tensors."""
        if isinstance(param_group.get("eps"), list):
            param_group["eps"] = tuple(param_group["eps"])
        where = f"param_groups[{len(self.param_groups)}]"
        validate_options({**self.defaults, **param_group}, where=where)
        plain_numbers(param_group)
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
        g_index = len(self.param_groups) - 1
        if self._in_backward is not None:
            try:
                for p in group["params"]:
                    self._where[id(p)] = (g_index, 0)  # for messages while checking
                    self._refuse_in_backward(p)
                self._in_backward.attach(group["params"], self._describe)
            except ValueError:
                self.param_groups.pop()
                for p in group["params"]:
                    self._where.pop(id(p), None)
                raise
        self._where.update({id(p): (g_index, i) for i, p in enumerate(group["params"])})

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
            compensated=group["rounding"] == "compensated",
        )

    @property
    def _step_supports_amp_scaling(self) -> bool:
        # torch.amp.GradScaler then hands itself to step() rather than unscaling first: in
        # backward mode the hooks have stepped before it could, which step() refuses.
        return self._in_backward is not None

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Make one optimization step; ``closure`` (re-evaluating the loss) runs with grad on.
        With ``step_in_backward``, the hooks have stepped every parameter already: this steps
        those still holding a gradient (none after a full window) and starts a new window."""
        if getattr(self, "grad_scale", None) is not None:  # set by GradScaler.step
            raise RuntimeError(
                "torch.amp.GradScaler cannot drive step_in_backward=True: each parameter "
                "stepped inside backward() from its scaled gradient, before the scaler could "
                "unscale it or skip the step on an overflow, and the statistics now hold the "
                "scale (restore the last checkpoint). Train in bfloat16 (autocast, no scaler), "
                "or use step_in_backward=False"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._in_backward is not None:
            self._step_and_free(self._holding())
            self._in_backward.restart_window()
            return loss
        self._step_selected(None)
        return loss

    def step_parameter(
        self, p: Tensor, group: Mapping[str, Any] | None = None, i: Any = None
    ) -> None:
        """Step one parameter now, from the gradient it holds (nothing if none): exactly the
        update ``step()`` would make to it. The protocol of OneTrainer's fused back pass
        (which frees the gradient itself); ``group`` and ``i`` are accepted and checked
        against where ``p`` is."""
        where = self._where.get(id(p))
        if where is None or self.param_groups[where[0]]["params"][where[1]] is not p:
            raise ValueError("step_parameter: the tensor is not a parameter of this optimizer")
        if group is not None and group is not self.param_groups[where[0]]:
            raise ValueError(f"step_parameter: {self._describe(p)} is not in the group given")
        if p.grad is not None:
            with torch.no_grad():
                self._step_selected([p])

    def step_param(self, p: Tensor, group: Mapping[str, Any] | None = None) -> None:
        """``step_parameter`` under the name kohya's sd-scripts call (``step_param(p, group)``)."""
        self.step_parameter(p, group)

    @staticmethod
    def supports_fused_back_pass() -> bool:
        """Whether this optimizer can step one parameter at a time (``step_parameter``)."""
        return True

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As ``torch.optim.Optimizer.zero_grad``; with ``step_in_backward`` it also starts a
        new window of ``accumulation_steps`` micro-batches."""
        super().zero_grad(set_to_none)
        if self._in_backward is not None:
            self._in_backward.restart_window()

    def _holding(self) -> list[Tensor]:
        """The parameters that hold a gradient."""
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def _step_and_free(self, params: list[Tensor]) -> None:
        """Step ``params`` (each holding its gradient), then free their gradients."""
        if not params:
            return
        for p in params:
            self._refuse_in_backward(p)
        self._step_selected(params)
        for p in params:
            p.grad = None

    def _step_selected(self, only: list[Tensor] | None) -> None:
        """Step every parameter that holds a gradient, or those of ``only``."""
        if self._step_again(only):
            return
        work = self._gather(only)
        # Every group's way of stepping is settled before any group steps, so that a group
        # whose kernels cannot be had (fused=True) raises before anything changes.
        paths = [
            self._fast_path(key, group, params, options) for key, group, params, options in work
        ]
        for _, group, params, _ in work:
            for p in params:
                state = self.state[p]
                if not state:
                    state.update(
                        {k: zeros_like_state(p, s) for k, s in self.layout(p, group).items()}
                    )
        for (key, group, params, options), fast in zip(work, paths):
            distributed = any(map(is_distributed, params))
            applied = self._tensor_steps(fast, group, params, options, distributed)
            if group["diagnostics"]:
                for p, result in zip(params, applied):
                    self._record(p, result, group)
            self._remember(key, group, params, options, fast, distributed)
        if only is None and not torch.compiler.is_compiling():
            self._state_dicts = list(map(id, self.state.values()))

    def _step_again(self, only: list[Tensor] | None) -> bool:
        """Step as the last step did where every selected group's ``Steady`` record holds
        (``steady.py``): the host's work then hardly grows with the number of tensors. False,
        with nothing changed, where one does not."""
        if torch.compiler.is_compiling() or not self._steady:  # tracing: no Python to spare
            return False
        if only is None:
            keys: list[tuple[Any, int]] = [(g, g) for g in range(len(self.param_groups))]
        elif len(only) == 1:
            g_index, p_index = self._where[id(only[0])]
            keys = [((g_index, p_index), g_index)]
        else:
            return False
        held: list[Any] = []  # for a whole step, each parameter's state dict, in order
        if only is None:
            held = list(self.state.values())
            if list(map(id, held)) != self._state_dicts:
                return False
        ready = []
        for key, g_index in keys:
            steady = self._steady.get(key)
            if steady is None:
                return False
            group = self.param_groups[g_index]
            options = self._options(g_index)
            if steady.positions is None:  # a hook's record: one parameter
                dicts = [self.state.get(p) for p in steady.params]
            else:
                dicts = list(map(held.__getitem__, steady.positions))
            grads = steady.gradients(group["params"], options.fixed, dicts)
            if grads is None:
                return False
            if steady.path is None:  # nothing held a gradient
                continue
            device = steady.params[0].device
            if backend_for(group["fused"], device) is not steady.path.backend:
                return False
            ready.append((steady, grads, group, options))
        plans = [steady.plan_with(grads) for steady, grads, _, _ in ready]
        if any(plan is None for plan in plans):
            return False
        for (steady, _, group, options), plan in zip(ready, plans):
            assert steady.path is not None and plan is not None
            fast = FastPath(steady.path.backend, steady.path.cache, options.hp)
            entries = functools.partial(self._entries, group, steady.params, options, False)
            group_step_again(fast, plan, entries)
        return True

    def _remember(
        self,
        key: Any,
        group: Mapping[str, Any],
        params: list[Tensor],
        options: _Options,
        fast: FastPath | None,
        distributed: bool,
    ) -> None:
        """Keep what this step of a selection found (``steady.Steady``) where its next step
        can repeat it: every tensor held whole and taken by the kernels as it is, no
        diagnostics to record and no values to check."""
        if torch.compiler.is_compiling():  # the records are the eager steps'
            return
        self._steady.pop(key, None)
        if (
            distributed
            or group["diagnostics"]
            or group["nonfinite_grad"] == "raise"
            or (isinstance(key, tuple) and key[1] == "some")
        ):
            return
        if params:
            cache = None if fast is None else fast.cache
            if (
                cache is None
                or cache.plan is None
                or cache.admitted is None
                or not all(cache.admitted[1])
                or not all(p.grad is not None and p.grad.is_contiguous() for p in params)
            ):
                return
        dicts = [self.state[p] for p in params]
        positions = None
        idle = []
        if not isinstance(key, tuple):  # a whole group's (a tuple: one parameter's, a hook's)
            stepped = set(map(id, params))
            idle = [p for p in group["params"] if id(p) not in stepped]
            # New state is added at the end of optimizer.state: these places stay.
            where = {id(d): i for i, d in enumerate(self.state.values())}
            positions = [where[id(d)] for d in dicts]
        slot = key[1] if isinstance(key, tuple) else None
        self._steady[key] = Steady(
            group["params"],
            params,
            idle,
            fast if params else None,
            options.fixed,
            dicts,
            positions,
            slot,
        )

    def _options(self, g_index: int) -> _Options:
        """Group ``g_index``'s options, validated: checked again only when one of its values
        is another object than when last checked (a scheduler writes a new ``lr`` each step),
        which a step inside the backward pass, once per parameter, would otherwise repeat."""
        group = self.param_groups[g_index]
        if torch.compiler.is_compiling():
            # A scheduled lr is then a symbolic number that host-side checks cannot read: the
            # eager steps check it.
            return _Options(group, (), Hyperparameters.from_group(group))
        key = tuple(map(id, map(group.__getitem__, DEFAULTS)))
        cached = self._validated.get(g_index)
        if cached is not None and cached.group is group:
            if cached.key == key:
                return cached
            if cached.fixed == _without_lr(key):  # a scheduler's new lr: it alone is checked
                options = cached.with_lr(g_index)
                self._validated[g_index] = options
                return options
        validate_options(group, where=f"param_groups[{g_index}]")
        plain_numbers(group)  # a numpy scalar set since, e.g. by a sweep tool
        key = tuple(map(id, map(group.__getitem__, DEFAULTS)))
        options = _Options(group, key, Hyperparameters.from_group(group))
        self._validated[g_index] = options
        return options

    def _fast_path(
        self, key: Any, group: Mapping[str, Any], params: list[Tensor], options: _Options
    ) -> FastPath | None:
        """The group kernels a group steps with (``None``: eagerly); ``key`` names the plan
        kept for this selection of its parameters."""
        if not params:
            return None
        backend = backend_for(group["fused"], local(params[0]).device)
        if backend is None:
            return None
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = PlanCache()
        return FastPath(backend, plan, options.hp)

    def _tensor_steps(
        self,
        fast: FastPath | None,
        group: Mapping[str, Any],
        params: list[Tensor],
        options: _Options,
        distributed: bool,
    ) -> list[Applied]:
        """A group through per-tensor steps: the eager ones, the kernels for the tensors they
        take, the partial sums of distributed tensors completed between phases."""
        entries = self._entries(group, params, options, distributed)
        return group_step(
            entries, complete_sums if distributed else None, fast, report=group["diagnostics"]
        )

    def _entries(
        self, group: Mapping[str, Any], params: list[Tensor], options: _Options, distributed: bool
    ) -> list[Entry]:
        """Each parameter's part in its group's step (each holds a gradient)."""
        entries = []
        for p in params:
            dtype = state_dtype(p.dtype)
            hp = options.as_tensors(local(p).device, dtype)
            grad = p.grad
            assert grad is not None  # _gather keeps only parameters with a gradient
            state = self.state[p]
            entries.append(
                Entry(
                    local(p),
                    local(grad).contiguous(),
                    {k: local(v) for k, v in state.items()} if distributed else state,
                    hp,
                    _dims(p, group),
                    p.shape,
                    p,
                    dtype,
                    self._stream(p),
                )
            )
        return entries

    def _still_fits(self, p: Tensor, group: Mapping[str, Any], state: dict[str, Any]) -> bool:
        """Whether ``state`` fits ``p``'s layout, as ``fits`` says, checked again only when
        the state's tensors, ``p``'s shape or dtype, or an option of the layout changed since
        it last fitted (the check is a good part of a step's Python time)."""
        if torch.compiler.is_compiling():  # a compiled step re-runs no Python to spare
            return fits(state, self.layout(p, group))
        key = (
            p.shape,
            p.dtype,
            group["factored"],
            group["factor_dims"],
            group["min_dim_size_to_factor"],
            group["beta1"] is None,
            group["momentum_dtype"],
            group["rounding"],
            tuple(map(id, state.values())),
        )
        memo = self._fitted.get(id(p))
        if (
            memo is not None
            and memo[0] is p
            and memo[1] == key
            and all(ref() is not None for ref in memo[2])  # their ids are still theirs
        ):
            return True
        if not fits(state, self.layout(p, group)):
            return False
        # Watched, not held: state moved elsewhere (offloaded, say) is not kept alive here.
        watched = tuple(weakref.ref(v) for v in state.values() if isinstance(v, Tensor))
        self._fitted[id(p)] = (p, key, watched)
        return True

    def _stream(self, p: Tensor) -> int:
        """Which stream of stochastic rounding's bits is ``p``'s: its place in the groups,
        and for a shard of a distributed parameter where the shard starts (its replicas
        round alike, its other shards independently)."""
        g_index, p_index = self._where[id(p)]
        return (g_index << 24 | p_index) ^ shard_salt(p)

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

    def _gather(
        self, only: list[Tensor] | None = None
    ) -> list[tuple[Any, dict[str, Any], list[Tensor], _Options]]:
        """The parameters to update (all that hold a gradient, or those of ``only``), group by
        group with the key of their plan, after checking every one of them, so that a bad
        gradient or stale state raises before any parameter or state changes. State whose
        dtype or layout no longer fits (``model.double()``, a transposed checkpoint) is
        converted then."""
        work = []
        raising = []
        converting = []
        residuals = []
        selected: dict[int, list[int]] = {}
        for p in only or []:
            g_index, p_index = self._where[id(p)]
            selected.setdefault(g_index, []).append(p_index)
        for g_index, group in enumerate(self.param_groups):
            if only is not None and g_index not in selected:
                continue
            options = self._options(g_index)  # schedulers write into groups: checked again
            params = []
            indices = range(len(group["params"])) if only is None else selected[g_index]
            for p_index in indices:
                p = group["params"][p_index]
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
                if state and not self._still_fits(p, group, state):
                    layout = self.layout(p, group)
                    if not fits(state, layout):
                        check_state(describe(group, g_index, p_index, p), state, layout)
                        if (RESIDUAL in state) != (RESIDUAL in layout):
                            residuals.append((p, state, layout))
                        converting += [
                            (state, key, spec.dtype)
                            for key, spec in layout.items()
                            if key in state
                            and (
                                state[key].dtype != spec.dtype
                                or not local(state[key]).is_contiguous()
                            )
                        ]
                params.append(p)
                if group["nonfinite_grad"] == "raise":
                    what = describe(group, g_index, p_index, p)
                    raising += [(f"gradient in {what}", grad), (f"values in {what} itself", p)]
            if params and group["nonfinite_grad"] == "raise" and isinstance(group["lr"], Tensor):
                raising.append((f"lr of param_groups[{g_index}]", group["lr"]))
            if only is None:
                key: Any = g_index
            elif len(indices) == 1:
                key = (g_index, indices[0])  # a hook's: one plan per parameter
            else:
                key = (g_index, "some")
            work.append((key, group, params, options))
        if raising:
            # In backward, parameters whose gradients completed earlier have stepped already.
            _raise_on_nonfinite(raising, "nothing was updated" if only is None else _NOT_UPDATED)
        for state, key, dtype in converting:
            # Contiguous too: the steps view state as the parameter's canonical shape (a
            # transposed tensor from a converted checkpoint would be read in the wrong order).
            state[key] = state[key].to(dtype).contiguous()
        for p, state, layout in residuals:
            zeros = zeros_like_state(p, layout[RESIDUAL]) if RESIDUAL in layout else p
            adopt_residual(p, state, layout, zeros)
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
        self._fitted.clear()
        self._steady.clear()

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
                    dtype=layout[key].dtype if key in layout else p.dtype,
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


class _Options:
    """A group's options as validated (``key``: the identities of its values then; ``fixed``:
    those but ``lr``'s) and as the step reads them, numbers as 0-d tensors per device and
    dtype."""

    def __init__(self, group: dict[str, Any], key: tuple[int, ...], hp: Hyperparameters):
        self.group, self.key, self.hp = group, key, hp
        # Held, so that no later value can take one of their ids while this is the group's.
        self.values = tuple(map(group.__getitem__, DEFAULTS))
        self.fixed = _without_lr(key)
        self._tensors: dict[tuple[torch.device, torch.dtype], Hyperparameters] = {}

    def with_lr(self, g_index: int) -> _Options:
        """These options with the group's ``lr`` now (the only one changed), checked.

        Raises:
            ValueError: the new ``lr`` is invalid (naming it, as ``validate_options``).
        """
        group = self.group
        lr = checked_lr(group, where=f"param_groups[{g_index}]")
        key = tuple(map(id, map(group.__getitem__, DEFAULTS)))
        return _Options(group, key, dataclasses.replace(self.hp, lr=lr))

    def as_tensors(self, device: torch.device, dtype: torch.dtype) -> Hyperparameters:
        """``hp.as_tensors(device, dtype)``, made once; a Tensor ``lr`` is read anew each
        time (the scheduler may fill it in place, and a copy would not follow)."""
        if isinstance(self.hp.lr, Tensor) or torch.compiler.is_compiling():
            return self.hp.as_tensors(device, dtype)
        where = (device, dtype)
        if where not in self._tensors:
            self._tensors[where] = self.hp.as_tensors(device, dtype)
        return self._tensors[where]


_LR = list(DEFAULTS).index("lr")


def _without_lr(key: tuple[int, ...]) -> tuple[int, ...]:
    return key[:_LR] + key[_LR + 1 :]


_NOT_UPDATED = (
    "it was not updated (parameters whose gradients were complete earlier in this backward "
    "pass have stepped)"
)


def _check_accumulation_steps(k: Any) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"accumulation_steps={k!r} is invalid: must be an integer >= 1")


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


def _raise_on_nonfinite(raising: list[tuple[str, Tensor]], outcome: str) -> None:
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
        raise ValueError(f"non-finite {', non-finite '.join(bad)}; {outcome}")


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
