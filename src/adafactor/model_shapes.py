"""Parameter shapes of well-known models, built without downloads (on the meta device), and
the parameters of a model named on the command line (``adafactor memory --model``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def t5_small_like(device: str | torch.device = "meta") -> dict[str, Tensor]:
    """The 60.5M parameters of T5-small: d=512, d_ff=2048, 6+6 layers, 32128-token vocab."""
    d, ff, vocab, layers = 512, 2048, 32128, 6
    shapes: dict[str, tuple[int, ...]] = {"shared.weight": (vocab, d)}
    for stack, attentions in (
        ("encoder", ("SelfAttention",)),
        ("decoder", ("SelfAttention", "EncDecAttention")),
    ):
        for i in range(layers):
            for j, attention in enumerate(attentions):
                for w in "qkvo":
                    shapes[f"{stack}.block.{i}.layer.{j}.{attention}.{w}.weight"] = (d, d)
                shapes[f"{stack}.block.{i}.layer.{j}.layer_norm.weight"] = (d,)
            k = len(attentions)
            shapes[f"{stack}.block.{i}.layer.{k}.DenseReluDense.wi.weight"] = (ff, d)
            shapes[f"{stack}.block.{i}.layer.{k}.DenseReluDense.wo.weight"] = (d, ff)
            shapes[f"{stack}.block.{i}.layer.{k}.layer_norm.weight"] = (d,)
        shapes[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (32, 8)
        shapes[f"{stack}.final_layer_norm.weight"] = (d,)
    return {name: torch.empty(shape, device=device) for name, shape in shapes.items()}


def gpt2_small_like(device: str | torch.device = "meta") -> dict[str, Tensor]:
    """The 124.4M parameters of GPT-2 small: d=768, 12 layers, 50257-token vocab, 1024 positions."""
    d, vocab, positions, layers = 768, 50257, 1024, 12
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (vocab, d), "wpe.weight": (positions, d)}
    for i in range(layers):
        block = {
            "ln_1.weight": (d,),
            "ln_1.bias": (d,),
            "attn.c_attn.weight": (d, 3 * d),
            "attn.c_attn.bias": (3 * d,),
            "attn.c_proj.weight": (d, d),
            "attn.c_proj.bias": (d,),
            "ln_2.weight": (d,),
            "ln_2.bias": (d,),
            "mlp.c_fc.weight": (d, 4 * d),
            "mlp.c_fc.bias": (4 * d,),
            "mlp.c_proj.weight": (4 * d, d),
            "mlp.c_proj.bias": (d,),
        }
        shapes.update({f"h.{i}.{k}": v for k, v in block.items()})
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return {name: torch.empty(shape, device=device) for name, shape in shapes.items()}


MODELS = {"t5-small": t5_small_like, "gpt2-small": gpt2_small_like}


def model_parameters(spec: str) -> list[Tensor]:
    """The parameters of a model named by ``spec``, on the meta device where it is built here.

    ``spec`` is one of ``model_shapes.MODELS`` (``t5-small``, ``gpt2-small``); a transformers
    config class name (``T5Config``, ``GPT2Config``, …), whose default configuration is built
    with ``AutoModel.from_config`` on the meta device (nothing is downloaded); or an import
    path ``module:callable`` whose callable returns an ``nn.Module``, a mapping of tensors or
    an iterable of tensors (called under ``torch.device("meta")``, so modules it builds
    allocate nothing).

    Raises:
        ValueError: ``spec`` names nothing of the kind (the message says which form failed).
    """
    if spec in MODELS:
        return list(MODELS[spec]().values())
    if ":" in spec:
        return _from_import_path(spec)
    if spec.endswith("Config"):
        return _from_transformers_config(spec)
    raise ValueError(
        f"unknown model {spec!r}: use one of {sorted(MODELS)}, a transformers config class name "
        "such as T5Config, or an import path module:callable"
    )


def _from_import_path(spec: str) -> list[Tensor]:
    import importlib

    module_name, _, attribute = spec.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import {spec!r}: {error}") from None
    with torch.device("meta"):  # nothing is allocated
        try:
            made = target() if callable(target) else target
        except TypeError as error:  # it needs arguments
            raise ValueError(
                f"{spec!r} must be callable without arguments (it is called as {attribute}()): "
                f"{error}"
            ) from None
    if isinstance(made, torch.nn.Module):
        return list(made.parameters())
    if isinstance(made, dict):
        made = made.values()
    values = list(made) if isinstance(made, Iterable) else [made]
    if not values or not all(isinstance(v, Tensor) for v in values):
        raise ValueError(f"{spec!r} gave neither an nn.Module nor tensors")
    return values


def _from_transformers_config(name: str) -> list[Tensor]:
    try:
        import transformers
    except ImportError:
        raise ValueError(f"{name!r} needs transformers (pip install transformers)") from None
    config_class = getattr(transformers, name, None)
    if config_class is None:
        raise ValueError(f"transformers has no config class {name!r}")
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(config_class())
    return list(model.parameters())
