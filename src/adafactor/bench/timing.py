"""Timing one call on the benchmark's device, and the device's copy bandwidth.

On CPU, operators are synchronous: ``time.perf_counter`` around the call is its time. On CUDA
the host only queues kernels, so a call is timed with CUDA events recorded around it on the
current stream, and the device is synchronized once after it (the next call starts on an idle
device); the events' interval covers the host's launch gaps as well as the kernels.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

COPY_BYTES = {"cpu": 256 << 20, "cuda": 1 << 30}  # well beyond the last-level cache of each


def synchronize(device: str) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def call_ms(call: Callable[[], object], device: str) -> float:
    """Milliseconds that ``call()`` takes on ``device``."""
    if device == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    call()
    return (time.perf_counter() - start_s) * 1e3


def wall_s(call: Callable[[], object], device: str) -> float:
    """Wall-clock seconds of ``call()`` until its work on ``device`` is done (for a first step,
    whose host-side work, such as compiling, is what takes long)."""
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def copy_bandwidth(device: str = "cpu", nbytes: int | None = None, repeats: int = 15) -> float:
    """The device's copy bandwidth in bytes/s: ``dst.copy_(src)`` of ``nbytes`` (default
    ``COPY_BYTES[device]``) on ``device`` counted as 2·nbytes moved (read + write), median over
    ``repeats``."""
    nbytes = nbytes or COPY_BYTES[device]
    median_ms = _median_copy_ms(nbytes, device, repeats)
    if device == "cuda":
        torch.cuda.empty_cache()  # the children need the memory more than this process does
    return 2 * nbytes / (median_ms / 1e3)


def _median_copy_ms(nbytes: int, device: str, repeats: int) -> float:
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)
    dst.copy_(src)
    synchronize(device)
    return statistics.median(call_ms(lambda: dst.copy_(src), device) for _ in range(repeats))
