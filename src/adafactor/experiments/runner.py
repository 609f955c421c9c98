"""One run: train the Transformer with one configuration, watch it, evaluate it, save it.

A run trains for ``scale.steps`` steps on label-smoothed cross-entropy (0.1), records the
training loss, the learning rate and the Figure 1 diagnostic RMS(U_t) of a few watched tensors
at every step, and stops as soon as it diverges (``diagnostics.DivergenceMonitor``): a diverged
run is a result, never an error. A run that did not diverge is evaluated on the dev set.

Each finished run is saved as ``seed<N>/<name>.json`` (summary, curves, and the key that says
what produced it: configuration, scale, seed and code) and ``seed<N>/<name>.csv`` (the
curves); ``load_result`` returns it only if its key still matches, which makes the
reproduction resumable.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import Adafactor, optimizer_state_bytes
from .configs import RunConfig, Scale, lr_factor, run_key
from .dataset import TranslationData, load_data, training_batches
from .diagnostics import SMOOTHING, DivergenceMonitor, peak_update_rms, unscaled_update_rms
from .evaluation import dev_loss, greedy_bleu
from .model import PAD, Transformer

LABEL_SMOOTHING = 0.1
PROGRESS_EVERY = 10
"""Steps between two progress reports."""


def watched_parameters(model: Transformer) -> dict[str, torch.nn.Parameter]:
    """The tensors whose RMS(U_t) is recorded: the shared embedding, an attention matrix of
    the first encoder layer and the output matrix of the last decoder feed-forward layer."""
    last = len(model.decoder) - 1
    named = dict(model.named_parameters())
    return {
        "embedding": named["embedding"],
        "encoder attention": named["encoder.0.attention.key_value.weight"],
        "decoder feed-forward": named[f"decoder.{last}.ffn.3.weight"],
    }


@dataclass
class RunResult:
    """What a run produced (``None`` where a diverged run was not evaluated)."""

    name: str
    key: dict[str, Any]
    steps: int
    diverged: bool
    diverged_at: int | None
    final_train_loss: float | None
    largest_loss_rise: float
    peak_update_rms: float | None
    """``diagnostics.peak_update_rms``: the highest smoothed RMS(U_t) of the watched tensors."""
    dev_loss: float | None
    bleu: float | None
    state_bytes: int
    parameters: int
    seconds: float
    target_tokens: float
    """Mean number of target tokens per training step."""
    curves: dict[str, list[float | None]] = field(repr=False)
    """Per step: ``step``, ``loss``, ``lr`` and ``rms <tensor>`` for each watched tensor."""

    @property
    def seed(self) -> int:
        """The seed of the weights, batches and dropout masks."""
        return self.key["seed"]

    def summary(self) -> dict[str, Any]:
        """Everything but the curves, with the seed."""
        return {"seed": self.seed, **{k: v for k, v in asdict(self).items() if k != "curves"}}


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def train_run(
    config: RunConfig,
    scale: Scale,
    data: TranslationData,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> RunResult:
    """Train and evaluate one configuration; ``progress(n)`` is told of every ``n`` steps."""
    torch.manual_seed(seed)
    model = Transformer(data.vocab_size, scale.model, config.embedding)
    optimizer = Adafactor(model.parameters(), lr=config.lr, **config.options)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: lr_factor(config.schedule, done + 1, scale.warmup_steps)
    )
    watched = watched_parameters(model)
    curves: dict[str, list[float | None]] = {
        "step": [],
        "loss": [],
        "lr": [],
        **{f"rms {name}": [] for name in watched},
    }
    monitor = DivergenceMonitor()
    diverged_at = None
    target_tokens = 0
    batches = training_batches(data.train, scale.batch_size, seed)
    start = time.perf_counter()
    model.train()
    for t in range(1, scale.steps + 1):
        batch = next(batches)
        target_tokens += int((batch.target_out != PAD).sum())
        logits = model(batch.source, batch.target_in)
        loss = F.cross_entropy(
            logits.flatten(0, 1),
            batch.target_out.flatten(),
            ignore_index=PAD,
            label_smoothing=LABEL_SMOOTHING,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        curves["lr"].append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
        curves["step"].append(t)
        curves["loss"].append(_finite_or_none(loss.item()))
        for name, param in watched.items():
            curves[f"rms {name}"].append(_finite_or_none(unscaled_update_rms(optimizer, param)))
        if progress is not None and t % PROGRESS_EVERY == 0:
            progress(PROGRESS_EVERY)
        if monitor.diverged(loss.item()):
            diverged_at = t
            break
    seconds = time.perf_counter() - start
    if progress is not None:
        progress(scale.steps - PROGRESS_EVERY * (len(curves["step"]) // PROGRESS_EVERY))

    recent = [x for x in curves["loss"][-SMOOTHING:] if x is not None]
    diverged = diverged_at is not None
    return RunResult(
        name=config.name,
        key=run_key(config, scale, seed),
        steps=len(curves["step"]),
        diverged=diverged,
        diverged_at=diverged_at,
        final_train_loss=None if diverged else sum(recent) / len(recent),
        largest_loss_rise=monitor.largest_rise,
        peak_update_rms=peak_update_rms({n: curves[f"rms {n}"] for n in watched}),
        dev_loss=None if diverged else dev_loss(model, data.dev),
        bleu=None
        if diverged
        else greedy_bleu(model, data.dev, data.dev_references, data.tokenizer_path),
        state_bytes=optimizer_state_bytes(optimizer),
        parameters=sum(p.numel() for p in model.parameters()),
        seconds=seconds,
        target_tokens=target_tokens / len(curves["step"]),
        curves=curves,
    )


def seed_directory(runs_dir: Path, seed: int) -> Path:
    """Where the runs of ``seed`` are saved."""
    return runs_dir / f"seed{seed}"


def save_result(result: RunResult, directory: Path) -> None:
    """Write ``<name>.json`` (everything) and ``<name>.csv`` (the curves) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{result.name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(result.curves)
        writer.writerows(zip(*result.curves.values()))
    # The JSON is written last: its presence marks the run finished.
    temporary = directory / f"{result.name}.json.partial"
    temporary.write_text(json.dumps(asdict(result)))
    temporary.replace(directory / f"{result.name}.json")


def load_result(name: str, key: dict[str, Any], directory: Path) -> RunResult | None:
    """The saved result of run ``name`` if it exists and was made with ``key``, else ``None``."""
    path = directory / f"{name}.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("key") != json.loads(json.dumps(key)):
        return None
    return RunResult(**saved)


def run_and_save(
    config: RunConfig,
    scale: Scale,
    seed: int,
    data_path: Path,
    runs_dir: Path,
    progress: Callable[[int], None] | None = None,
) -> RunResult:
    """Load the data, train on one thread at ``scale`` (the run's), save the result under
    ``runs_dir`` and return it."""
    torch.set_num_threads(1)
    result = train_run(config, scale, load_data(data_path), seed, progress)
    save_result(result, seed_directory(runs_dir, seed))
    return result
