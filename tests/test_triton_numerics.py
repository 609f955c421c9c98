"""The Triton kernels' device functions on bit patterns, run by Triton's interpreter: what a
bfloat16 store writes for NaNs, infinities and values next to them (as torch and cpu.c)."""

from __future__ import annotations

import pytest
import torch

from helpers import triton_interpreted

pytestmark = pytest.mark.skipif(not triton_interpreted(), reason="needs triton's interpreter")

if triton_interpreted():
    import triton
    import triton.language as tl

    from adafactor.kernels.triton_lanes import load_f32, store_as

    @triton.jit
    def store_bfloat16(src, dst_at, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        store_as(tl.load(dst_at), offs, tl.load(src + offs, mask=mask), mask, 1, 1)

    @triton.jit
    def load_bfloat16(src_at, dst, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(dst + offs, load_f32(tl.load(src_at), offs, mask, 1, 1), mask=mask)


BITS = [
    0x7FFFFFFF,  # the GPU's canonical NaN
    0xFFFFFFFF,
    0x7F800001,  # a signalling NaN one above +inf
    0xFF800001,
    0x7FC00000,
    0x7FBFFFFF,
    0x7F800000,  # ±inf
    0xFF800000,
    0x7F7FFFFF,  # the largest float32: rounds up to +inf, as torch
    0x7F7F7FFF,  # the largest that rounds down
    0x00000001,  # the least subnormal, and a subnormal that rounds up
    0x00008000,
    0x80018000,
    0x3F808000,  # a tie, to even: down
    0x3F818000,  # a tie, to even: up
    0x00000000,
    0x80000000,
]


def test_a_bfloat16_store_keeps_nans_and_rounds_as_torch():
    bits = torch.tensor(BITS, dtype=torch.int64).to(torch.int32)  # wraps to the same bits
    x = bits.view(torch.float32)
    out = torch.empty(len(BITS), dtype=torch.bfloat16)
    store_bfloat16[(1,)](x, torch.tensor([out.data_ptr()]), len(BITS), BLOCK=32)
    got = out.view(torch.int16).to(torch.int64) & 0xFFFF
    for u, g, value in zip(BITS, got.tolist(), x.tolist()):
        if value != value:  # NaN: quiet, sign and payload kept (cpu.c's float_to_bf16)
            assert g == ((u >> 16) | 0x40), (hex(u), hex(g))
        else:
            want = torch.tensor([value]).to(torch.bfloat16).view(torch.int16).item() & 0xFFFF
            assert g == want, (hex(u), hex(g), hex(want))


def test_a_bfloat16_load_is_exact_subnormals_included():
    bits = torch.tensor([0x0001, 0x8001, 0x0040, 0x007F, 0x0080, 0x7F80, 0xFFC1, 0x3F81])
    x = bits.to(torch.int32).to(torch.int16).view(torch.bfloat16)  # wraps to the same bits
    out = torch.empty(len(bits))
    load_bfloat16[(1,)](torch.tensor([x.data_ptr()]), out, len(bits), BLOCK=8)
    assert torch.equal(out.view(torch.int32), x.float().view(torch.int32))
