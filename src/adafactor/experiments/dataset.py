"""The translation task: English → Chichewa verse pairs as subword ids, and their batches.

``prepare_data`` trains the tokenizer and encodes the shipped corpus once per output
directory; every run then loads the same ``data.pt``. Batches group pairs of similar length
(less padding) and come in a fixed order for a given seed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .configs import Scale
from .corpus import load_pairs
from .model import BOS, EOS, PAD
from .tokenizer import train_tokenizer

Pair = tuple[list[int], list[int]]


@dataclass
class TranslationData:
    """Encoded training pairs, encoded dev pairs, and the dev references as text."""

    train: list[Pair]
    dev: list[Pair]
    dev_references: list[str]
    vocab_size: int
    tokenizer_path: Path


def _data_key(scale: Scale) -> dict[str, object]:
    return {
        "vocab_size": scale.vocab_size,
        "max_tokens": scale.max_tokens,
        "train_pairs": scale.train_pairs,
        "dev_pairs": scale.dev_pairs,
    }


def prepare_data(scale: Scale, directory: Path) -> Path:
    """Train the tokenizer and encode the corpus into ``directory`` (reused if already there
    for the same ``scale``); returns the path of ``data.pt``."""
    path = directory / "data.pt"
    key_path = directory / "data.json"
    key = _data_key(scale)
    if path.exists() and key_path.exists() and json.loads(key_path.read_text()) == key:
        return path
    train_text = load_pairs("train")[: scale.train_pairs]
    tokenizer_path = directory / "tokenizer.model"
    sides = (side for pair in train_text for side in pair)
    sp = train_tokenizer(sides, scale.vocab_size, tokenizer_path)

    def encode(pairs: list[tuple[str, str]]) -> list[tuple[Pair, str]]:
        ids = zip(sp.encode([en for en, _ in pairs]), sp.encode([ny for _, ny in pairs]))
        return [
            ((en, ny), text)
            for (en, ny), (_, text) in zip(ids, pairs)
            if max(len(en), len(ny)) <= scale.max_tokens
        ]

    dev = encode(load_pairs("dev"))[: scale.dev_pairs]
    torch.save(
        {
            "train": [pair for pair, _ in encode(train_text)],
            "dev": [pair for pair, _ in dev],
            "dev_references": [text for _, text in dev],
            "vocab_size": sp.get_piece_size(),
        },
        path,
    )
    key_path.write_text(json.dumps(key))
    return path


def load_data(path: Path) -> TranslationData:
    """The data saved by ``prepare_data``."""
    saved = torch.load(path)
    return TranslationData(
        saved["train"],
        saved["dev"],
        saved["dev_references"],
        saved["vocab_size"],
        path.parent / "tokenizer.model",
    )


@dataclass
class Batch:
    """Padded source ``x + [EOS]``, decoder input ``[BOS] + y`` and output ``y + [EOS]``."""

    source: Tensor
    target_in: Tensor
    target_out: Tensor


def make_batch(pairs: list[Pair]) -> Batch:
    """Pad a list of pairs into one batch."""

    def pad(rows: list[list[int]]) -> Tensor:
        out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    return Batch(
        pad([[*x, EOS] for x, _ in pairs]),
        pad([[BOS, *y] for _, y in pairs]),
        pad([[*y, EOS] for _, y in pairs]),
    )


def training_batches(pairs: list[Pair], batch_size: int, seed: int) -> Iterator[Batch]:
    """Endless batches: each epoch shuffles the pairs, sorts runs of 50 batches by length,
    cuts them into batches and shuffles the batches."""
    generator = torch.Generator().manual_seed(seed)
    chunk = 50 * batch_size
    while True:
        order = torch.randperm(len(pairs), generator=generator).tolist()
        batches = []
        for start in range(0, len(order), chunk):
            block = sorted(order[start : start + chunk], key=lambda i: len(pairs[i][1]))
            batches += [block[i : i + batch_size] for i in range(0, len(block), batch_size)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            yield make_batch([pairs[i] for i in batches[b]])


def evaluation_batches(pairs: list[Pair], batch_size: int) -> Iterator[tuple[list[int], Batch]]:
    """The pairs in batches of similar length, with the index of each pair."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        yield indices, make_batch([pairs[i] for i in indices])
