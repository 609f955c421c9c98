"""A joint English–Chichewa subword vocabulary, trained at run time from the shipped corpus.

One SentencePiece unigram model covers both languages, so that the Transformer can share one
matrix between its two embeddings and its softmax, as the paper's model does. Training reads
only the shipped training split, on one thread, and is deterministic.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from .model import BOS, EOS, PAD, UNK


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, path: Path
) -> spm.SentencePieceProcessor:
    """Train a unigram model of ``vocab_size`` pieces on ``texts``, save it to ``path``, load it.

    Ids 0–3 are ``PAD``, ``UNK``, ``BOS`` and ``EOS``, as in ``model.py``.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=PAD,
        unk_id=UNK,
        bos_id=BOS,
        eos_id=EOS,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return load_tokenizer(path)


def load_tokenizer(path: Path) -> spm.SentencePieceProcessor:
    """A tokenizer saved by ``train_tokenizer``."""
    return spm.SentencePieceProcessor(model_file=str(path))
