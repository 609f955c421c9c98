"""Parameter shapes of well-known models, built without downloads (on the meta device)."""

from __future__ import annotations

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
