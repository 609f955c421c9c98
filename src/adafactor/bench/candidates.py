"""Who is benchmarked, on which devices, and how each optimizer is built (everyone's defaults,
momentum off)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch

from ..optimizer import Adafactor
from .peers import peer_optimizer_class

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Candidate:
    key: str
    label: str
    kind: str  # "ours", "peer" (another Adafactor) or "adamw"
    package: str | None = None  # the module that must be importable
    devices: tuple[str, ...] = DEVICES
    graphed: bool = False  # the whole step captured once in a CUDA graph, then replayed
    default: bool = True  # run when no candidates are named


CANDIDATES: dict[str, Candidate] = {
    c.key: c
    for c in (
        Candidate("ours-eager", "adafactor (eager)", "ours"),
        Candidate("ours-fused", "adafactor (fused)", "ours"),
        # 16-bit parameters written otherwise than stochastically (the default): named only
        Candidate("ours-nearest", "adafactor (fused, rounding nearest)", "ours", default=False),
        Candidate("ours-compensated", "adafactor (fused, compensated)", "ours", default=False),
        Candidate(
            "ours-graph", "adafactor (fused, CUDA graph)", "ours", devices=("cuda",), graphed=True
        ),
        Candidate("torch", "torch.optim.Adafactor", "peer"),
        Candidate("torch-foreach", "torch.optim.Adafactor (foreach)", "peer"),
        Candidate("hf", "transformers Adafactor", "peer", "transformers"),
        Candidate("timm", "timm Adafactor", "peer", "timm"),
        Candidate("pytorch_optimizer", "pytorch_optimizer AdaFactor", "peer", "pytorch_optimizer"),
        # Fused CUDA kernels and 8-bit statistics; its CPU path is a fallback, not what it is for.
        Candidate(
            "adafactor8bit", "adafactor8bit Adafactor8Bit", "peer", "adafactor8bit", ("cuda",)
        ),
        Candidate("adamw-foreach", "AdamW (foreach)", "adamw"),
        Candidate("adamw-fused", "AdamW (fused)", "adamw"),
    )
}

PEER_PACKAGES = tuple(c.package for c in CANDIDATES.values() if c.package)


def candidates_for(device: str) -> list[str]:
    """The keys of every default candidate that runs on ``device``, in table order."""
    return [key for key, c in CANDIDATES.items() if device in c.devices and c.default]


def installed(candidate: Candidate) -> bool:
    """Whether the candidate's package can be imported (found, not imported)."""
    return candidate.package is None or importlib.util.find_spec(candidate.package) is not None


def make_optimizer(key: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The candidate's optimizer over ``params``, with its defaults and momentum off."""
    if key in ("ours-eager", "ours-fused", "ours-graph"):
        return Adafactor(params, fused=key != "ours-eager")
    if key == "ours-nearest":
        return Adafactor(params, fused=True, rounding="nearest")
    if key == "ours-compensated":
        return Adafactor(params, fused=True, rounding="compensated")
    if key == "torch":
        return torch.optim.Adafactor(params)
    if key == "torch-foreach":
        return torch.optim.Adafactor(params, foreach=True)
    if key in ("hf", "timm"):
        peer: Any = peer_optimizer_class(key)
        return peer(params)  # their defaults: relative step, no momentum
    if key == "pytorch_optimizer":
        from pytorch_optimizer import AdaFactor

        return AdaFactor(params, betas=(None, 0.999))  # momentum off, like the others
    if key == "adafactor8bit":
        from adafactor8bit import Adafactor8Bit

        return Adafactor8Bit(params)  # its defaults: relative step, beta1=None, 8-bit statistics
    if key == "adamw-foreach":
        return torch.optim.AdamW(params, lr=1e-3, foreach=True)
    if key == "adamw-fused":
        return torch.optim.AdamW(params, lr=1e-3, fused=True)
    raise ValueError(f"unknown candidate {key!r}")
