"""Every option of ``Adafactor``, defined once, as a field of ``Hyperparameters``: its name,
type and default, and as metadata the paper's symbol, a one-line meaning, the full description,
the check of its values, and what the tests step it with (sample values, the options they act
with, whether the float64 reference models it, or why it changes no number at all). The
optimizer's defaults and docstring, its validation, the names ``param_rules`` accepts, the docs'
options table and the tests' option sets all derive from ``OPTIONS``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Literal

import torch
from torch import Tensor

Number = float | Tensor
"""An option's value: a Python number as given, or a 0-d tensor as the step gets it
(``Hyperparameters.as_tensors``)."""

Momentum = Literal["step", "gradient"]
WeightDecayScale = Literal["rho", "alpha", "lr", "none"]
FactorRule = Literal["largest", "last"]
NonfiniteGrad = Literal["skip", "raise"]

MOMENTUM_KINDS: tuple[str, ...] = ("step", "gradient")
WEIGHT_DECAY_SCALES: tuple[str, ...] = ("rho", "alpha", "lr", "none")
FACTOR_RULES: tuple[str, ...] = ("largest", "last")
NONFINITE_POLICIES: tuple[str, ...] = ("skip", "raise")
Rounding = Literal["nearest", "stochastic", "compensated"]
ROUNDINGS: tuple[str, ...] = ("nearest", "stochastic", "compensated")

Check = Callable[[Any], str | None]
"""Returns why a value is invalid, or ``None`` when it is valid."""


@dataclass(frozen=True)
class Option:
    """One option: ``symbol`` is the paper's name for it (or the section it comes from),
    ``meaning`` one line for the docs' table, ``doc`` its description in ``Adafactor``'s."""

    name: str
    default: Any
    symbol: str
    meaning: str
    doc: str
    check: Check
    numeric: bool
    """A number the step takes as a 0-d tensor, so that changing it recompiles nothing."""
    since: str
    """The version that added it: a group saved by an earlier one takes the default."""
    samples: tuple[Any, ...]
    """Values other than the default that the tests step on every step path, each of which
    changes the numbers a few steps write (given ``context``) unless the option is host-only;
    the tests' option sets are drawn from them (``tests/helpers.py``)."""
    context: Mapping[str, Any]
    """Other options the samples act only together with (``momentum_of`` needs a ``beta1``)."""
    edge_cases: tuple[Any, ...]
    """Further values the property tests draw, edge cases that need not change a step
    (``beta1=0.0``)."""
    host_only: str
    """Why the option changes no number a step writes (it chooses how the step runs, or what
    is recorded or checked beside it); empty for the options the step's math reads."""
    in_reference: bool
    """Whether the float64 reference (``reference.py``) takes it: the tests compare the others
    with the eager step only."""
    dtypes: tuple[torch.dtype, ...]
    """The parameter dtypes its samples act on, where not every one (16-bit rounding): the
    tests step those."""


def option(
    default: Any,
    symbol: str,
    meaning: str,
    doc: str,
    check: Check,
    *,
    numeric: bool = False,
    since: str = "0.1.0",
    samples: tuple[Any, ...] = (),
    context: Mapping[str, Any] | None = None,
    edge_cases: tuple[Any, ...] = (),
    host_only: str = "",
    in_reference: bool = True,
    dtypes: tuple[torch.dtype, ...] = (),
) -> Any:
    """A field of ``Hyperparameters`` with an ``Option``'s metadata."""
    metadata = dict(
        symbol=symbol,
        meaning=meaning,
        doc=doc,
        check=check,
        numeric=numeric,
        since=since,
        samples=samples,
        context=dict(context or {}),
        edge_cases=edge_cases,
        host_only=host_only,
        in_reference=in_reference,
        dtypes=dtypes,
    )
    return dataclasses.field(default=default, metadata=metadata)


def _is_real(x: Any) -> bool:
    # Real takes what torch takes for a number: Python's and numpy's scalars.
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)


def _is_integer(x: Any) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def _plain(value: Any) -> Any:
    """A number as a Python ``int`` or ``float`` (a numpy scalar times a tensor may give a
    numpy array, or another dtype); anything else as it is."""
    if isinstance(value, bool) or type(value) in (int, float):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)
    return value


def _real(
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    none: bool = False,
    what: str = "",
) -> Check:
    """A check for a finite number in the interval given (``None`` allowed if ``none``)."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    interval = f"{left}{low:g}, {high:g}{right}" if math.isfinite(high) else f"{left}{low:g}, inf)"

    def check(value: Any) -> str | None:
        if value is None and none:
            return None
        ok = _is_real(value) and (value > low if low_open else value >= low)
        ok = ok and (value < high if high_open else value <= high)
        if ok:
            return None
        return f"must be {'None or ' if none else ''}a number in {interval}{what}"

    return check


def _one_of(choices: tuple[Any, ...]) -> Check:
    return lambda value: None if value in choices else f"must be one of {choices}"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be True or False"


def _check_lr(value: Any) -> str | None:
    if isinstance(value, Tensor):
        # A Tensor lr (a capturable schedule) is read on the device: its value is not checked
        # at every step, which would wait for the device.
        if value.numel() != 1 or not value.is_floating_point():
            return "Tensor lr must be 1-element, of a floating-point dtype"
        return None
    return None if _is_real(value) and value >= 0 else "must be a finite number >= 0"


def _check_eps(value: Any) -> str | None:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return "must be a pair (eps1, eps2)"
    if not _is_real(value[0]) or value[0] <= 0:
        return "eps1 must be a finite number > 0 (the paper's 1e-30)"
    if not _is_real(value[1]) or value[1] < 0:
        return "eps2 must be a finite number >= 0 (the paper's 1e-3)"
    return None


def _check_decay_rate(value: Any) -> str | None:
    if _is_real(value) and 0 < value <= 1:
        return None
    hint = (
        f"; write {-value} (torch and HF write the exponent -c)"
        if _is_real(value) and value < 0
        else ""
    )
    return f"c in beta2_t = 1 - t^(-c) must be in (0, 1]{hint}"


def _check_count(low: int) -> Check:
    def check(value: Any) -> str | None:
        ok = _is_integer(value) and value >= low
        return None if ok else f"must be an integer >= {low}"

    return check


def _seed(value: Any) -> str | None:
    if value is None or (_is_integer(value) and 0 <= value < 2**32):
        return None
    return "must be None or an integer in [0, 2^32)"


def _check_dtype(value: Any) -> str | None:
    if value is None or (isinstance(value, torch.dtype) and value.is_floating_point):
        return None
    return "must be None or a floating-point torch.dtype"


@dataclass(frozen=True)
class Hyperparameters:
    """One parameter group's options as the step reads them; every numeric one a Python
    number as given, or a 0-d tensor after ``as_tensors``. The fields are the options."""

    lr: Number = option(
        1e-2,
        "ρ_t's cap",
        "relative mode: ρ_t = min(`lr`, 1/√t); absolute mode: ρ_t = `lr`",
        "with ``relative_step`` (default), the cap on the relative step size, "
        "``ρ_t = min(lr, 1/√t)``: the paper's 10⁻². A learning-rate scheduler scales this cap "
        "like any ``lr``. Without ``relative_step``, ρ_t = ``lr`` (the absolute step size). "
        "A one-element Tensor works as the same number (no recompile when it changes).",
        _check_lr,
        numeric=True,
        samples=(0.3, 1e-4),
    )
    eps: tuple[Number, Number] = option(
        (1e-30, 1e-3),
        "(ε1, ε2)",
        "ε1 is added to G² (per parameter, whatever its dtype); ε2 floors RMS(X)",
        "``(ε1, ε2)``: ε1 (> 0) is added to G² before averaging, whatever the dtype; ε2 is "
        "the floor of the parameter scale ``max(ε2, RMS(X))``. Paper: ``(1e-30, 1e-3)``.",
        _check_eps,
        numeric=True,
        samples=((0.1, 1e-3), (1e-30, 3.0)),
    )
    clip_threshold: Number | None = option(
        1.0,
        "d",
        "update clipping Û = U / max(1, RMS(U)/d); `None` turns it off",
        "``d``, the update-clipping threshold; ``None`` turns clipping off.",
        _real(0, low_open=True, none=True, what=" (> 0), None for no clipping"),
        numeric=True,
        samples=(None, 0.3),
    )
    decay_rate: Number = option(
        0.8,
        "c in β̂2_t = 1 − t^(−c)",
        "`0 < c ≤ 1`; torch and HF write it as −0.8",
        "``c`` in ``β̂2_t = 1 − t^(−c)``, ``0 < c ≤ 1`` (paper: 0.8; torch and HF write it as "
        "−0.8).",
        _check_decay_rate,
        numeric=True,
        samples=(0.5, 1.0),
    )
    beta2_cap: Number | None = option(
        None,
        "β̂2_t ≤ cap",
        "β̂2_t = min(cap, 1 − t^(−c)) (big_vision, timm, pytorch_optimizer); `None`: no cap",
        "a ceiling on the decay: ``β̂2_t = min(beta2_cap, 1 − t^(−c))`` (or of the "
        "bias-corrected β2), as big_vision, timm's AdafactorBigVision and pytorch_optimizer "
        "(``betas[1]``) do; ``None`` (default, the paper) caps nothing.",
        _real(0, 1, none=True),
        numeric=True,
        since="0.2.0",
        # Below β̂2_2 = 1 − 2^(−0.8), so that it acts from the second step on.
        samples=(0.3,),
    )
    decay_offset: Number = option(
        0,
        "t₀ in β̂2 at t − t₀",
        "the decay schedule counts from step t₀ (optax `decay_offset`, T5X `step_offset`)",
        "``t₀``: β̂2 is evaluated at ``max(t − t₀, 1)`` rather than ``t`` (optax's "
        "``decay_offset``, T5X's ``step_offset``), for fine-tuning from a checkpoint whose "
        "step count is not where the new decay schedule should start. Up to step t₀ + 1 the "
        "schedule stays at its first value (β̂2 = 0: the statistics restart from the current "
        "gradient), so there is never a division by zero.",
        _check_count(0),
        numeric=True,
        since="0.2.0",
        samples=(2,),
    )
    beta1: Number | None = option(
        None,
        "β1",
        "momentum; `None` keeps no momentum buffer at all",
        "``β1``, momentum; ``None`` (default) keeps no momentum and no memory for it.",
        _real(0, 1, high_open=True, none=True),
        numeric=True,
        samples=(0.9,),
        edge_cases=(0.0,),  # momentum of the last step alone: the step of no momentum
    )
    beta2: Number | None = option(
        None,
        "β2",
        "a constant β2 with Adam's bias correction, β̂2_t = β2(1 − β2^(t−1))/(1 − β2^t), "
        "instead of 1 − t^(−c)",
        "a constant ``β2`` with Adam's bias correction, ``β̂2_t = β2(1 − β2^(t−1))/(1 − β2^t)``,"
        " in place of ``1 − t^(−c)``.",
        _real(0, 1, high_open=True, none=True),
        numeric=True,
        samples=(0.999, 0.5),
    )
    momentum_of: Momentum = option(
        "step",
        "",
        'what β1 averages: `"step"` the steps α_t·Û_t (as T5X, optax, HF); `"gradient"` '
        "Adam's bias-corrected m̂_t, divided by √V̂_t",
        'what β1 averages: ``"step"`` (default; as T5X, optax and HF) the steps ``α_t·Û_t``; '
        '``"gradient"`` Adam\'s bias-corrected ``m̂_t``, divided by ``√V̂_t``.',
        _one_of(MOMENTUM_KINDS),
        samples=("gradient",),
        context={"beta1": 0.9},
    )
    momentum_dtype: torch.dtype | None = option(
        None,
        "",
        "store momentum in e.g. `torch.bfloat16` (math stays float32)",
        "the dtype momentum is stored in, e.g. ``torch.bfloat16`` to halve its memory (its "
        "math stays float32, and the step applied is the stored momentum); ``None``: the "
        "statistics' dtype.",
        _check_dtype,
        samples=(torch.bfloat16,),
        context={"beta1": 0.9},
        in_reference=False,
    )
    weight_decay: Number = option(
        0.0,
        "λ",
        "decoupled: X ← X − λ·s·X each step",
        "``λ``, decoupled weight decay: ``X ← X − λ·s·X`` each step.",
        _real(0),
        numeric=True,
        samples=(0.1,),
    )
    weight_decay_scale: WeightDecayScale = option(
        "rho",
        "s",
        's = ρ_t (like AdamW\'s lr), `"alpha"`: α_t (HF, timm), `"lr"`: the group\'s `lr` '
        '(torch), `"none"`: 1 (optax)',
        '``s``: ``"rho"`` (default) ρ_t, like the learning rate in AdamW; ``"alpha"`` α_t '
        '(HF, timm); ``"lr"`` the group\'s ``lr`` (torch); ``"none"`` 1 (optax).',
        _one_of(WEIGHT_DECAY_SCALES),
        samples=("alpha", "lr", "none"),
        # "lr" differs from ρ_t = min(lr, 1/√t) only where lr > 1/√t.
        context={"weight_decay": 0.1, "lr": 0.9},
    )
    relative_step: bool = option(
        True,
        "Section 8",
        "ρ_t = min(`lr`, 1/√t) rather than `lr`",
        "use ρ_t = ``min(lr, 1/√t)`` rather than ρ_t = ``lr``.",
        _boolean,
        samples=(False,),
        context={"lr": 0.9},  # the same ρ_t where lr ≤ 1/√t
    )
    warmup_init: bool = option(
        False,
        "Section 8",
        "warm-up variant ρ_t = min(`lr`, 10⁻⁶·t, 1/√t)",
        "with ``relative_step``, the warm-up variant ``ρ_t = min(lr, 10⁻⁶·t, 1/√t)``.",
        _boolean,
        samples=(True,),
        context={"relative_step": True},
    )
    scale_parameter: bool = option(
        True,
        "α_t = max(ε2, RMS(X_{t−1}))·ρ_t",
        "step size relative to the parameter's RMS",
        "multiply ρ_t by ``max(ε2, RMS(X_{t−1}))``.",
        _boolean,
        samples=(False,),
    )
    factored: bool = option(
        True,
        "Section 3",
        "factored statistics for tensors of ≥ 2 dims; `False`: a full V̂",
        "keep factored (row and column) statistics for tensors of 2 or more dims.",
        _boolean,
        samples=(False,),
    )
    min_dim_size_to_factor: int = option(
        2,
        "",
        "factor only if both chosen dims have at least this size (optax uses 128)",
        "factor only when both chosen dims are at least this long; the default 2 factors "
        "every matrix as the paper does (1×m gains nothing from it).",
        _check_count(1),
        samples=(4,),
        edge_cases=(1,),  # factors 1×m, whose factored estimate is the full one
    )
    factor_dims: FactorRule = option(
        "largest",
        "",
        'which two dims of a ≥3-D tensor to factor: `"largest"` (optax, big_vision) or '
        '`"last"` (torch, HF)',
        'which two dims of a tensor to factor: ``"largest"`` (default, as optax and '
        'big_vision; a conv kernel [256, 128, 3, 3] over 256×128) or ``"last"`` (as torch '
        "and HF; the same kernel over its 3×3 window).",
        _one_of(FACTOR_RULES),
        samples=("last",),
    )
    rms_per_slice: bool = option(
        False,
        "RMS over the factored dims",
        "clipping and RMS(X) per slice of a stacked [E, n, m] tensor (T5X's batch dims)",
        "take RMS(U_t) (clipping) and RMS(X_{t−1}) (the parameter scale) over the two "
        "factored dims only, separately for every index of the other dims, as T5X does for "
        "its batch dims: a stacked ``[E, n, m]`` parameter (mixture-of-experts, scanned "
        "layers) then steps as E separate ``n×m`` parameters. Tensors that are not factored "
        "keep their whole-tensor RMS.",
        _boolean,
        since="0.2.0",
        samples=(True,),
    )
    maximize: bool = option(
        False,
        "",
        "ascend; `p.grad` is never modified",
        "ascend rather than descend (``p.grad`` is never modified).",
        _boolean,
        samples=(True,),
    )
    stochastic_rounding: bool = option(
        False,
        "",
        '`True` is `rounding="stochastic"` (its first name, kept as an alias)',
        '``True`` is ``rounding="stochastic"``, the name this option had first (kept working '
        "as an alias); ``False`` leaves the choice to ``rounding``.",
        _boolean,
        samples=(True,),
        context={"rounding": "nearest"},
        in_reference=False,
        dtypes=(torch.bfloat16,),
    )
    rounding: Rounding = option(
        "stochastic",
        "",
        'how a 16-bit parameter is written after the float32 math: `"stochastic"` (unbiased, '
        'up or down at random), `"nearest"`, or `"compensated"` (a 16-bit residual per '
        "element in the state carries what rounding dropped)",
        "how a bfloat16 or float16 parameter is written after the float32 math of its step: "
        '``"stochastic"`` (default) rounds up or down at random, unbiased, so that an update '
        'below half a step of the parameter\'s dtype moves it on average; ``"nearest"`` '
        "rounds to nearest, and such an update is lost (the peers' way: their presets keep "
        'it); ``"compensated"`` keeps a residual of the parameter\'s dtype per element in the '
        'state (``state["residual"]``, 2 bytes per element) with ``x + r`` the value the '
        "float32 step computed to about 16 significant bits (Kahan's compensated summation), "
        "which still loses updates below ~2⁻¹⁷ of a weight. The default was chosen by "
        "docs/precision.md: round-to-nearest loses measurably where updates are small "
        "relative to the weights, the other two do not, and stochastic needs no state. Other "
        "parameters are written exactly either way.",
        _one_of(ROUNDINGS),
        since="0.3.0",
        samples=("nearest", "compensated"),
        in_reference=False,
        dtypes=(torch.bfloat16, torch.float16),
    )
    rounding_seed: int | None = option(
        None,
        "",
        "the seed of stochastic rounding's random bits; `None`: torch's seed "
        "(`torch.initial_seed()`) when the optimizer is made",
        "the seed of stochastic rounding's random bits, which are a hash of the seed, the "
        "parameter, the step number and the element: the same seed gives the same run, in "
        "whatever order the parameters step (inside the backward pass too), and a resumed run "
        "goes on with the same bits (the seed is saved with the groups). ``None`` (default): "
        "torch's seed when the optimizer is made (``torch.initial_seed()``, which "
        "``torch.manual_seed`` sets), read without drawing from torch's generator, so that "
        "making the optimizer does not move the random numbers a script draws after it.",
        _seed,
        since="0.3.0",
        samples=(12345,),
        context={"rounding": "stochastic"},
        in_reference=False,
        dtypes=(torch.bfloat16,),
    )
    fused: bool | None = option(
        None,
        "",
        "the group-level kernels (Triton on CUDA, C on CPU); `None`: wherever they are at hand",
        "step each parameter group with a few kernel launches over all of its tensors "
        "(Triton on CUDA, a C kernel built on first use on CPU): the same math, each tensor "
        "read once per pass, no full-size temporaries. ``None`` (default) does so wherever "
        "those kernels can be built and falls back to the eager step if not; ``True`` "
        "raises where they cannot be; ``False`` always steps eagerly (tensor by tensor, in "
        "chunks of 2^20 elements).",
        _one_of((None, True, False)),
        samples=(False,),
        host_only="it chooses which code computes the step, and every path computes the eager "
        "step's numbers (True is None where the kernels are at hand, an error where not)",
        in_reference=False,
    )
    diagnostics: bool = option(
        False,
        "",
        "record α_t, RMS(U_t) and how often clipping fired in `optimizer.diagnostics[p]` "
        "(tensors, no host sync)",
        "record, after each step, per parameter: ``step_size`` (α_t), ``update_rms`` "
        "(RMS(U_t), before clipping), ``clipped_steps`` (steps where RMS(U_t) > d) in "
        "``optimizer.diagnostics[param]``; tensors (one value per slice with "
        "``rms_per_slice``), no host sync.",
        _boolean,
        samples=(True,),
        host_only="it records what a step applied, and the step reads nothing of the record",
        in_reference=False,
    )
    nonfinite_grad: NonfiniteGrad = option(
        "skip",
        "",
        '`"skip"`: a NaN/Inf gradient or parameter leaves that parameter and its state '
        'untouched and is counted in `state["nonfinite_skips"]` (no host sync); `"raise"`: '
        "`ValueError` naming the parameter before anything changes",
        'a NaN or Inf in a gradient or in the parameter itself either ``"skip"``s that '
        'parameter\'s step (no change to it or its state; ``state["nonfinite_skips"]`` counts '
        'it; no host sync) or ``"raise"``s a ``ValueError`` naming it before anything changes '
        "(one host sync per step).",
        _one_of(NONFINITE_POLICIES),
        samples=("raise",),
        host_only='on finite gradients and parameters "raise" only checks them (a host sync); '
        "where one is not finite it refuses the whole step, an error rather than other numbers",
        in_reference=False,
    )

    @property
    def eps1(self) -> Number:
        """ε1, added to G²."""
        return self.eps[0]

    @property
    def eps2(self) -> Number:
        """ε2, the floor of RMS(X)."""
        return self.eps[1]

    @property
    def gradient_momentum(self) -> bool:
        """Whether momentum is Adam's, on the gradient (``momentum_of="gradient"``)."""
        return self.beta1 is not None and self.momentum_of == "gradient"

    @property
    def written_as(self) -> str:
        """How a 16-bit parameter is written: ``rounding``, or ``"stochastic"`` under its
        older name ``stochastic_rounding=True``."""
        return "stochastic" if self.stochastic_rounding else self.rounding

    @property
    def step_momentum(self) -> bool:
        """Whether momentum averages the steps (``momentum_of="step"``)."""
        return self.beta1 is not None and self.momentum_of == "step"

    @classmethod
    def from_group(cls, group: Mapping[str, Any]) -> Hyperparameters:
        """Read the options of a ``torch.optim`` parameter group, numbers as Python's (a
        numpy scalar as the ``int`` or ``float`` of the same value)."""
        values = {name: _plain(group[name]) for name in DEFAULTS}
        values["eps"] = tuple(_plain(e) for e in values["eps"])
        return cls(**values)

    def as_tensors(self, device: torch.device, dtype: torch.dtype) -> Hyperparameters:
        """These options with every number a 0-d tensor of ``dtype`` on ``device``, for the
        step: a compiled step then takes them as inputs and recompiles for none of them (a
        learning-rate scheduler changes ``lr`` every step), where it would specialise on a
        Python float that meets a ``clamp`` or a ``pow``."""

        def tensor(value: Number) -> Tensor:
            if isinstance(value, Tensor):
                return value.detach().reshape(()).to(device=device, dtype=dtype)
            return torch.full((), value, dtype=dtype, device=device)

        numbers: dict[str, Any] = {
            name: tensor(getattr(self, name))
            for name in NUMERIC
            if name != "eps" and getattr(self, name) is not None
        }
        numbers["eps"] = (tensor(self.eps[0]), tensor(self.eps[1]))
        return dataclasses.replace(self, **numbers)


OPTIONS: tuple[Option, ...] = tuple(
    Option(f.name, f.default, **f.metadata) for f in dataclasses.fields(Hyperparameters)
)
"""Every option, in the order of ``Adafactor``'s signature."""
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
DEFAULTS: dict[str, Any] = {o.name: o.default for o in OPTIONS}
NUMERIC: tuple[str, ...] = tuple(o.name for o in OPTIONS if o.numeric)


def plain_numbers(group: dict[str, Any]) -> None:
    """Replace the numpy scalars among ``group``'s options by Python numbers of the same
    value, in place: a state dict holding numpy scalars does not load under
    ``torch.load(weights_only=True)``, torch's default."""
    for name in DEFAULTS:
        if name in group:
            value = group[name]
            group[name] = tuple(map(_plain, value)) if name == "eps" else _plain(value)


def validate_options(options: Mapping[str, Any], where: str = "Adafactor") -> None:
    """Raise a ``ValueError`` naming the first invalid option in ``options`` (every option
    must be present), or an option that needs another."""
    for option in OPTIONS:
        reason = option.check(options[option.name])
        if reason is not None:
            raise ValueError(
                f"{where}: {option.name}={options[option.name]!r} is invalid: {reason}"
            )
    if options["stochastic_rounding"] and options["rounding"] == "compensated":
        raise ValueError(
            f'{where}: stochastic_rounding=True is rounding="stochastic", which contradicts '
            'rounding="compensated": give one of them'
        )
    if options["warmup_init"] and not options["relative_step"]:
        raise ValueError(
            f"{where}: warmup_init=True is invalid: it needs relative_step=True (it warms up "
            "the relative step size)"
        )


def checked_lr(group: dict[str, Any], where: str) -> Any:
    """``group``'s ``lr`` as ``validate_options`` and ``plain_numbers`` leave it (a numpy
    scalar written back as a Python number), for a scheduler's new value when it is the only
    option changed.

    Raises:
        ValueError: it is invalid (naming it, as ``validate_options`` would).
    """
    lr = _plain(group["lr"])
    reason = BY_NAME["lr"].check(lr)
    if reason is not None:
        raise ValueError(f"{where}: lr={group['lr']!r} is invalid: {reason}")
    group["lr"] = lr
    return lr


def check_tensor_lr_value(lr: Any, where: str) -> None:
    """Check a Tensor ``lr``'s value once (reading it waits for its device), where it is
    given: the constructor and ``add_param_group``."""
    if isinstance(lr, Tensor) and lr.numel() == 1 and lr.is_floating_point():
        value = float(lr.detach().reshape(()))
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{where}: lr={lr!r} is invalid: must be a finite number >= 0")


def markdown_table() -> str:
    """The options as the README's and docs/options.md's table (a test checks that both carry
    exactly this)."""

    def shown(value: Any) -> str:
        if isinstance(value, str):
            return f'`"{value}"`'
        return f"`{value!r}`"

    rows = ["| option | paper | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{o.name}` | {o.symbol} | {shown(o.default)} | {o.meaning} |" for o in OPTIONS]
    return "\n".join(rows)
