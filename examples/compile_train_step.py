"""A whole train step (forward, backward and ``Adafactor.step``) under ``torch.compile``.

Every value in Adafactor's step is a tensor (β̂2_t, ρ_t, α_t), so nothing syncs with the host
and the step compiles with the model.

    python examples/compile_train_step.py
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from adafactor import Adafactor


def make(seed: int = 0) -> tuple[torch.nn.Module, Adafactor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    return model, Adafactor(model.parameters(), beta1=0.9)


def train_step_fn(
    model: torch.nn.Module, optimizer: Adafactor
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return train_step


def main(steps: int = 10, backend: str = "inductor") -> tuple[list[float], list[float]]:
    """Losses of the same run, compiled with ``backend`` and eager."""
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    y = torch.sin(x[:, :4])
    results = []
    for compiled in (True, False):
        model, optimizer = make()
        step = train_step_fn(model, optimizer)
        if compiled:
            step = torch.compile(step, backend=backend)
        results.append([step(x, y).item() for _ in range(steps)])
    return results[0], results[1]


if __name__ == "__main__":
    compiled, eager = main()
    for i, (a, b) in enumerate(zip(compiled, eager)):
        print(f"step {i}: compiled {a:.6f}  eager {b:.6f}")
