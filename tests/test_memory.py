import pytest
import torch

from adafactor import Adafactor, adam_state_bytes, optimizer_state_bytes, state_bytes
from adafactor.memory import training_memory


def test_prediction_matches_the_state_actually_kept():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(300, 512), torch.nn.Conv2d(4, 8, 3), torch.nn.LayerNorm(7)
    )
    for kwargs in ({}, {"beta1": 0.9}, {"factored": False}, {"factor_dims": "last"}):
        opt = Adafactor(model.parameters(), **kwargs)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        assert state_bytes(model.parameters(), **kwargs).adafactor == optimizer_state_bytes(opt)


def test_factored_matrix_keeps_n_plus_m_numbers():
    p = torch.nn.Parameter(torch.zeros(512, 2048))
    # n + m float32 statistics, a float32 step count and an int64 skip count.
    assert state_bytes([p]).adafactor == (512 + 2048) * 4 + 4 + 8
    assert state_bytes([p], beta1=0.9).adafactor == (512 + 2048 + 512 * 2048) * 4 + 12


def test_adam_state_and_ratio_on_meta_tensors():
    # A t5-small-sized matrix set on the meta device: nothing is allocated.
    params = [torch.empty(32128, 512, device="meta")] + [torch.empty(512, 2048, device="meta")] * 12
    report = state_bytes(params)
    assert report.adam == sum(2 * p.numel() * 4 + 4 for p in params)
    assert report.adam == adam_state_bytes(params)
    assert report.ratio < 0.005


@pytest.mark.parametrize(
    "dtype, options",
    [
        (torch.float32, {}),
        (torch.bfloat16, {}),
        (torch.float32, {"beta1": 0.9, "momentum_of": "gradient", "weight_decay": 0.1}),
        (torch.bfloat16, {"beta1": 0.9, "factored": False, "stochastic_rounding": True}),
        (torch.bfloat16, {"beta1": 0.9, "rounding": "compensated"}),
    ],
)
def test_eager_step_temporaries_are_bounded_by_chunks_not_by_the_parameter(dtype, options):
    # A 32 MiB (fp32) matrix and a 12 MiB vector: the eager step works through them in chunks
    # of CHUNK_NUMEL elements (4 MiB in float32), so what is live at once is a few chunk-sized
    # buffers plus O(n + m) vectors, never a copy of a parameter. The most, 4.5 chunks, is
    # bfloat16 with a full V̂ and stochastic rounding (G widened, V̂, the update, X widened to
    # be mixed in, the rounding noise, hashed in quarter chunks).
    from adafactor.bench.transient import profiled_peak
    from adafactor.tiling import CHUNK_NUMEL

    params = [torch.nn.Parameter(torch.randn(s, dtype=dtype)) for s in [(4096, 2048), (3 << 20,)]]
    opt = Adafactor(params, fused=False, **options)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # the state is allocated once, outside the measured step
    peak = profiled_peak(opt.step)
    chunk_bytes, largest = CHUNK_NUMEL * 4, 4096 * 2048 * 4
    assert peak <= 5 * chunk_bytes < largest


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("in_backward", [False, True])
def test_predicted_gradient_term_is_the_most_gradient_bytes_a_real_run_holds(in_backward, dtype):
    # No tied weights: each gradient is complete when its parameter's hook runs. A counting
    # hook registered before the optimizer's runs first (hooks run in the order registered),
    # so it sees every gradient still held, the one about to be stepped included.
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 256), torch.nn.Linear(256, 8)
    ).to(dtype)
    params = list(model.parameters())
    held: list[int] = []

    def count(_: torch.Tensor) -> None:
        grads = [q.grad for q in params if q.grad is not None]
        held.append(sum(g.numel() * g.element_size() for g in grads))

    for p in params:
        p.register_post_accumulate_grad_hook(count)
    opt = Adafactor(params, step_in_backward=in_backward)
    x = torch.randn(4, 16, dtype=dtype)
    for _ in range(2):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    predicted = {row.mode: row for row in training_memory(params)}
    row = predicted["Adafactor, step_in_backward=True" if in_backward else "Adafactor"]
    assert max(held) == row.gradients
    assert row.parameters == sum(p.numel() * p.element_size() for p in params)
    assert row.state == optimizer_state_bytes(opt)
    adamw = torch.optim.AdamW(params)
    for p in params:
        p.grad = torch.zeros_like(p)
    adamw.step()
    assert predicted["AdamW"].state == optimizer_state_bytes(adamw)
    assert predicted["AdamW"].gradients == predicted["Adafactor"].gradients == row.parameters


def test_training_memory_of_meta_tensors_in_backward_holds_the_largest_gradient():
    params = [torch.empty(50257, 768, device="meta"), torch.empty(768, 3072, device="meta")]
    adamw, adafactor, in_backward = training_memory(params)
    assert adamw.gradients == adafactor.gradients == (50257 + 3072) * 768 * 4
    assert in_backward.gradients == 50257 * 768 * 4
    assert adamw.state == adam_state_bytes(params) and adafactor.state == in_backward.state
    assert in_backward.total == adafactor.total - 3072 * 768 * 4
