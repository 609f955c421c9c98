"""Adafactor in PyTorch Lightning: ``configure_optimizers`` returns it with a
``torch.optim.lr_scheduler`` schedule (cosine over the run, stepped every batch).

    python examples/lightning_tiny.py
    python examples/lightning_tiny.py --step-in-backward --accumulation 2

With ``--step-in-backward`` each parameter steps inside the backward pass (Lightning runs it in
the closure it hands to ``optimizer.step``), ``accumulation_steps`` matching the Trainer's
``accumulate_grad_batches``.
"""

from __future__ import annotations

import lightning
import torch

from adafactor import Adafactor


class TinyRegression(lightning.LightningModule):
    """A two-layer MLP fitting y = sin(x) on a fixed random set."""

    def __init__(
        self, max_steps: int, step_in_backward: bool = False, accumulation: int = 1
    ) -> None:
        super().__init__()
        self.step_in_backward = step_in_backward
        self.accumulation = accumulation
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8)
        )
        self.max_steps = max_steps
        self.losses: list[float] = []

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> dict:
        in_backward = (
            {"step_in_backward": True, "accumulation_steps": self.accumulation}
            if self.step_in_backward
            else {}
        )
        optimizer = Adafactor(self.parameters(), lr=0.05, relative_step=False, **in_backward)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def main(
    max_steps: int = 40, step_in_backward: bool = False, accumulation: int = 1
) -> TinyRegression:
    """Train for ``max_steps`` optimizer steps (of ``accumulation`` batches each) on CPU; the
    module's ``losses`` hold the training losses."""
    lightning.seed_everything(0, verbose=False)
    x = torch.randn(256, 8)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.sin(x)), batch_size=32
    )
    module = TinyRegression(max_steps, step_in_backward, accumulation)
    trainer = lightning.Trainer(
        max_steps=max_steps,
        accumulate_grad_batches=accumulation,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    return module


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--step-in-backward", action="store_true")
    parser.add_argument("--accumulation", type=int, default=1)
    args = parser.parse_args()
    losses = main(step_in_backward=args.step_in_backward, accumulation=args.accumulation).losses
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps")
