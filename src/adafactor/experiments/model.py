"""A miniature of the paper's Transformer (tensor2tensor ``transformer_base_v2``).

Pre-norm encoder-decoder (layer norm before each sub-layer, one after the stack), sinusoidal
positions, ReLU feed-forward, dropout on embeddings, residuals, attention weights and the
feed-forward hidden layer, no biases in attention, one matrix shared by the source embedding,
the target embedding and the softmax. Two parameterisations of that matrix (the paper's
Table 3):

* ``"scaled"``: entries from N(0, d^(−1/2)) (standard deviation d^(−1/2)), embeddings
  multiplied by √d (the baseline);
* ``"unit"``: entries from N(0, 1), no multiplier.

The softmax is ``h·Eᵀ`` in both. Greedy decoding caches the decoder's keys and values, so a
sentence of n tokens costs n one-token steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Embedding = Literal["scaled", "unit"]
EMBEDDINGS: tuple[str, ...] = ("scaled", "unit")

PAD, UNK, BOS, EOS = 0, 1, 2, 3
"""Special token ids, shared with the tokenizer."""


@dataclass(frozen=True)
class ModelSize:
    """The shape of the Transformer."""

    d_model: int = 128
    heads: int = 4
    d_ff: int = 512
    layers: int = 2
    dropout: float = 0.1
    max_len: int = 256


def sinusoids(length: int, d_model: int) -> Tensor:
    """The Transformer's timing signal: sines and cosines of geometrically spaced wavelengths."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    inverse = torch.exp(torch.arange(d_model // 2) * (-math.log(10_000.0) / (d_model // 2 - 1)))
    angles = position * inverse[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Attention(nn.Module):
    """Multi-head dot-product attention.

    In decoding, ``cache`` holds keys and values: with ``extend`` those of every position so
    far (self-attention, one new position a call), else those of a fixed memory (the source).
    """

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key_value = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
        cache: dict[str, Tensor] | None = None,
        extend: bool = False,
    ) -> Tensor:
        q = self._split(self.query(x))
        if cache is not None and "k" in cache and not extend:
            k, v = cache["k"], cache["v"]
        else:
            k, v = (self._split(t) for t in self.key_value(memory).chunk(2, dim=-1))
        if cache is not None:
            if extend and "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        h = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(h.transpose(1, 2).flatten(2))


class FeedForward(nn.Sequential):
    """``W2·dropout(ReLU(W1·x + b1)) + b2``."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )


class EncoderLayer(nn.Module):
    """Pre-norm self-attention and feed-forward sub-layers."""

    def __init__(self, size: ModelSize) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(size.d_model), nn.LayerNorm(size.d_model)
        self.attention = Attention(size.d_model, size.heads, size.dropout)
        self.ffn = FeedForward(size.d_model, size.d_ff, size.dropout)
        self.drop = nn.Dropout(size.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attention(h, h, mask))
        return x + self.drop(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, attention over the source, and feed-forward."""

    def __init__(self, size: ModelSize) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(size.d_model) for _ in range(3))
        self.self_attention = Attention(size.d_model, size.heads, size.dropout)
        self.source_attention = Attention(size.d_model, size.heads, size.dropout)
        self.ffn = FeedForward(size.d_model, size.d_ff, size.dropout)
        self.drop = nn.Dropout(size.dropout)

    def forward(
        self,
        y: Tensor,
        memory: Tensor,
        source_mask: Tensor,
        cache: dict[str, dict[str, Tensor]] | None = None,
    ) -> Tensor:
        own = source = None
        if cache is not None:
            own, source = cache.setdefault("self", {}), cache.setdefault("source", {})
        h = self.norms[0](y)
        # With a cache, y is the one newest position, which may see every cached one.
        y = y + self.drop(self.self_attention(h, h, causal=cache is None, cache=own, extend=True))
        h = self.norms[1](y)
        y = y + self.drop(self.source_attention(h, memory, source_mask, cache=source))
        return y + self.drop(self.ffn(self.norms[2](y)))


class Transformer(nn.Module):
    """Encoder-decoder Transformer with a shared embedding and softmax matrix."""

    positions: Tensor
    """The sinusoidal timing signal, a buffer of ``max_len × d_model``."""

    def __init__(self, vocab_size: int, size: ModelSize, embedding: Embedding = "scaled") -> None:
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        self.size = size
        self.embedding = nn.Parameter(torch.empty(vocab_size, size.d_model))
        self.multiplier = math.sqrt(size.d_model) if embedding == "scaled" else 1.0
        self.register_buffer("positions", sinusoids(size.max_len, size.d_model), persistent=False)
        self.drop = nn.Dropout(size.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(size) for _ in range(size.layers))
        self.decoder = nn.ModuleList(DecoderLayer(size) for _ in range(size.layers))
        self.encoder_norm = nn.LayerNorm(size.d_model)
        self.decoder_norm = nn.LayerNorm(size.d_model)
        for name, p in self.named_parameters():
            if p.dim() == 2 and name != "embedding":
                nn.init.xavier_uniform_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
        std = size.d_model**-0.5 if embedding == "scaled" else 1.0
        nn.init.normal_(self.embedding, std=std)

    def embed(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """Embedding times the multiplier, plus the timing signal from position ``offset``."""
        x = F.embedding(tokens, self.embedding) * self.multiplier
        return self.drop(x + self.positions[offset : offset + tokens.shape[1]])

    def encode(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's output and the attention mask (True: attend) of the source tokens."""
        mask = (source != PAD)[:, None, None, :]
        x = self.embed(source)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    def logits(self, y: Tensor) -> Tensor:
        """The softmax's inputs ``h·Eᵀ`` for decoder states ``y``."""
        return self.decoder_norm(y) @ self.embedding.T

    def forward(self, source: Tensor, target_in: Tensor) -> Tensor:
        """Logits for every target position, given the source and the shifted target."""
        memory, mask = self.encode(source)
        y = self.embed(target_in)
        for layer in self.decoder:
            y = layer(y, memory, mask)
        return self.logits(y)

    @torch.no_grad()
    def greedy_decode(self, source: Tensor, max_len: int) -> list[list[int]]:
        """The most likely next token, one at a time, until ``EOS`` or ``max_len`` tokens."""
        memory, mask = self.encode(source)
        batch = source.shape[0]
        caches: list[dict[str, dict[str, Tensor]]] = [{} for _ in self.decoder]
        token = torch.full((batch, 1), BOS, dtype=torch.long)
        out = torch.empty(batch, 0, dtype=torch.long)
        done = torch.zeros(batch, dtype=torch.bool)
        for position in range(min(max_len, self.size.max_len)):
            y = self.embed(token, offset=position)
            for layer, cache in zip(self.decoder, caches):
                y = layer(y, memory, mask, cache)
            token = self.logits(y).argmax(dim=-1)
            out = torch.cat([out, token], dim=1)
            done |= token[:, 0] == EOS
            if bool(done.all()):
                break
        return [_until_eos(row) for row in out.tolist()]


def _until_eos(tokens: list[int]) -> list[int]:
    return tokens[: tokens.index(EOS)] if EOS in tokens else tokens
