"""The parameter sets a benchmark steps, and the least memory traffic a step over them needs.

A set is a list of parameter shapes, built without downloads: ``t5-small`` and ``gpt2-small``
(``adafactor.model_shapes``), ``demo-char`` (the ``adafactor demo`` character model: 30 tensors,
most of them small, where per-tensor overhead shows) or ``NxM`` (one matrix).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch

from ..model_shapes import MODELS

DTYPES = ("fp32", "bf16")
DTYPE_BYTES = {"fp32": 4, "bf16": 2}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_SETS = ("t5-small", "gpt2-small", "4096x4096", "demo-char")
QUICK_SETS = ("256x128",)

# The characters of the shipped KJV training text, plus index 0 for unknown ones, as run_demo
# counts them (a test recounts them from the corpus, which takes seconds to load).
DEMO_VOCAB = 63

Shape = tuple[int, ...]


def demo_char_shapes() -> list[Shape]:
    """The parameter shapes of ``adafactor demo``'s ``CharTransformer``, built on the meta
    device (no memory, no corpus)."""
    from ..experiments.demo import CharTransformer

    with torch.device("meta"):
        model = CharTransformer(DEMO_VOCAB)
    return [tuple(p.shape) for p in model.parameters()]


def _model_shapes(name: str) -> Callable[[], list[Shape]]:
    return lambda: [tuple(t.shape) for t in MODELS[name]().values()]


NAMED_SETS: dict[str, Callable[[], list[Shape]]] = {
    **{name: _model_shapes(name) for name in MODELS},
    "demo-char": demo_char_shapes,
}


def set_shapes(name: str) -> list[Shape]:
    """The parameter shapes of a set: one of ``NAMED_SETS`` or ``NxM`` (one matrix)."""
    if name in NAMED_SETS:
        return NAMED_SETS[name]()
    match = re.fullmatch(r"(\d+)x(\d+)", name)
    if match:
        return [(int(match[1]), int(match[2]))]
    raise ValueError(f"unknown parameter set {name!r}: use {', '.join(NAMED_SETS)} or NxM")


def set_info(name: str) -> dict[str, Any]:
    """How many tensors, parameters and matrices a set has, and its largest tensor's size."""
    shapes = set_shapes(name)
    sizes = [math.prod(s) for s in shapes]
    return {
        "tensors": len(shapes),
        "numel": sum(sizes),
        "largest_param_numel": max(sizes),
        "matrices": sum(len(s) >= 2 for s in shapes),
    }


def floors(numel: int, dtype: str, bandwidth: float) -> dict[str, float]:
    """Minimum bytes a step moves, and the time that takes at ``bandwidth`` (bytes/s).

    Adafactor (no momentum): read G and X twice (statistics, then the update), write X once:
    5·N·b. With exact update clipping the RMS of the update needs one more read of G before
    anything is written: 6·N·b (what ours does: G 3×, X 2×, X written 1×). AdamW: read X, G,
    m, v and write X, m, v: 7·N·b (torch keeps m and v in the parameter's dtype).
    """
    b = DTYPE_BYTES[dtype]
    out: dict[str, float] = {
        "adafactor_bytes": 5 * numel * b,
        "adafactor_exact_clip_bytes": 6 * numel * b,
        "adamw_bytes": 7 * numel * b,
    }
    for key in list(out):
        out[key.replace("_bytes", "_ms")] = out[key] / bandwidth * 1e3
    return out
