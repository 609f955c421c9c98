"""Adafactor (Shazeer & Stern, ICML 2018) for PyTorch: faithful to the paper, lean and fast."""

from .memory import StateBytes, adam_state_bytes, optimizer_state_bytes, state_bytes
from .optimizer import Adafactor

__all__ = ["Adafactor", "StateBytes", "adam_state_bytes", "optimizer_state_bytes", "state_bytes"]
__version__ = "0.2.0"
