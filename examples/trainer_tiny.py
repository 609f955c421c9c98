"""Adafactor in HF ``transformers.Trainer``: a tiny GPT-2 (built from its config, nothing
downloaded) trained for a few steps on random tokens, with the Trainer's default linear
learning-rate schedule scaling Adafactor's ``lr`` (the cap on its relative step size).

    python examples/trainer_tiny.py
    python examples/trainer_tiny.py --step-in-backward --accumulation 2

With ``--step-in-backward`` each parameter steps inside the backward pass and its gradient is
freed; ``accumulation_steps`` matches the Trainer's ``gradient_accumulation_steps``, and the
Trainer's global gradient clipping is off (it would see no gradients: update clipping, per
tensor, is Adafactor's own).
"""

from __future__ import annotations

import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from adafactor.integrations import trainer_optimizers


class RandomTokens(torch.utils.data.Dataset):
    """Sequences of random token ids; the model learns their unigram distribution."""

    def __init__(self, n: int = 64, length: int = 16, vocab: int = 64) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab // 4, (n, length), generator=gen)  # a skewed vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main(
    max_steps: int = 5,
    warmup_steps: int = 1,
    step_in_backward: bool = False,
    accumulation: int = 1,
    max_grad_norm: float = 1.0,
) -> Trainer:
    """Train for ``max_steps`` (of ``accumulation`` micro-batches each) and return the Trainer
    (its ``state.log_history`` has losses)."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=max_steps,
            warmup_steps=warmup_steps,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=accumulation,
            max_grad_norm=0.0 if step_in_backward else max_grad_norm,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=RandomTokens(),
            optimizers=trainer_optimizers(
                model,
                weight_decay=0.01,
                **(
                    {"step_in_backward": True, "accumulation_steps": accumulation}
                    if step_in_backward
                    else {}
                ),
            ),
        )
        trainer.train()
    return trainer


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--step-in-backward", action="store_true")
    parser.add_argument("--accumulation", type=int, default=1)
    args = parser.parse_args()
    history = main(step_in_backward=args.step_in_backward, accumulation=args.accumulation)
    history = history.state.log_history
    for entry in history:
        if "loss" in entry:
            print(
                f"step {entry['step']}: loss {entry['loss']:.3f}, lr {entry['learning_rate']:.2e}"
            )
