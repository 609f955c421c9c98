"""Adafactor with automatic mixed precision: float16 autocast and ``torch.amp.GradScaler``.

``scaler.step(optimizer)`` unscales the gradients first and skips the step when they hold an Inf
or NaN (the loss scale then halves); Adafactor's parameters and state stay as they were.

    python examples/amp_fp16.py
"""

from __future__ import annotations

import torch

from adafactor import Adafactor


def main(steps: int = 30, device: str = "cpu") -> dict[str, list[float]]:
    """Train a small MLP under fp16 autocast; return the losses and the loss scales."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16)
    ).to(device)
    optimizer = Adafactor(model.parameters())
    scaler = torch.amp.GradScaler(device, init_scale=2.0**16)
    x = torch.randn(128, 16, device=device)
    y = torch.tanh(x)
    history: dict[str, list[float]] = {"loss": [], "scale": []}
    for _ in range(steps):
        optimizer.zero_grad()
        with torch.autocast(device_type=device, dtype=torch.float16):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        scaler.update()
        history["loss"].append(loss.item())
        history["scale"].append(scaler.get_scale())
    return history


if __name__ == "__main__":
    history = main()
    print(
        f"loss {history['loss'][0]:.4f} -> {history['loss'][-1]:.4f}, "
        f"loss scale {history['scale'][0]:.0f} -> {history['scale'][-1]:.0f}"
    )
