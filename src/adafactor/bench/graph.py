"""A whole ``step()`` captured once in a CUDA graph and replayed, as the PyTorch docs show
(``torch.cuda.graph``): the warm-up steps run on a side stream, then one step is captured.

A replay launches the captured kernels without running any Python, so its time is the step's
GPU time without the host's per-tensor overhead. It replays exactly the captured step: the
numbers the step computed on the host at capture (a step count, a learning rate) stay as they
were, which is fine for timing. The memory a replay works in is the graph's private pool,
allocated during the capture: the capture's peak is the step's transient memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from .transient import cuda_peak

WARMUP_STEPS = 3  # the docs' count; also lets a compiled step finish its recompilations first


@contextmanager
def side_stream() -> Iterator[None]:
    """Run the block on a fresh CUDA stream, ordered after and before the current one."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream().wait_stream(side)


def capture(step: Callable[[], object]) -> tuple[Callable[[], None], int]:
    """Capture ``step()`` in a CUDA graph; return its replay and the capture's peak memory
    (bytes allocated beyond what was before it). ``step`` must have been warmed up."""
    graph = torch.cuda.CUDAGraph()

    def record() -> None:
        with torch.cuda.graph(graph):
            step()

    return graph.replay, cuda_peak(record)
