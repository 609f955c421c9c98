"""The peers' own optimizer classes, imported for side-by-side checks and for the benchmark.

timm's package imports torchvision, which a CPU-only torch often cannot load (missing, or built
against CUDA torch: a ``RuntimeError``); its optimizer modules need only torch, so when
``import timm`` fails they are loaded from timm's files under a package name of our own.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch

_PEER_CLASSES: dict[str, tuple[str, str]] = {
    "hf": ("transformers.optimization", "Adafactor"),
    "torch": ("torch.optim", "Adafactor"),
    "timm": ("timm.optim.adafactor", "Adafactor"),
    "big_vision": ("timm.optim.adafactor_bv", "AdafactorBigVision"),
    "pytorch_optimizer": ("pytorch_optimizer", "AdaFactor"),
}


def peer_optimizer_class(peer: str) -> type[torch.optim.Optimizer]:
    """The peer's own optimizer class, imported now (``"optax"`` has no PyTorch class).

    Raises:
        ValueError: an unknown peer, or ``"optax"``.
        ImportError: the peer's package is not installed.
    """
    if peer not in _PEER_CLASSES:
        raise ValueError(
            f"no PyTorch optimizer class for peer {peer!r}; known: {', '.join(_PEER_CLASSES)}"
        )
    module_name, class_name = _PEER_CLASSES[peer]
    try:
        module = importlib.import_module(module_name)
    except (ImportError, RuntimeError):
        if not module_name.startswith("timm."):
            raise
        module = _timm_optim_module(module_name.rsplit(".", 1)[1])
    return getattr(module, class_name)


def _timm_optim_module(name: str) -> types.ModuleType:
    """``timm.optim.<name>`` loaded from its file without running timm's package imports."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("timm is not installed (pip install timm)")
    package = "_adafactor_timm_optim"
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [f"{spec.submodule_search_locations[0]}/optim"]
        sys.modules[package] = module
    return importlib.import_module(f"{package}.{name}")
