"""The step inside the backward pass in a plain training loop: each parameter steps as soon as
its gradient is complete, and the gradient is freed, so the gradients alive at once are about
the largest tensor's, not the model's. With ``--accumulation k`` the parameters step in every
k-th backward pass, from the gradients summed over the k.

    python examples/step_in_backward.py
    python examples/step_in_backward.py --accumulation 4
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from adafactor import Adafactor


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Embedding(256, 64),
        nn.Flatten(),
        nn.Linear(16 * 64, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 256),
    )


def main(steps: int = 30, accumulation: int = 1) -> tuple[list[float], int, int]:
    """Train for ``steps`` optimizer steps; the losses, and the most gradient bytes alive at
    once against all the gradients' bytes."""
    net = model()
    params = list(net.parameters())
    alive = []  # gradient bytes alive whenever a gradient completes (before it steps)
    for p in params:  # hooks run in order: these before the optimizer's
        p.register_post_accumulate_grad_hook(
            lambda _: alive.append(sum(q.grad.nbytes for q in params if q.grad is not None))
        )
    optimizer = Adafactor(
        params,
        lr=1e-3,  # an absolute step, as fine-tuning uses: this toy learns in few steps
        relative_step=False,
        scale_parameter=False,
        step_in_backward=True,
        accumulation_steps=accumulation,
    )
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        for _ in range(accumulation):
            tokens = torch.randint(0, 256, (32, 16), generator=gen)
            logits = net(tokens)  # learns to name the sequence's first token
            loss = nn.functional.cross_entropy(logits, tokens[:, 0]) / accumulation
            loss.backward()  # the parameters step in the last of the `accumulation` passes
            losses.append(loss.item() * accumulation)
        optimizer.step()  # nothing left to step; a scheduler would be stepped here
        optimizer.zero_grad()
    return losses, max(alive), sum(p.nbytes for p in params)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--accumulation", type=int, default=1)
    args = parser.parse_args()
    losses, most, total = main(args.steps, args.accumulation)
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {args.steps} steps")
    print(f"gradients alive at once: at most {most / 2**20:.2f} MiB of {total / 2**20:.2f} MiB")
