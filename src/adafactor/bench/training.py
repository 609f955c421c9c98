"""One case of ``adafactor bench --training``: whole training steps (forward, backward,
``step()``, ``zero_grad()``) of one model in one dtype with one optimizer, in a subprocess of
its own, and what it measures.

The models are built from their configurations with random weights (nothing is downloaded),
each with a batch small enough that parameters, gradients and state dominate activations:

* ``gpt2-small``: transformers' ``GPT2LMHeadModel(GPT2Config())``, 124.4 M parameters, the
  input and output embeddings tied; 1 sequence of 128 tokens.
* ``t5-small``: ``T5ForConditionalGeneration(T5Config())``, 60.5 M parameters, the shared
  embedding used by the encoder, the decoder and the output layer; 1 input and 1 target
  sequence of 128 tokens.
* ``demo-char``: ``adafactor demo``'s ``CharTransformer`` (30 tensors, 0.4 M parameters), on
  the demo's batch of 32 sequences of 64 characters: per-tensor overhead shows here.
* ``gpt2-tiny`` (``--quick``): GPT-2 with 2 layers of width 256 and a 512-token vocabulary,
  1 sequence of 16 tokens: gradients spread over tensors of about the same size dominate.

What a child measures:

* ``step_ms``: each timed training step after the warm-up ones (``timing.call_ms``);
* ``peak_bytes``: the most tensor memory alive during one more step, parameters and state
  included. CPU: the bytes of every tensor Python reaches when the step starts
  (``transient.live_tensor_bytes``) plus the CPU allocator's highest net allocation during
  the step (``transient.profiled_peak``): live tensor bytes, not the process's RSS. CUDA:
  ``torch.cuda.max_memory_allocated()`` over the step;
* ``peak_rss_above_built_bytes`` (CPU): the process's peak RSS over the warm-up and timed
  steps minus its RSS once model and optimizer were built, the allocator's slack included;
* ``breakdown`` (``--breakdown``, CPU): the live bytes at the peak by what torch's memory
  profiler takes them for (parameter, gradient, autograd detail, activation, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..memory import gradient_bytes, optimizer_state_bytes
from ..optimizer import Adafactor
from .sets import DEMO_VOCAB, TORCH_DTYPES
from .timing import call_ms, synchronize, wall_s
from .transient import live_tensor_bytes, profiled_peak, rss_bytes

Loss = Callable[[], Tensor]

CANDIDATES: dict[str, str] = {
    "adamw-fused": "AdamW (fused)",
    "torch": "torch.optim.Adafactor",
    "ours": "adafactor",
    "ours-in-backward": "adafactor, step_in_backward",
    "ours-alternating": "adafactor, both modes in turn",
}
"""Key → label of every case, in table order; ``ours`` is the ordinary mode. ``ours-alternating``
times no memory: one Adafactor steps in the ordinary mode and in backward in turn, toggling
``step_in_backward`` between steps, so that each pair of steps meets the same machine load
(its time ratio resolves a few percent where separate processes on a shared machine do not)."""

MODELS = ("gpt2-small", "t5-small", "demo-char", "gpt2-tiny")
DEFAULT_MODELS = ("gpt2-small", "t5-small", "demo-char")
QUICK_MODELS = ("gpt2-tiny",)


def make_optimizer(key: str, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The candidate's optimizer over ``params``, with its defaults (Adafactors: no momentum)."""
    if key == "adamw-fused":
        return torch.optim.AdamW(params, lr=1e-3, fused=True)
    if key == "torch":
        return torch.optim.Adafactor(params)
    if key in ("ours", "ours-in-backward", "ours-alternating"):
        return Adafactor(params, step_in_backward=key == "ours-in-backward")
    raise ValueError(f"unknown candidate {key!r}")


def build_model(name: str, dtype: torch.dtype, device: str, seed: int) -> tuple[nn.Module, Loss]:
    """The model with random weights from ``seed``, in ``dtype`` on ``device`` and in training
    mode, and its loss on a fixed batch (see the module docstring)."""
    torch.manual_seed(seed)
    tokens = torch.Generator().manual_seed(seed)
    model: nn.Module
    if name in ("gpt2-small", "gpt2-tiny"):
        from transformers import GPT2Config, GPT2LMHeadModel

        small = name == "gpt2-small"
        # gpt2-tiny: 1.7 M parameters in 28 tensors, whose gradients (6.5 MiB in float32, the
        # largest 1 MiB) outweigh the activations of its 16 tokens.
        gpt2 = (
            GPT2Config()
            if small
            else GPT2Config(
                vocab_size=512,
                n_positions=32,
                n_embd=256,
                n_layer=2,
                n_head=4,
                bos_token_id=0,
                eos_token_id=0,
            )
        )
        model = GPT2LMHeadModel(gpt2)
        ids = torch.randint(0, gpt2.vocab_size, (1, 128 if small else 16), generator=tokens)
        ids = ids.to(device)
        inputs = {"input_ids": ids, "labels": ids}
    elif name == "t5-small":
        from transformers import T5Config, T5ForConditionalGeneration

        t5 = T5Config()
        t5.decoder_start_token_id = 0  # t5-small's (its checkpoint's config names it)
        model = T5ForConditionalGeneration(t5)
        ids = torch.randint(0, t5.vocab_size, (2, 128), generator=tokens).to(device)
        inputs = {"input_ids": ids[:1], "labels": ids[1:]}
    elif name == "demo-char":
        from ..experiments.demo import CONTEXT, CharTransformer

        demo = CharTransformer(DEMO_VOCAB)
        chars = torch.randint(0, DEMO_VOCAB, (32, CONTEXT + 1), generator=tokens).to(device)
        model = _placed(demo, device, dtype)

        def demo_loss() -> Tensor:
            logits = demo(chars[:, :-1])
            return nn.functional.cross_entropy(logits.flatten(0, 1), chars[:, 1:].flatten())

        return model, demo_loss
    else:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)}")
    model = _placed(model, device, dtype)
    return model, lambda: model(**inputs).loss


def _placed(model: nn.Module, device: str, dtype: torch.dtype) -> nn.Module:
    return model.to(device=device, dtype=dtype).train()


def training_step(loss: Loss, optimizer: torch.optim.Optimizer) -> Tensor:
    """One training step as a loop writes it; returns the loss."""
    value = loss()
    value.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return value.detach()


def alternate(
    step: Callable[[], object], optimizer: Adafactor, warmup: int, steps: int, device: str
) -> tuple[list[float], list[float]]:
    """Milliseconds of ``steps`` training steps in each mode, in turn (the ordinary mode first
    in every other pair), after ``warmup`` steps in each; toggling ``step_in_backward`` between
    steps attaches or removes the hooks, outside the timed steps."""
    for _ in range(warmup):
        for mode in (False, True):
            optimizer.step_in_backward = mode
            step()
    synchronize(device)
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(steps):
        for mode in (False, True) if i % 2 == 0 else (True, False):
            optimizer.step_in_backward = mode
            times[mode].append(call_ms(step, device))
    return times[False], times[True]


def peak_bytes(step: Callable[[], object], device: str) -> int:
    """The most tensor bytes alive during ``step()``, everything alive before it included."""
    if device == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated()
    return live_tensor_bytes(device) + profiled_peak(step)


def breakdown(step: Callable[[], object]) -> dict[str, dict[str, int]]:
    """The live CPU tensor bytes at the peak of ``step()`` by the category torch's memory
    profiler gives them, and each category's most bytes during the step.

    The profiler sees the tensors that the step touches, with their sizes; gradients it tells
    by the autograd graph, so buffers that autograd adds a weight's contributions in are
    "AUTOGRAD_DETAIL". (A private API of torch's: ``profile._memory_profile()``.)"""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, MemoryProfileTimeline

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        step()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    names = ["unknown"] * (len(_CATEGORY_TO_INDEX) + 1)
    for category, index in _CATEGORY_TO_INDEX.items():
        names[index + 1] = category.name if category is not None else "unknown"
    at_peak = max(sizes, key=sum)
    return {
        "at_peak": {n: b for n, b in zip(names, at_peak) if b},
        "most": {
            n: max(s[i] for s in sizes) for i, n in enumerate(names) if any(s[i] for s in sizes)
        },
    }


def run_training_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the model and optimizer, train, measure; returns the measurements."""
    device = spec.get("device", "cpu")
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model, loss = build_model(
        spec["model"], TORCH_DTYPES[spec["dtype"]], device, spec.get("seed", 0)
    )
    params = list(model.parameters())
    optimizer = make_optimizer(spec["candidate"], params)
    built = rss_bytes()

    def step() -> Tensor:
        return training_step(loss, optimizer)

    first_step_s = wall_s(step, device)
    in_turn = spec["candidate"] == "ours-alternating"
    if in_turn and isinstance(optimizer, Adafactor):
        step_ms, in_backward_ms = alternate(step, optimizer, spec["warmup"], spec["steps"], device)
    else:
        for _ in range(spec["warmup"] - 1):
            step()
        synchronize(device)
        step_ms, in_backward_ms = [call_ms(step, device) for _ in range(spec["steps"])], None
    grads, largest = gradient_bytes(params)
    result: dict[str, Any] = {
        "first_step_s": first_step_s,
        "step_ms": step_ms,
        "in_backward_ms": in_backward_ms,
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "gradient_bytes": grads,
        "largest_gradient_bytes": largest,
        "tensors": len(params),
        "state_bytes": optimizer_state_bytes(optimizer),
        "peak_rss_above_built_bytes": rss_bytes("VmHWM") - built if device == "cpu" else None,
        "peak_bytes": None,
        "breakdown": None,
        "loss": float(step()),  # one more step, untimed
        "threads": torch.get_num_threads(),
    }
    if spec.get("measure_memory", True) and not in_turn:
        result["peak_bytes"] = peak_bytes(step, device)
        if spec.get("breakdown") and device == "cpu":
            result["breakdown"] = breakdown(step)
    return result
