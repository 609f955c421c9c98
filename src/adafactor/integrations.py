"""Glue for training frameworks; each peer is imported only by the code that needs it.

* HF ``transformers.Trainer``: ``Trainer(..., optimizers=trainer_optimizers(model))``. The
  Trainer then adds its default linear schedule (with ``args.warmup_steps``), which scales our
  ``lr``, the cap on the relative step size ρ_t = min(lr, 1/√t): the paper's schedule, warmed
  up and decayed. (HF's own Adafactor with its defaults crashes there: its ``lr`` is ``None``.
  And ``TrainingArguments(optim="adafactor")`` turns relative step and parameter scaling off.)
* PyTorch Lightning: return ``Adafactor`` (and any ``torch.optim.lr_scheduler``) from
  ``configure_optimizers``; nothing else is needed (``examples/lightning_tiny.py``).
* ``torch.amp.GradScaler``: ``scaler.step(optimizer)`` unscales the gradients and skips the
  step when they hold an Inf or NaN; ``Adafactor`` needs nothing more (``examples/amp_fp16.py``).
* ``torch.compile``: a whole train step, optimizer included, compiles (every value of a step is
  a tensor, nothing syncs with the host; ``examples/compile_train_step.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from .optimizer import Adafactor
from .param_rules import weight_decay_groups


def trainer_optimizers(
    model: torch.nn.Module, *, weight_decay: float = 0.0, **adafactor_kwargs: Any
) -> tuple[Adafactor, None]:
    """``(optimizer, None)`` for ``transformers.Trainer(..., optimizers=...)``.

    Args:
        model: the model the Trainer trains (its trainable parameters are optimized).
        weight_decay: λ for tensors of ≥ 2 dims; biases and norm scales get none, as in the
            Trainer's own optimizers.
        **adafactor_kwargs: any other ``Adafactor`` option (default: the paper's, ``lr=1e-2``).

    Returns:
        ``Adafactor`` and ``None``, so that the Trainer creates its default scheduler (linear,
        with ``args.warmup_steps``/``warmup_ratio``) on top of our ``lr``.
    """
    groups = weight_decay_groups(model, weight_decay)
    return Adafactor(groups, **adafactor_kwargs), None
