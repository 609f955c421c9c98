"""``adafactor precision``: bfloat16 parameters rounded to nearest, stochastically or
compensated, against float32 parameters, on the demo's character Transformer.

Every variant trains the same model (``demo.CharTransformer``) from the same initial weights
(rounded to bfloat16 first, so that all start identical) on the same batches under a seed:
``float32`` keeps parameters and activations in float32; the three bfloat16 variants put the
whole model in bfloat16 (``model.to(torch.bfloat16)``, the loss in float32) and write the
parameters with ``rounding="nearest"``, ``"stochastic"`` or ``"compensated"``. Each regime is
a learning-rate schedule as people use it (``REGIMES``); the dev loss is measured along the
way, and the final one decides the verdicts of ``docs/precision.md`` (``judge``,
``recommend``): a variant's mean gap to float32 against float32's seed spread.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import Adafactor, optimizer_state_bytes
from .corpus import load_pairs
from .demo import CONTEXT, CharTransformer

FLOAT32 = "float32"


@dataclass(frozen=True)
class Variant:
    """How the model's parameters are kept and written."""

    name: str
    dtype: torch.dtype
    rounding: Literal["nearest", "stochastic", "compensated"]


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(FLOAT32, torch.float32, "nearest"),
        Variant("bf16 nearest", torch.bfloat16, "nearest"),
        Variant("bf16 stochastic", torch.bfloat16, "stochastic"),
        Variant("bf16 compensated", torch.bfloat16, "compensated"),
    )
}
BF16_VARIANTS = tuple(name for name in VARIANTS if name != FLOAT32)

ABSOLUTE: dict[str, Any] = {"relative_step": False, "scale_parameter": False, "warmup_init": False}
"""The diffusion trainers' Adafactor: an absolute learning rate, not scaled by RMS(X)."""


@dataclass(frozen=True)
class Regime:
    """A learning-rate schedule as people use it, from scratch or fine-tuning."""

    name: str
    title: str
    options: Mapping[str, Any]
    """Adafactor's keyword arguments (besides ``rounding``)."""
    schedule: Literal["constant", "cosine"]
    """``cosine``: the rate decays from ``lr`` to 0 over the run (a ``LambdaLR``)."""
    finetune: bool
    """Start from a float32 model pre-trained on English (``Scale.pretrain_steps`` steps of
    Adafactor's defaults) and train and evaluate on Chichewa, a new domain; else from scratch
    on English."""
    why: str


REGIMES: dict[str, Regime] = {
    r.name: r
    for r in (
        Regime(
            "relative",
            "from scratch, relative step (Adafactor's defaults)",
            {},
            "constant",
            False,
            "the paper's step, min(1e-2, 1/√t)·RMS(X): about 1% of the weights, far above "
            "half a bfloat16 step (2⁻⁹ ≈ 0.2%); rounding should not matter",
        ),
        Regime(
            "cosine",
            "from scratch, lr 1e-3 cosine to 0",
            {"lr": 1e-3, **ABSOLUTE},
            "cosine",
            False,
            "an absolute rate of 1e-3 (the transformers docs' T5 setting) moves a linear "
            "weight of ~0.06 by ~2%, but is below half a bfloat16 step of a LayerNorm gain "
            "(2e-3 to 4e-3 at 1.0) or an embedding (N(0, 1)); as the rate decays to 0, more "
            "and more updates fall below it",
        ),
        Regime(
            "finetune",
            "fine-tune (English → Chichewa), constant lr 1e-4",
            {"lr": 1e-4, **ABSOLUTE},
            "constant",
            True,
            "the diffusion trainers' constant 1e-4 is about half a bfloat16 step of a linear "
            "weight of ~0.06 (2⁻⁹·0.06 ≈ 1.2e-4) and a twentieth of a LayerNorm gain's: much "
            "of each update is below the rounding threshold",
        ),
    )
}


@dataclass(frozen=True)
class Scale:
    """The model's shape, the batches and the number of steps."""

    d_model: int = 64
    layers: int = 2
    heads: int = 4
    batch: int = 16
    context: int = CONTEXT
    steps: int = 200
    """Steps of each from-scratch regime."""
    finetune_steps: int = 200
    pretrain_steps: int = 200
    eval_every: int = 40
    dev_sequences: int = 128
    """Dev sequences of ``context`` characters, the same for every run."""
    dev_batch: int = 64
    timing_steps: int = 30
    drift_steps: int = 2000


SCALES: dict[str, Scale] = {
    "cpu": Scale(),
    "tiny": Scale(
        d_model=16,
        layers=1,
        heads=2,
        batch=4,
        context=16,
        steps=4,
        finetune_steps=3,
        pretrain_steps=2,
        eval_every=2,
        dev_sequences=8,
        dev_batch=4,
        timing_steps=2,
        drift_steps=20,
    ),
}

PRETRAIN_SEED = 1000
"""The seed of the one pre-trained checkpoint that every fine-tuning run starts from: the
seeds of a fine-tuning regime differ in their batches, as fine-tuning one model would."""
DEV_SEED = 10_000
"""The seed that picks the dev sequences (the same for every run)."""


@dataclass
class Run:
    """One variant's training in one regime under one seed."""

    regime: str
    variant: str
    seed: int
    eval_steps: list[int]
    dev_losses: list[float]
    """The dev loss at each of ``eval_steps`` (0 is the initial weights)."""
    train_losses: list[float]
    state_bytes: int
    seconds: float

    @property
    def final(self) -> float:
        """The final dev loss (infinite if it was not finite)."""
        last = self.dev_losses[-1]
        return last if math.isfinite(last) else math.inf


# ---------------------------------------------------------------------------------------------
# Data and model


_TEXTS: dict[str, torch.Tensor] = {}
"""The encoded texts, made once per process (or handed to a worker by ``_worker_init``)."""


def _encode(text: str, vocab: Mapping[str, int]) -> torch.Tensor:
    """Character ids as uint8 (0 for a character not in ``vocab``), by ``str.translate``."""
    table = {ord(ch): vocab.get(ch, 0) for ch in set(text)}
    return torch.frombuffer(bytearray(text.translate(table).encode("latin-1")), dtype=torch.uint8)


def _texts() -> dict[str, torch.Tensor]:
    """The four encoded texts (English and Chichewa, train and dev) over the demo's vocabulary:
    the characters of the English training text, 0 for any other."""
    if not _TEXTS:
        pairs = {split: load_pairs(split) for split in ("train", "dev")}
        english = {split: " ".join(en for en, _ in p) for split, p in pairs.items()}
        chichewa = {split: " ".join(ny for _, ny in p) for split, p in pairs.items()}
        vocab = {ch: i + 1 for i, ch in enumerate(sorted(set(english["train"])))}
        _TEXTS.update(
            {
                "en train": _encode(english["train"], vocab),
                "en dev": _encode(english["dev"], vocab),
                "ny train": _encode(chichewa["train"], vocab),
                "ny dev": _encode(chichewa["dev"], vocab),
                "vocab": torch.tensor(len(vocab) + 1),
            }
        )
    return _TEXTS


def _sequences(data: torch.Tensor, count: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` random windows of ``length + 1`` characters (inputs and next characters)."""
    starts = torch.randint(0, len(data) - length - 1, (count,), generator=gen)
    return torch.stack([data[s : s + length + 1] for s in starts.tolist()]).long()


def _loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Next-character cross-entropy, computed in float32 whatever the model's dtype."""
    logits = model(batch[:, :-1]).float()
    return nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


def _dev_loss(model: nn.Module, dev: torch.Tensor, batch: int) -> float:
    with torch.no_grad():
        losses = [_loss(model, dev[i : i + batch]).item() for i in range(0, len(dev), batch)]
    return statistics.fmean(losses)


def _model(scale: Scale, vocab: int) -> CharTransformer:
    return CharTransformer(vocab, scale.d_model, scale.layers, scale.heads)


def _rounded(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights rounded to bfloat16 and back: every variant starts from exactly these."""
    return {k: v.to(torch.bfloat16).float() for k, v in state.items()}


def pretrain(scale: Scale) -> dict[str, torch.Tensor]:
    """The fine-tuning regimes' starting point: a float32 model trained on English for
    ``scale.pretrain_steps`` steps of Adafactor's defaults, its weights rounded to bfloat16."""
    torch.manual_seed(PRETRAIN_SEED)
    texts = _texts()
    model = _model(scale, int(texts["vocab"]))
    optimizer = Adafactor(model.parameters())
    gen = torch.Generator().manual_seed(PRETRAIN_SEED)
    with sdpa_kernel(SDPBackend.MATH):
        for _ in range(scale.pretrain_steps):
            loss = _loss(model, _sequences(texts["en train"], scale.batch, scale.context, gen))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return _rounded(model.state_dict())


def _lr_factor(regime: Regime, steps: int) -> Callable[[int], float]:
    if regime.schedule == "cosine":
        return lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps))
    return lambda s: 1.0


def train(
    regime: Regime,
    variant: Variant,
    seed: int,
    scale: Scale,
    initial: Mapping[str, torch.Tensor] | None = None,
) -> Run:
    """Train ``variant`` in ``regime`` under ``seed``; ``initial`` is the fine-tuning
    regimes' starting point (``pretrain``), else the seed's own initial weights are made."""
    texts = _texts()
    vocab = int(texts["vocab"])
    torch.manual_seed(seed)
    model = _model(scale, vocab)
    if initial is None:
        initial = _rounded(model.state_dict())
    model.load_state_dict(initial)
    model.to(variant.dtype)
    language = "ny" if regime.finetune else "en"
    train_data, dev_data = texts[f"{language} train"], texts[f"{language} dev"]
    dev = _sequences(
        dev_data, scale.dev_sequences, scale.context, torch.Generator().manual_seed(DEV_SEED)
    )
    steps = scale.finetune_steps if regime.finetune else scale.steps
    optimizer = Adafactor(model.parameters(), rounding=variant.rounding, **regime.options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(regime, steps))
    gen = torch.Generator().manual_seed(seed)  # the batches: the same for every variant
    torch.manual_seed(seed)  # stochastic rounding draws from the global generator
    eval_steps: list[int] = []
    dev_losses: list[float] = []
    train_losses: list[float] = []
    start = time.perf_counter()
    # The math attention: on CPU, bfloat16's flash attention backward is several times slower.
    with sdpa_kernel(SDPBackend.MATH):
        eval_steps.append(0)
        dev_losses.append(_dev_loss(model, dev, scale.dev_batch))
        for step in range(1, steps + 1):
            loss = _loss(model, _sequences(train_data, scale.batch, scale.context, gen))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            train_losses.append(loss.item())
            if step % scale.eval_every == 0 or step == steps:
                eval_steps.append(step)
                dev_losses.append(_dev_loss(model, dev, scale.dev_batch))
    return Run(
        regime.name,
        variant.name,
        seed,
        eval_steps,
        dev_losses,
        train_losses,
        optimizer_state_bytes(optimizer),
        time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------
# The decision rule (docs/precision.md)

Verdict = Literal["loses measurably", "within the seed spread", "gains measurably"]


@dataclass(frozen=True)
class Judgement:
    """A bfloat16 variant against float32 in one regime."""

    variant: str
    gaps: tuple[float, ...]
    """Per seed: the variant's final dev loss minus float32's."""
    spread: float
    """float32's seed spread: max − min of its final dev losses over the seeds."""

    @property
    def mean_gap(self) -> float:
        return statistics.fmean(self.gaps)

    @property
    def verdict(self) -> Verdict:
        """``docs/precision.md``: loses measurably if the mean gap exceeds the spread, gains
        measurably if it is below minus the spread, else within the seed spread."""
        if self.mean_gap > self.spread:
            return "loses measurably"
        if self.mean_gap < -self.spread:
            return "gains measurably"
        return "within the seed spread"

    @property
    def ratio(self) -> float:
        """The mean gap in units of the spread."""
        if self.spread > 0:
            return self.mean_gap / self.spread
        return math.copysign(math.inf, self.mean_gap) if self.mean_gap else 0.0


def judge(finals: Mapping[str, Mapping[int, float]]) -> dict[str, Judgement]:
    """The verdict of each bfloat16 variant in one regime, from the final dev losses by
    variant and seed; only the seeds that float32 and the variant both ran are compared."""
    baseline = finals[FLOAT32]
    if len(baseline) < 2:
        raise ValueError(f"a seed spread needs at least 2 seeds of {FLOAT32}, got {len(baseline)}")
    spread = max(baseline.values()) - min(baseline.values())
    judgements = {}
    for name, losses in finals.items():
        seeds = sorted(set(losses) & set(baseline))
        if name == FLOAT32 or not seeds:
            continue
        gaps = tuple(losses[s] - baseline[s] for s in seeds)
        judgements[name] = Judgement(name, gaps, spread)
    return judgements


@dataclass(frozen=True)
class Recommendation:
    """The default for 16-bit parameters that the verdicts favour, and why."""

    rounding: str
    reason: str
    targets_met: dict[str, bool] = field(default_factory=dict)


def recommend(verdicts: Mapping[str, Mapping[str, Judgement]]) -> Recommendation:
    """``docs/precision.md``'s rule, from the judgements by regime and variant: keep
    ``"nearest"`` unless it loses measurably in a regime; then ``"stochastic"`` if it loses
    measurably in none (it keeps no state), else ``"compensated"`` if it loses in none, else
    the one whose largest gap/spread is smaller, the targets missed."""

    def loses(variant: str) -> list[str]:
        return [r for r, js in verdicts.items() if js[variant].verdict == "loses measurably"]

    targets = {
        "bf16 compensated within the seed spread": not loses("bf16 compensated"),
        "bf16 stochastic within the seed spread": not loses("bf16 stochastic"),
    }
    nearest = loses("bf16 nearest")
    if not nearest:
        return Recommendation(
            "nearest", "bf16 nearest loses measurably in no regime: no change justified", targets
        )
    where = ", ".join(nearest)
    for name in ("bf16 stochastic", "bf16 compensated"):
        if not loses(name):
            return Recommendation(
                VARIANTS[name].rounding,
                f"bf16 nearest loses measurably ({where}); {name} in no regime",
                targets,
            )

    def worst(name: str) -> float:
        return max(js[name].ratio for js in verdicts.values())

    best = min(("bf16 stochastic", "bf16 compensated"), key=worst)
    return Recommendation(
        VARIANTS[best].rounding,
        f"bf16 nearest loses measurably ({where}), and so do both guards: {best} has the "
        f"smaller largest gap/spread ({worst(best):.2f})",
        targets,
    )


# ---------------------------------------------------------------------------------------------
# Cost: state bytes and step time


@dataclass(frozen=True)
class Cost:
    """A variant's optimizer state and step time on the model of a scale."""

    variant: str
    parameters: int
    state_bytes: int
    eager_ms: float
    """Median time of ``optimizer.step()`` with ``fused=False`` (the eager path)."""
    default_ms: float
    """Median time of ``optimizer.step()`` with the default ``fused=None``."""


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def measure_costs(scale: Scale) -> list[Cost]:
    """State bytes and median step time of each variant (Adafactor's defaults) on the model,
    fixed gradients; the variants take turns step by step, so that a machine busy with
    other work slows them alike."""
    with _one_thread():  # as in the runs
        return _timed(scale, int(_texts()["vocab"]))


def _timed(scale: Scale, vocab: int) -> list[Cost]:
    setups: list[tuple[str, bool | None, nn.Module, Adafactor, list[float]]] = []
    for v in VARIANTS.values():
        for fused in (False, None):
            torch.manual_seed(0)
            net = _model(scale, vocab).to(v.dtype)
            opt = Adafactor(net.parameters(), rounding=v.rounding, fused=fused)
            for p in net.parameters():
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(1)).to(
                    p.dtype
                )
            opt.step()  # the state is made
            setups.append((v.name, fused, net, opt, []))
    for _ in range(scale.timing_steps):
        for _, _, _, optimizer, times in setups:
            start = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - start)
    costs = []
    for variant in VARIANTS:
        eager, default = (s for s in setups if s[0] == variant)
        model, optimizer = eager[2], eager[3]
        costs.append(
            Cost(
                variant,
                sum(p.numel() for p in model.parameters()),
                optimizer_state_bytes(optimizer),
                1e3 * statistics.median(eager[4]),
                1e3 * statistics.median(default[4]),
            )
        )
    return costs


# ---------------------------------------------------------------------------------------------
# A single weight's drift: where each rounding stops following float32


PROBE_LRS = (1e-4, 1e-5, 3e-6, 1e-6)
"""From the diffusion trainers' 1e-4 down to the rates of full fine-tuning (1e-5 to 1e-6)."""
DRIFT_VALUES = (1.0, 0.05)
"""A LayerNorm gain as initialised, and a typical linear weight of the model."""


@dataclass(frozen=True)
class Drift:
    """How far a weight of ``value`` moved under ``steps`` equal steps of ``lr``, as a
    fraction of ``lr·steps`` (1: all of it), per variant: ``moved`` that of the weight the
    forward pass sees, ``carried`` that of weight plus residual (compensated)."""

    lr: float
    steps: int
    value: float
    moved: dict[str, float]
    carried: dict[str, float]


def drift_probe(
    lrs: Sequence[float] = PROBE_LRS, steps: int = 2000, value: float = 1.0, size: int = 256
) -> list[Drift]:
    """``size`` weights of ``value`` (a LayerNorm gain's 1.0 by default) stepped ``steps``
    times by Adafactor with a constant gradient and no clipping, so that every step is
    exactly ``lr`` in float32 arithmetic; the moves are means over the weights."""
    rows = []
    with _one_thread():
        for lr in lrs:
            rows.append(_drift(lr, steps, value, size))
    return rows


def _drift(lr: float, steps: int, value: float, size: int) -> Drift:
    moved, carried = {}, {}
    for variant in VARIANTS.values():
        torch.manual_seed(0)  # stochastic rounding's draws
        p = nn.Parameter(torch.full((size,), value, dtype=variant.dtype))
        start = p.detach().double().mean()  # value as the variant's dtype holds it
        optimizer = Adafactor(
            [p], rounding=variant.rounding, clip_threshold=None, **{**ABSOLUTE, "lr": lr}
        )
        p.grad = torch.ones_like(p)
        for _ in range(steps):
            optimizer.step()
        x = p.detach().double()
        residual = optimizer.state[p].get("residual")
        total = x + residual.double() if residual is not None else x
        moved[variant.name] = float((start - x.mean()) / (lr * steps))
        carried[variant.name] = float((start - total.mean()) / (lr * steps))
    return Drift(lr, steps, value, moved, carried)


# ---------------------------------------------------------------------------------------------
# The experiment


@dataclass
class PrecisionResults:
    """The runs by regime, variant and seed, the costs and the wall time."""

    scale: Scale
    seeds: list[int]
    runs: dict[str, dict[str, dict[int, Run]]]
    costs: list[Cost]
    seconds: float
    failures: dict[str, str] = field(default_factory=dict)
    drifts: list[Drift] = field(default_factory=list)

    def judgements(self) -> dict[str, dict[str, Judgement]]:
        """``judge`` of each regime with float32 runs under 2 seeds or more."""
        out = {}
        for regime, by_variant in self.runs.items():
            finals = {v: {s: r.final for s, r in runs.items()} for v, runs in by_variant.items()}
            if len(finals.get(FLOAT32, {})) >= 2:
                out[regime] = judge(finals)
        return out


Task = tuple[str, str, int]
"""A regime, a variant and a seed."""


def _worker_init(texts: Mapping[str, torch.Tensor]) -> None:
    torch.set_num_threads(1)
    _TEXTS.update(texts)


def _run_tasks(
    tasks: Sequence[Task],
    scale: Scale,
    jobs: int,
    finished: Callable[[Task, Run | BaseException], None],
) -> None:
    """Run the tasks, the fine-tuning ones once ``pretrain`` is done, on ``jobs`` spawned
    processes of one thread each (or in this process for ``jobs == 1``)."""
    needs_checkpoint = [t for t in tasks if REGIMES[t[0]].finetune]
    scratch = [t for t in tasks if not REGIMES[t[0]].finetune]
    if jobs == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            checkpoint = pretrain(scale) if needs_checkpoint else None
            for task in [*needs_checkpoint, *scratch]:
                regime, variant, seed = task
                initial = checkpoint if REGIMES[regime].finetune else None
                try:
                    result: Run | BaseException = train(
                        REGIMES[regime], VARIANTS[variant], seed, scale, initial
                    )
                except Exception as error:  # reported; the other runs go on
                    result = error
                finished(task, result)
        finally:
            torch.set_num_threads(threads)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_worker_init, initargs=(_texts(),)
    ) as pool:
        futures: dict[Future[Any], Task | None] = {}
        if needs_checkpoint:
            futures[pool.submit(pretrain, scale)] = None
        for task in scratch:
            futures[pool.submit(train, REGIMES[task[0]], VARIANTS[task[1]], task[2], scale)] = task
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when="FIRST_COMPLETED")
            for future in done:
                owner = futures[future]
                failure = future.exception()
                if owner is not None:
                    finished(owner, failure if failure is not None else future.result())
                    continue
                if failure is not None:  # no checkpoint: every fine-tuning run fails with it
                    for t in needs_checkpoint:
                        finished(t, failure)
                    continue
                checkpoint = future.result()
                for t in needs_checkpoint:
                    f = pool.submit(train, REGIMES[t[0]], VARIANTS[t[1]], t[2], scale, checkpoint)
                    futures[f] = t
                    pending.add(f)


def run_precision(
    regimes: Iterable[str] = tuple(REGIMES),
    seeds: Sequence[int] = (0, 1, 2),
    scale: Scale = SCALES["cpu"],
    jobs: int = 2,
    print_fn: Callable[[str], None] = print,
) -> PrecisionResults:
    """Train every variant in every regime under every seed, measure the costs, and return
    it all (``write_precision`` writes the report)."""
    regimes = list(regimes)
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown:
        raise ValueError(f"unknown regime(s) {unknown}; known: {', '.join(REGIMES)}")
    if len(seeds) < 1 or jobs < 1:
        raise ValueError("at least one seed and one job are needed")
    start = time.perf_counter()
    tasks = [(r, v, s) for r in regimes for s in seeds for v in VARIANTS]
    results = PrecisionResults(
        scale, list(seeds), {r: {v: {} for v in VARIANTS} for r in regimes}, [], 0.0
    )

    def finished(task: Task, outcome: Run | BaseException) -> None:
        regime, variant, seed = task
        label = f"{regime} / {variant} / seed {seed}"
        if isinstance(outcome, BaseException):
            results.failures[label] = f"{type(outcome).__name__}: {outcome}"
            print_fn(f"  {label}: FAILED ({results.failures[label]})")
            return
        results.runs[regime][variant][seed] = outcome
        print_fn(f"  {label}: dev loss {outcome.final:.4f} ({outcome.seconds:.0f} s)")

    print_fn(
        f"{len(tasks)} runs ({len(regimes)} regimes × {len(VARIANTS)} variants × "
        f"{len(seeds)} seeds) on {jobs} process(es)"
    )
    _run_tasks(tasks, scale, jobs, finished)
    results.costs = measure_costs(scale)
    results.drifts = [
        row for value in DRIFT_VALUES for row in drift_probe(steps=scale.drift_steps, value=value)
    ]
    results.seconds = time.perf_counter() - start
    return results


# ---------------------------------------------------------------------------------------------
# The report


def _cost_lines(costs: Sequence[Cost]) -> list[str]:
    base = next(c for c in costs if c.variant == FLOAT32)
    nearest = next(c for c in costs if c.variant == "bf16 nearest")
    lines = [
        "| variant | state bytes | vs bf16 nearest, per parameter | eager step | ratio "
        "| default step | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in costs:
        extra = (c.state_bytes - nearest.state_bytes) / c.parameters
        lines.append(
            f"| {c.variant} | {c.state_bytes:,} | {extra:+.2f} | {c.eager_ms:.2f} ms "
            f"| {c.eager_ms / base.eager_ms:.2f} | {c.default_ms:.2f} ms "
            f"| {c.default_ms / base.default_ms:.2f} |"
        )
    return lines


def _regime_lines(
    regime: str, runs: Mapping[str, Mapping[int, Run]], js: Mapping[str, Judgement]
) -> list[str]:
    seeds = sorted(runs.get(FLOAT32, {}))
    names = [v for v in VARIANTS if runs.get(v)]
    lines = [
        f"### {REGIMES[regime].title}",
        "",
        "| seed | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for s in seeds:
        cells = [f"{runs[v][s].final:.4f}" if s in runs[v] else "—" for v in names]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"float32's seed spread: **{next(iter(js.values())).spread:.4f}**" if js else "",
        "",
        "| variant | gap per seed | mean gap | mean gap / spread | verdict | gap at step 0 |",
        "|---|---|---:|---:|---|---:|",
    ]
    at_start = initial_gaps(runs)
    for j in js.values():
        per_seed = ", ".join(f"{g:+.4f}" for g in j.gaps)
        lines.append(
            f"| {j.variant} | {per_seed} | {j.mean_gap:+.4f} | {j.ratio:+.2f} | {j.verdict} "
            f"| {at_start.get(j.variant, math.nan):+.4f} |"
        )
    return lines


def _drift_lines(drifts: Sequence[Drift]) -> list[str]:
    lines = [
        f"A weight's drift under {drifts[0].steps} equal steps of lr (constant gradient, no "
        "clipping): the fraction of lr·steps it moved (compensated: weight, and weight plus "
        "residual):",
        "",
        "| weight | lr | lr / weight | " + " | ".join(VARIANTS) + " |",
        "|---:|---:|---:|" + "---:|" * len(VARIANTS),
    ]
    for d in drifts:
        cells = [f"{d.moved[v]:.3f}" for v in VARIANTS]
        cells[-1] += f" ({d.carried[BF16_VARIANTS[-1]]:.3f})"
        lines.append(
            f"| {d.value:g} | {d.lr:g} | {d.lr / d.value:.1e} | " + " | ".join(cells) + " |"
        )
    return lines


def initial_gaps(runs: Mapping[str, Mapping[int, Run]]) -> dict[str, float]:
    """Per bfloat16 variant, the mean over seeds of its dev loss minus float32's before the
    first step: the same weights, so this is bfloat16 activations' share of the gap."""
    base = runs.get(FLOAT32, {})
    gaps = {}
    for name in BF16_VARIANTS:
        pairs = [(r, base[s]) for s, r in runs.get(name, {}).items() if s in base]
        if pairs:
            gaps[name] = statistics.fmean(r.dev_losses[0] - b.dev_losses[0] for r, b in pairs)
    return gaps


def format_report(results: PrecisionResults) -> str:
    """The results as Markdown: per regime the final dev losses, gaps and verdicts; the
    recommendation; the costs; the wall time."""
    js = results.judgements()
    scale = results.scale
    lines = [
        f"Model: demo.CharTransformer, d_model {scale.d_model}, {scale.layers} layers, "
        f"{scale.heads} heads; batches of {scale.batch}×{scale.context} characters; "
        f"{scale.steps} steps from scratch, {scale.finetune_steps} steps of fine-tuning after "
        f"{scale.pretrain_steps} of pre-training; dev loss (nats/char) on {scale.dev_sequences} "
        f"fixed sequences; seeds {', '.join(map(str, results.seeds))}.",
        "",
    ]
    for regime in results.runs:
        lines += _regime_lines(regime, results.runs[regime], js.get(regime, {}))
        lines.append("")
    if js and all(set(r) == set(BF16_VARIANTS) for r in js.values()):
        rec = recommend(js)
        lines += [f"**Default for 16-bit parameters: `{rec.rounding}`** ({rec.reason}).", ""]
        for target, met in rec.targets_met.items():
            lines.append(f"* {target} in every regime: {'met' if met else 'missed'}")
        lines.append("")
    if results.costs:
        lines += ["Optimizer state and step time (Adafactor's defaults, one thread):", ""]
        lines += _cost_lines(results.costs)
        lines.append("")
    if results.drifts:
        lines += _drift_lines(results.drifts)
        lines.append("")
    if results.failures:
        lines += ["Failed runs:", ""] + [f"* {k}: {v}" for k, v in results.failures.items()]
        lines.append("")
    lines.append(f"Wall time: {results.seconds:.0f} s.")
    return "\n".join(lines) + "\n"


def _as_json(results: PrecisionResults) -> dict[str, Any]:
    js = results.judgements()
    return {
        "scale": asdict(results.scale),
        "seeds": results.seeds,
        "seconds": results.seconds,
        "runs": [
            {**asdict(run), "final": run.final}
            for by_variant in results.runs.values()
            for by_seed in by_variant.values()
            for run in by_seed.values()
        ],
        "judgements": {
            regime: {
                v: {
                    "gaps": j.gaps,
                    "mean_gap": j.mean_gap,
                    "spread": j.spread,
                    "verdict": j.verdict,
                }
                for v, j in by_variant.items()
            }
            for regime, by_variant in js.items()
        },
        "costs": [asdict(c) for c in results.costs],
        "drifts": [asdict(d) for d in results.drifts],
        "failures": results.failures,
    }


def gap_curves(
    runs: Mapping[str, Mapping[int, Run]],
) -> dict[str, list[tuple[list[int], list[float]]]]:
    """Per bfloat16 variant, per seed: (steps, dev loss minus float32's at those steps)."""
    base = runs.get(FLOAT32, {})
    curves: dict[str, list[tuple[list[int], list[float]]]] = {}
    for name in BF16_VARIANTS:
        for seed, run in sorted(runs.get(name, {}).items()):
            if seed in base:
                ref = dict(zip(base[seed].eval_steps, base[seed].dev_losses))
                steps = [s for s in run.eval_steps if s in ref]
                gaps = [d - ref[s] for s, d in zip(run.eval_steps, run.dev_losses) if s in ref]
                curves.setdefault(name, []).append((steps, gaps))
    return curves


def write_precision(results: PrecisionResults, out: Path) -> list[Path]:
    """Write ``precision.md``, ``precision.json`` and ``precision.png`` into ``out``."""
    from .plots import precision_gaps_figure

    out.mkdir(parents=True, exist_ok=True)
    report = out / "precision.md"
    report.write_text(format_report(results), encoding="utf-8")
    data = out / "precision.json"
    data.write_text(json.dumps(_as_json(results), indent=1), encoding="utf-8")
    js = results.judgements()
    panels = [
        (
            REGIMES[regime].title,
            gap_curves(runs),
            js[regime][BF16_VARIANTS[0]].spread if js.get(regime) else None,
        )
        for regime, runs in results.runs.items()
    ]
    plot = precision_gaps_figure(panels, out / "precision.png")
    return [report, data, plot]
