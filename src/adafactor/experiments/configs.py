"""The runs of the reproduction, as data: the paper's configurations, rates and schedules.

Every run trains the same miniature Transformer (``model.py``) from the same initial weights,
on the same batches, with one ``Adafactor`` configuration. The configurations are the rows of
the paper's Table 2 (Sections 4–8) and Table 3, named after them:

* Adam is ``Adafactor(beta1=0.9, beta2=0.999, momentum_of="gradient", clip_threshold=None,
  relative_step=False, scale_parameter=False, factored=False)``, exactly Algorithm 1;
  ``factored=True`` makes it "Adam with factored second moments".
* β1 = 0 drops the momentum (``beta1=None``); each variant then changes one thing: update
  clipping d = 1 (Section 6), the decay β̂2_t = 1 − t^(−c) (Section 7.2) or a fast β2 = 0.9.
* Adafactor is the optimizer's defaults: relative step ρ_t = min(10⁻², 1/√t) scaled by
  RMS(X), d = 1, β̂2_t = 1 − t^(−0.8), factored (Section 8).

Learning-rate schedules are the paper's shapes compressed into the run: the paper's
``0.1·min(10⁻⁶·t, 1/√t)`` warms up for 10⁴ of 10⁵ steps; here the warm-up takes the first
10% of the steps, W, and then the rate decays as √(W/t). "No warm-up" is flat until W, then
the same decay. For the relative step size the scheduler scales the cap 10⁻², so
ρ_t = 10⁻²·min(1, √(W/t)), the compressed shape of min(10⁻², 1/√t). Decay schedules for β̂2
stay in absolute steps, as in the paper.

Absolute-step configurations run at the paper's rate (peak 10⁻³) and at a higher "stress"
rate, because at this scale some effects only show at higher rates. The stress rate was fixed
before the full run, not tuned to make a claim come out. Each such rate, with the scale it runs
at, is a ``Regime``; the regimes of the search for the instability of Sections 5–7 (other
rates, longer runs, a larger vocabulary) hold the runs of claims C3–C6 and their controls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..presets import ADAM
from .model import Embedding, ModelSize
from .provenance import code_fingerprint

Schedule = Literal["warmup", "flat"]

PAPER_LR = 1e-3
"""Peak absolute learning rate of the paper's Adam runs, 0.1·min(10⁻⁶·t, 1/√t) at t = 10⁴."""
STRESS_LR = 1e-2
"""Peak absolute learning rate of the stress runs (the cap of the relative step size)."""
RELATIVE_CAP = 1e-2
"""The paper's cap of the relative step size, ρ_t = min(10⁻², 1/√t)."""
WARMUP_FRACTION = 0.1
"""Fraction of a run that the compressed schedules warm up (or stay flat) for."""


def lr_factor(schedule: Schedule, t: int, warmup_steps: int) -> float:
    """Multiplier of the peak rate at step ``t`` (1-based): the paper's shapes with W steps.

    ``"warmup"``: ``min(t/W, √(W/t))``; ``"flat"`` (no warm-up): ``min(1, √(W/t))``.
    """
    decay = math.sqrt(warmup_steps / t)
    if schedule == "warmup":
        return min(t / warmup_steps, decay)
    if schedule == "flat":
        return min(1.0, decay)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; use 'warmup' or 'flat'")


@dataclass(frozen=True)
class Scale:
    """How big the experiment is: data, model, steps and evaluation."""

    name: str
    steps: int
    batch_size: int
    vocab_size: int
    model: ModelSize
    max_tokens: int = 64
    """Training pairs with more subword tokens than this on either side are left out."""
    train_pairs: int | None = None
    """Use only the first this many training pairs (``None``: all)."""
    dev_pairs: int = 300
    """Dev loss and BLEU are measured on the first this many dev pairs."""

    @property
    def warmup_steps(self) -> int:
        """W: the steps of warm-up (or of the flat start)."""
        return max(1, round(WARMUP_FRACTION * self.steps))


SCALES: dict[str, Scale] = {
    "laptop": Scale("laptop", steps=640, batch_size=24, vocab_size=2000, model=ModelSize()),
    "tiny": Scale(
        "tiny",
        steps=40,
        batch_size=8,
        vocab_size=300,
        model=ModelSize(d_model=32, heads=2, d_ff=64, layers=1, max_len=128),
        max_tokens=40,
        train_pairs=2000,
        dev_pairs=16,
    ),
}
"""``laptop``: the reproduction (one run is about two minutes on a core); ``tiny``: the tests."""


@dataclass(frozen=True)
class Regime:
    """Where absolute-step runs are judged: a peak rate, and how the base scale is changed."""

    name: str
    lr: float
    """The peak ``lr`` handed to the optimizer (and scaled by the schedule)."""
    title: str
    steps_factor: int = 1
    vocab_factor: int = 1

    @property
    def suffix(self) -> str:
        """What the names of this regime's runs end in: nothing at the paper's rate."""
        return "" if self.name == PAPER.name else f"-{self.name}"

    def at_scale(self, base: Scale) -> Scale:
        """``base`` with this regime's steps and vocabulary."""
        if self.steps_factor == self.vocab_factor == 1:
            return base
        return replace(
            base,
            name=f"{base.name}-{self.name}",
            steps=base.steps * self.steps_factor,
            vocab_size=base.vocab_size * self.vocab_factor,
        )


PAPER = Regime("paper", PAPER_LR, "paper's rate")
STRESS = Regime("stress", STRESS_LR, "stress rate")
RELATIVE = Regime("relative", RELATIVE_CAP, "relative step")
"""Relative-step runs: one rate (the cap of ρ_t), at the base scale."""
SEARCH_REGIMES: tuple[Regime, ...] = (
    Regime("lr3e-3", 3e-3, "rate 3·10⁻³"),
    STRESS,
    Regime("lr3e-2", 3e-2, "rate 3·10⁻²"),
    Regime("long", STRESS_LR, "stress rate, 2× steps", steps_factor=2),
    Regime("vocab8k", STRESS_LR, "stress rate, 4× vocabulary", vocab_factor=4),
)
"""The regimes searched for the instability of β1 = 0, β2 = 0.999 without warm-up, in the
order of the written plan (docs/reproduction.md)."""
REGIMES: dict[str, Regime] = {r.name: r for r in (PAPER, *SEARCH_REGIMES)}
"""Every absolute-step regime, the paper's rate first."""


@dataclass(frozen=True)
class RunConfig:
    """One row of the results: an optimizer configuration, its regime, schedule and embedding."""

    name: str
    section: str
    label: str
    """The row as the paper describes it."""
    options: dict[str, Any] = field(hash=False)
    """Keyword arguments of ``Adafactor`` besides ``lr``."""
    schedule: Schedule
    regime: Regime
    embedding: Embedding = "scaled"
    lr: float = None  # type: ignore[assignment]
    """The peak ``lr`` handed to the optimizer; by default (``None``) the regime's."""

    def __post_init__(self) -> None:
        if self.lr is None:
            object.__setattr__(self, "lr", self.regime.lr)

    @property
    def relative(self) -> bool:
        """Whether the step size is relative (``relative_step``, the optimizer's default)."""
        return self.options.get("relative_step", True)

    def at_scale(self, base: Scale) -> Scale:
        """The scale this run trains at: ``base`` changed by its regime."""
        return self.regime.at_scale(base)


NO_MOMENTUM = {**ADAM, "beta1": None}
ABSOLUTE_ADAFACTOR = {"relative_step": False, "scale_parameter": False}

SECTION_ADAM = "Adam (§4, Table 2)"
SECTION_NO_MOMENTUM = "β1 = 0 (§5–7, Table 2)"
SECTION_ADAFACTOR = "Adafactor (§8, Table 2)"
SECTION_STEP_SIZE = "Step size × embedding scale (Table 3)"
SECTIONS = (SECTION_ADAM, SECTION_NO_MOMENTUM, SECTION_ADAFACTOR, SECTION_STEP_SIZE)


def _row(
    name: str,
    section: str,
    label: str,
    options: dict[str, Any],
    schedule: Schedule,
    embedding: Embedding = "scaled",
) -> RunConfig:
    """An absolute-step row at the paper's rate."""
    return RunConfig(name, section, label, options, schedule, PAPER, embedding)


_ABSOLUTE_ROWS: tuple[RunConfig, ...] = (
    _row("adam-warmup", SECTION_ADAM, "Adam, β1 0.9, β2 0.999, warm-up", ADAM, "warmup"),
    _row(
        "adam-factored-warmup",
        SECTION_ADAM,
        "same, factored V̂, warm-up",
        {**ADAM, "factored": True},
        "warmup",
    ),
    _row("adam-nowarmup", SECTION_ADAM, "Adam, no warm-up", ADAM, "flat"),
    _row(
        "adam-factored-nowarmup",
        SECTION_ADAM,
        "same, factored V̂, no warm-up",
        {**ADAM, "factored": True},
        "flat",
    ),
    _row("b0-warmup", SECTION_NO_MOMENTUM, "β1 0, β2 0.999, warm-up", NO_MOMENTUM, "warmup"),
    _row("b0-nowarmup", SECTION_NO_MOMENTUM, "β1 0, β2 0.999, no warm-up", NO_MOMENTUM, "flat"),
    _row(
        "b0-nowarmup-clip",
        SECTION_NO_MOMENTUM,
        "β1 0, β2 0.999, no warm-up, clipping d 1",
        {**NO_MOMENTUM, "clip_threshold": 1.0},
        "flat",
    ),
    *(
        _row(
            f"b0-nowarmup-decay{c}",
            SECTION_NO_MOMENTUM,
            f"β1 0, β̂2 1 − t^−{c}, no warm-up",
            {**NO_MOMENTUM, "beta2": None, "decay_rate": c},
            "flat",
        )
        for c in (0.8, 0.5, 1.0)
    ),
    _row(
        "b0-nowarmup-fast",
        SECTION_NO_MOMENTUM,
        "β1 0, β2 0.9 (fast decay), no warm-up",
        {**NO_MOMENTUM, "beta2": 0.9},
        "flat",
    ),
    _row(
        "adafactor-absolute",
        SECTION_STEP_SIZE,
        "Adafactor, absolute step, N(0, d^−½)·√d",
        ABSOLUTE_ADAFACTOR,
        "flat",
    ),
    _row(
        "adafactor-absolute-unit",
        SECTION_STEP_SIZE,
        "Adafactor, absolute step, N(0, 1)",
        ABSOLUTE_ADAFACTOR,
        "flat",
        "unit",
    ),
)

_RELATIVE_ROWS: tuple[RunConfig, ...] = (
    RunConfig(
        "adafactor-unfactored",
        SECTION_ADAFACTOR,
        "Adafactor, unfactored",
        {"factored": False},
        "flat",
        RELATIVE,
    ),
    RunConfig("adafactor", SECTION_ADAFACTOR, "Adafactor (defaults)", {}, "flat", RELATIVE),
    RunConfig(
        "adafactor-unit",
        SECTION_STEP_SIZE,
        "Adafactor, relative step, N(0, 1)",
        {},
        "flat",
        RELATIVE,
        "unit",
    ),
)

INSTABILITY_ROWS: tuple[str, ...] = (
    "adam-warmup",
    "b0-warmup",
    "b0-nowarmup",
    "b0-nowarmup-clip",
    "b0-nowarmup-decay0.8",
    "b0-nowarmup-decay0.5",
    "b0-nowarmup-decay1.0",
    "b0-nowarmup-fast",
)
"""The rows of claims C3–C6 and their warm-up controls, run in a regime of the search."""
SCREEN_ROWS: tuple[str, ...] = ("b0-warmup", "b0-nowarmup")
"""The rows that the search screens each regime with."""


def _in_regime(config: RunConfig, regime: Regime) -> RunConfig:
    return replace(config, name=config.name + regime.suffix, regime=regime, lr=regime.lr)


_BY_NAME = {c.name: c for c in _ABSOLUTE_ROWS}
_OTHER_REGIMES = [r for r in SEARCH_REGIMES if r not in (PAPER, STRESS)]
RUNS: dict[str, RunConfig] = {
    c.name: c
    for c in (
        *_ABSOLUTE_ROWS,
        *(_in_regime(c, STRESS) for c in _ABSOLUTE_ROWS),
        *_RELATIVE_ROWS,
        *(_in_regime(_BY_NAME[n], r) for r in _OTHER_REGIMES for n in INSTABILITY_ROWS),
    )
}
"""Every run there is, by name: the paper's rows at both rates, the relative-step rows, and
the rows of claims C3–C6 in the other regimes of the search."""

FULL: tuple[str, ...] = tuple(
    name for name, c in RUNS.items() if c.regime in (PAPER, STRESS, RELATIVE)
)
"""The runs of ``adafactor reproduce --full``: Tables 2 and 3 at the paper's and the stress
rate."""

QUICK: tuple[str, ...] = (
    "adam-warmup",
    "adafactor",
    "b0-nowarmup-stress",
    "b0-nowarmup-clip-stress",
)
"""The runs of the default quick mode: Adafactor against Adam, and the instability of
β1 = 0 without warm-up (at the stress rate) with its fix by update clipping."""

SEARCH: tuple[str, ...] = tuple(name + r.suffix for r in SEARCH_REGIMES for name in SCREEN_ROWS)
"""The runs of ``adafactor reproduce --search``: the screen of every regime of the search."""


def regime_runs(name: str) -> tuple[str, ...]:
    """The runs of claims C3–C6 and their controls in regime ``name`` (``--regime``)."""
    if name not in REGIMES or name == PAPER.name:
        searched = ", ".join(r.name for r in SEARCH_REGIMES)
        raise ValueError(f"unknown regime {name!r}; regimes of the search: {searched}")
    return tuple(n + REGIMES[name].suffix for n in INSTABILITY_ROWS)


def run_key(config: RunConfig, scale: Scale, seed: int) -> dict[str, Any]:
    """Everything that determines a run's result, ``scale`` being the one it trains at (its
    regime's): a finished run is reused only if its key matches."""
    return {
        "config": {
            "options": config.options,
            "lr": config.lr,
            "schedule": config.schedule,
            "embedding": config.embedding,
        },
        "scale": repr(scale),
        "seed": seed,
        "code": code_fingerprint(lr_factor),
    }
