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
before the full run, not tuned to make a claim come out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..presets import ADAM
from .model import Embedding, ModelSize

Schedule = Literal["warmup", "flat"]
Rate = Literal["paper", "stress", "relative"]

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
class RunConfig:
    """One row of the results: an optimizer configuration, its rate, schedule and embedding."""

    name: str
    section: str
    label: str
    """The row as the paper describes it."""
    options: dict[str, Any] = field(hash=False)
    """Keyword arguments of ``Adafactor`` besides ``lr``."""
    schedule: Schedule
    rate: Rate
    embedding: Embedding = "scaled"
    lr: float = None  # type: ignore[assignment]  (set from the rate)
    """The peak ``lr`` handed to the optimizer (and scaled by the schedule); by default the
    rate's: ``PAPER_LR``, ``STRESS_LR`` or ``RELATIVE_CAP``."""

    def __post_init__(self) -> None:
        if self.lr is None:
            rates = {"paper": PAPER_LR, "stress": STRESS_LR, "relative": RELATIVE_CAP}
            object.__setattr__(self, "lr", rates[self.rate])

    @property
    def relative(self) -> bool:
        """Whether the step size is relative (``relative_step``, the optimizer's default)."""
        return self.options.get("relative_step", True)


NO_MOMENTUM = {**ADAM, "beta1": None}
ABSOLUTE_ADAFACTOR = dict(relative_step=False, scale_parameter=False)

SECTION_ADAM = "Adam (§4, Table 2)"
SECTION_NO_MOMENTUM = "β1 = 0 (§5–7, Table 2)"
SECTION_ADAFACTOR = "Adafactor (§8, Table 2)"
SECTION_STEP_SIZE = "Step size × embedding scale (Table 3)"
SECTIONS = (SECTION_ADAM, SECTION_NO_MOMENTUM, SECTION_ADAFACTOR, SECTION_STEP_SIZE)

_ABSOLUTE_ROWS: tuple[RunConfig, ...] = (
    RunConfig(
        "adam-warmup", SECTION_ADAM, "Adam, β1 0.9, β2 0.999, warm-up", ADAM, "warmup", "paper"
    ),
    RunConfig(
        "adam-factored-warmup",
        SECTION_ADAM,
        "same, factored V̂, warm-up",
        {**ADAM, "factored": True},
        "warmup",
        "paper",
    ),
    RunConfig("adam-nowarmup", SECTION_ADAM, "Adam, no warm-up", ADAM, "flat", "paper"),
    RunConfig(
        "adam-factored-nowarmup",
        SECTION_ADAM,
        "same, factored V̂, no warm-up",
        {**ADAM, "factored": True},
        "flat",
        "paper",
    ),
    RunConfig(
        "b0-warmup", SECTION_NO_MOMENTUM, "β1 0, β2 0.999, warm-up", NO_MOMENTUM, "warmup", "paper"
    ),
    RunConfig(
        "b0-nowarmup",
        SECTION_NO_MOMENTUM,
        "β1 0, β2 0.999, no warm-up",
        NO_MOMENTUM,
        "flat",
        "paper",
    ),
    RunConfig(
        "b0-nowarmup-clip",
        SECTION_NO_MOMENTUM,
        "β1 0, β2 0.999, no warm-up, clipping d 1",
        {**NO_MOMENTUM, "clip_threshold": 1.0},
        "flat",
        "paper",
    ),
    *(
        RunConfig(
            f"b0-nowarmup-decay{c}",
            SECTION_NO_MOMENTUM,
            f"β1 0, β̂2 1 − t^−{c}, no warm-up",
            {**NO_MOMENTUM, "beta2": None, "decay_rate": c},
            "flat",
            "paper",
        )
        for c in (0.8, 0.5, 1.0)
    ),
    RunConfig(
        "b0-nowarmup-fast",
        SECTION_NO_MOMENTUM,
        "β1 0, β2 0.9 (fast decay), no warm-up",
        {**NO_MOMENTUM, "beta2": 0.9},
        "flat",
        "paper",
    ),
    RunConfig(
        "adafactor-absolute",
        SECTION_STEP_SIZE,
        "Adafactor, absolute step, N(0, d^−½)·√d",
        ABSOLUTE_ADAFACTOR,
        "flat",
        "paper",
    ),
    RunConfig(
        "adafactor-absolute-unit",
        SECTION_STEP_SIZE,
        "Adafactor, absolute step, N(0, 1)",
        ABSOLUTE_ADAFACTOR,
        "flat",
        "paper",
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
        "relative",
    ),
    RunConfig("adafactor", SECTION_ADAFACTOR, "Adafactor (defaults)", {}, "flat", "relative"),
    RunConfig(
        "adafactor-unit",
        SECTION_STEP_SIZE,
        "Adafactor, relative step, N(0, 1)",
        {},
        "flat",
        "relative",
        "unit",
    ),
)


def _stress(config: RunConfig) -> RunConfig:
    return replace(config, name=f"{config.name}-stress", rate="stress", lr=STRESS_LR)


RUNS: dict[str, RunConfig] = {
    c.name: c for c in (*_ABSOLUTE_ROWS, *map(_stress, _ABSOLUTE_ROWS), *_RELATIVE_ROWS)
}
"""Every run of ``adafactor reproduce --full``, by name."""

QUICK: tuple[str, ...] = (
    "adam-warmup",
    "adafactor",
    "b0-nowarmup-stress",
    "b0-nowarmup-clip-stress",
)
"""The runs of the default quick mode: Adafactor against Adam, and the instability of
β1 = 0 without warm-up (at the stress rate) with its fix by update clipping."""


def run_key(config: RunConfig, scale: Scale, seed: int) -> dict[str, Any]:
    """Everything that determines a run's result; a finished run is reused only if it matches."""
    return {
        "config": {
            "options": config.options,
            "lr": config.lr,
            "schedule": config.schedule,
            "embedding": config.embedding,
        },
        "scale": repr(scale),
        "seed": seed,
    }
