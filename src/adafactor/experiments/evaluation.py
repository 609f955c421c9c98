"""Held-out quality of a trained model: dev loss (nats per target token) and greedy BLEU."""

from __future__ import annotations

from pathlib import Path

import sacrebleu
import torch
import torch.nn.functional as F

from .dataset import Pair, evaluation_batches
from .model import PAD, Transformer
from .tokenizer import load_tokenizer

EVAL_BATCH = 64


@torch.no_grad()
def dev_loss(model: Transformer, pairs: list[Pair]) -> float:
    """Mean cross-entropy per target token (no label smoothing) on ``pairs``."""
    model.eval()
    total, tokens = 0.0, 0
    for _, batch in evaluation_batches(pairs, EVAL_BATCH):
        logits = model(batch.source, batch.target_in)
        total += F.cross_entropy(
            logits.flatten(0, 1), batch.target_out.flatten(), ignore_index=PAD, reduction="sum"
        ).item()
        tokens += int((batch.target_out != PAD).sum())
    return total / tokens


def greedy_bleu(
    model: Transformer, pairs: list[Pair], references: list[str], tokenizer_path: Path
) -> float:
    """Corpus BLEU (sacrebleu's defaults) of greedy translations of the sources of ``pairs``."""
    model.eval()
    sp = load_tokenizer(tokenizer_path)
    hypotheses = [""] * len(pairs)
    for indices, batch in evaluation_batches(pairs, EVAL_BATCH):
        max_len = 2 * batch.source.shape[1] + 10
        for i, tokens in zip(indices, model.greedy_decode(batch.source, max_len)):
            hypotheses[i] = sp.decode(tokens)
    return sacrebleu.corpus_bleu(hypotheses, [references]).score
