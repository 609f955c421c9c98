"""A one-minute look at Adafactor against Adam: a character language model on the KJV.

Both optimizers train the same small causal Transformer on the English side of the shipped
corpus, from the same initial weights and on the same batches; the table shows training and
held-out loss, optimizer-state bytes and wall time. Adam uses lr 1e-3 with a linear warm-up
over the first 10% of steps; Adafactor uses its defaults (relative step size, no warm-up).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import Adafactor, optimizer_state_bytes
from .corpus import load_pairs

CONTEXT = 64


class CharTransformer(nn.Module):
    """A small pre-norm causal Transformer over characters."""

    def __init__(self, vocab: int, d_model: int = 128, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.randn(CONTEXT, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(n)
        h = self.embed(tokens) + self.position[:n]
        return self.out(self.norm(self.blocks(h, mask=mask, is_causal=True)))


@dataclass
class DemoResult:
    name: str
    train_loss: float
    dev_loss: float
    state_bytes: int
    seconds: float


def _encode(text: str, vocab: dict[str, int]) -> torch.Tensor:
    return torch.tensor([vocab.get(ch, 0) for ch in text], dtype=torch.long)


def _batch(data: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - CONTEXT - 1, (size,), generator=gen)
    return torch.stack([data[s : s + CONTEXT + 1] for s in starts.tolist()])


def _loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


def _train(
    name: str,
    make_optimizer: Callable[[nn.Module], tuple[torch.optim.Optimizer, Callable[[int], float]]],
    model: nn.Module,
    train: torch.Tensor,
    dev: torch.Tensor,
    steps: int,
    seed: int,
) -> DemoResult:
    optimizer, lr_factor = make_optimizer(model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    recent: list[float] = []
    for _ in range(steps):
        loss = _loss(model, _batch(train, 32, gen))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        recent = [*recent, loss.item()][-20:]
    seconds = time.perf_counter() - start
    with torch.no_grad():
        model.eval()
        dev_gen = torch.Generator().manual_seed(seed + 1)
        dev_loss = sum(_loss(model, _batch(dev, 64, dev_gen)).item() for _ in range(8)) / 8
    return DemoResult(
        name, sum(recent) / len(recent), dev_loss, optimizer_state_bytes(optimizer), seconds
    )


def run_demo(
    steps: int = 300, seed: int = 0, print_fn: Callable[[str], None] = print
) -> list[DemoResult]:
    """Train with Adafactor and with Adam; print and return a comparison table."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    train_text = " ".join(en for en, _ in load_pairs("train"))
    dev_text = " ".join(en for en, _ in load_pairs("dev"))
    vocab = {ch: i + 1 for i, ch in enumerate(sorted(set(train_text)))}  # 0: unknown
    train, dev = _encode(train_text, vocab), _encode(dev_text, vocab)
    warmup = max(1, steps // 10)

    def adam(model: nn.Module) -> tuple[torch.optim.Optimizer, Callable[[int], float]]:
        return torch.optim.Adam(model.parameters(), lr=1e-3), lambda s: min(1.0, (s + 1) / warmup)

    def adafactor(model: nn.Module) -> tuple[torch.optim.Optimizer, Callable[[int], float]]:
        return Adafactor(model.parameters()), lambda s: 1.0

    torch.manual_seed(seed)
    initial = CharTransformer(len(vocab) + 1)
    n_params = sum(p.numel() for p in initial.parameters())
    print_fn(
        f"Character LM on the KJV ({len(train):,} training characters), "
        f"{n_params:,} parameters, {steps} steps of 32×{CONTEXT} characters"
    )
    results = []
    for name, make in (("Adafactor (defaults)", adafactor), ("Adam (lr 1e-3, warm-up)", adam)):
        model = CharTransformer(len(vocab) + 1)
        model.load_state_dict(initial.state_dict())
        results.append(_train(name, make, model, train, dev, steps, seed))
        print_fn(f"  {name}: done in {results[-1].seconds:.1f} s")

    print_fn("")
    print_fn("| optimizer | train loss | dev loss | dev bits/char | state bytes | time |")
    print_fn("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print_fn(
            f"| {r.name} | {r.train_loss:.3f} | {r.dev_loss:.3f} | {r.dev_loss / math.log(2):.3f} "
            f"| {r.state_bytes:,} | {r.seconds:.1f} s |"
        )
    ratio = results[0].state_bytes / results[1].state_bytes
    print_fn(f"\nAdafactor keeps {ratio:.1%} of Adam's optimizer state on this model.")
    return results
