"""Train with FSDP2 (``fully_shard``) and Adafactor on CPU, checkpoint with DCP, and count
what the optimizer step communicates.

    torchrun --nproc-per-node 2 examples/fsdp_train.py                 # a small model
    torchrun --nproc-per-node 2 examples/fsdp_train.py --model gpt2-small --steps 1

The small model trains a character-level MLP on the shipped KJV text; ``--model gpt2-small``
builds GPT-2 small's 124M parameters as ``Shard(0)`` DTensors with random gradients (no
forward pass) to measure a step's collectives at that size, next to AdamW's.
The checkpoint is written to a temporary folder and renamed into place, so a crash mid-write
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard

from adafactor import Adafactor
from adafactor.experiments.corpus import load_pairs
from adafactor.model_shapes import MODELS


@contextlib.contextmanager
def counting_collectives() -> Iterator[dict[str, int]]:
    """Count ``all_reduce`` calls and bytes issued inside the block."""
    counts = {"calls": 0, "bytes": 0}
    original = dist.all_reduce

    def counted(tensor, *args, **kwargs):
        counts["calls"] += 1
        counts["bytes"] += tensor.numel() * tensor.element_size()
        return original(tensor, *args, **kwargs)

    dist.all_reduce = counted
    try:
        yield counts
    finally:
        dist.all_reduce = original


def measure_step(make_optimizer, params: list[nn.Parameter]) -> dict[str, float]:
    optimizer = make_optimizer(params)
    optimizer.step()  # creates the state
    dist.barrier()
    start = time.perf_counter()
    with counting_collectives() as counts:
        optimizer.step()
    return {**counts, "seconds": time.perf_counter() - start}


def sharded_model_params(name: str) -> list[nn.Parameter]:
    """``name``'s parameters as ``Shard(0)`` DTensors holding random local pieces, with grads."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    params = []
    for full in MODELS[name]().values():
        rows = full.shape[0]
        per_rank = -(-rows // dist.get_world_size())  # torch.chunk's split
        start = min(rows, dist.get_rank() * per_rank)
        local_shape = (min(rows, start + per_rank) - start, *full.shape[1:])
        p = nn.Parameter(
            DTensor.from_local(
                torch.randn(local_shape) * 0.02,
                mesh,
                [Shard(0)],
                shape=full.shape,
                stride=full.stride(),
            )
        )
        p.grad = DTensor.from_local(
            torch.randn(local_shape) * 1e-3,
            mesh,
            [Shard(0)],
            shape=full.shape,
            stride=full.stride(),
        )
        params.append(p)
    return params


def report_communication(name: str) -> None:
    params = sharded_model_params(name)
    n = sum(p.numel() for p in params)
    rows = [
        ("Adafactor (defaults)", measure_step(lambda ps: Adafactor(ps), params)),
        ("AdamW (foreach)", measure_step(lambda ps: torch.optim.AdamW(ps, foreach=True), params)),
    ]
    if dist.get_rank() == 0:
        print(
            f"{name}: {len(params)} tensors, {n:,} parameters, "
            f"Shard(0) over {dist.get_world_size()} ranks"
        )
        print("| optimizer | all-reduce calls per step | bytes per step | step time |")
        print("|---|---:|---:|---:|")
        for label, r in rows:
            print(f"| {label} | {r['calls']} | {r['bytes']:,} | {r['seconds'] * 1e3:.0f} ms |")
        gathered = 2 * 4 * n  # FSDP2's own all-gather + reduce-scatter of fp32 parameters per step
        print(
            f"FSDP2 itself moves about {gathered:,} bytes per step (all-gather + reduce-scatter)."
        )


def train_small(steps: int, checkpoint: Path) -> None:
    text = " ".join(en for en, _ in load_pairs("dev"))
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(ch) for ch in text])
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(len(vocab), 64),
        nn.Flatten(),
        nn.Linear(64 * 8, 256),
        nn.ReLU(),
        nn.Linear(256, len(vocab)),
    )
    fully_shard(model)
    optimizer = Adafactor(model.parameters())
    gen = torch.Generator().manual_seed(dist.get_rank())  # each rank its own batches
    for step in range(steps):
        starts = torch.randint(0, len(ids) - 9, (64,), generator=gen)
        window = torch.stack([ids[s : s + 9] for s in starts.tolist()])
        loss = nn.functional.cross_entropy(model(window[:, :8]), window[:, 8])
        optimizer.zero_grad()
        loss.backward()
        with counting_collectives() as counts:
            optimizer.step()
        if dist.get_rank() == 0 and step % 20 == 0:
            print(
                f"step {step:4d}  loss {loss.item():.3f}  "
                f"optimizer all-reduces {counts['calls']}, {counts['bytes']} bytes"
            )

    model_sd, optim_sd = get_state_dict(model, optimizer)
    partial = checkpoint.with_name(checkpoint.name + ".partial")
    if dist.get_rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=partial)
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(checkpoint, ignore_errors=True)
        os.replace(partial, checkpoint)  # atomic: the old checkpoint or the new, never half
        print(f"checkpoint written to {checkpoint}")
    dist.barrier()
    # Resuming is the same call in reverse (on any number of ranks, or on one without FSDP).
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=checkpoint)
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["small", *MODELS], default="small")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/fsdp_small"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        if args.model == "small":
            train_small(args.steps, args.checkpoint)
        else:
            report_communication(args.model)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
