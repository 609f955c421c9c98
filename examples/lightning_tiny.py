"""Adafactor in PyTorch Lightning: ``configure_optimizers`` returns it with a
``torch.optim.lr_scheduler`` schedule (cosine over the run, stepped every batch).

    python examples/lightning_tiny.py
"""

from __future__ import annotations

import lightning
import torch

from adafactor import Adafactor


class TinyRegression(lightning.LightningModule):
    """A two-layer MLP fitting y = sin(x) on a fixed random set."""

    def __init__(self, max_steps: int) -> None:
        super().__init__()
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
        optimizer = Adafactor(self.parameters(), lr=0.05, relative_step=False)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def main(max_steps: int = 40) -> TinyRegression:
    """Train for ``max_steps`` on CPU; the module's ``losses`` hold the training losses."""
    lightning.seed_everything(0, verbose=False)
    x = torch.randn(256, 8)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.sin(x)), batch_size=32
    )
    module = TinyRegression(max_steps)
    trainer = lightning.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    return module


if __name__ == "__main__":
    losses = main().losses
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps")
