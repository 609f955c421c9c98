"""A training script that survives being killed: atomic checkpoints and exact resume.

Every ``--every`` steps the model, the optimizer state, the RNG state and the step number are
written to ``<out>/checkpoint.pt`` *atomically*: ``torch.save`` into a temporary file in the
same folder, ``fsync``, then ``os.replace`` over the old checkpoint (and an ``fsync`` of the
folder). A crash before the rename leaves the previous checkpoint whole; a crash after it
leaves the new one. On start the script resumes from the checkpoint if there is one, so a run
killed at any moment (even ``SIGKILL`` in the middle of a write) and restarted reaches
bit-identical parameters and optimizer state to a run never interrupted. At the end it writes
``<out>/final.pt`` (parameters and optimizer state), atomically too.

The data are synthetic but deterministic, indexed by the step, and the model uses dropout, so
resuming exactly needs the RNG state in the checkpoint as well.

    python examples/resumable_train.py --out runs/resumable --steps 200 --every 20
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from adafactor import Adafactor

CHECKPOINT = "checkpoint.pt"
FINAL = "final.pt"
TEMP_SUFFIX = ".tmp"


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32),
        torch.nn.GELU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(32, 32),
        torch.nn.GELU(),
        torch.nn.Linear(32, 4),
    )


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``step``: a function of the step alone, so a resumed run sees the same data."""
    gen = torch.Generator().manual_seed(10_000 + step)
    x = torch.randn(32, 16, generator=gen)
    return x, torch.sin(x[:, :4] * 2.0) + 0.1 * torch.randn(32, 4, generator=gen)


def atomic_save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` so that ``path`` is always either the old or the new file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows within one file system
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temporaries(out: Path) -> None:
    """Temporary files of a writer that was killed mid-write; never read, safe to delete."""
    for tmp in out.glob(f"*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def train(out: Path, steps: int, every: int, **options: Any) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # one thread: the same summation order in every run
    model = make_model()
    optimizer = Adafactor(model.parameters(), **options)
    start = 0
    checkpoint = out / CHECKPOINT
    remove_stale_temporaries(out)
    if checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        start = saved["step"]
        print(f"resumed at step {start}", flush=True)
    for step in range(start, steps):
        x, y = batch(step)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        done = step + 1
        if done % every == 0 or done == steps:
            atomic_save(
                {
                    "step": done,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state(),
                },
                checkpoint,
            )
        print(f"step {done} loss {loss.item():.6f}", flush=True)
    final = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    atomic_save(final, out / FINAL)
    return final


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the checkpoints")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=20, help="checkpoint every K steps")
    parser.add_argument("--beta1", type=float, default=0.9, help="momentum (so state is big)")
    args = parser.parse_args(argv)
    return train(args.out, args.steps, args.every, beta1=args.beta1, weight_decay=1e-3)


if __name__ == "__main__":
    main(sys.argv[1:])
