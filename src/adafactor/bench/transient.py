"""The peak transient memory of one ``step()``: the most memory it holds allocated beyond what
existed when it started.

* CPU: replayed from the allocation events of PyTorch's CPU allocator that ``torch.profiler``
  records (``profile_memory=True``). It counts every tensor buffer, those that compiled kernels
  allocate included; it does not count non-tensor memory (Python objects, compiler scratch),
  which is small for a step. The peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``)
  minus the RSS before the step is a cross-check from the kernel: a lower bound, as the C
  allocator reuses memory freed by earlier steps without new page faults.
* CUDA: ``torch.cuda.max_memory_allocated()`` after ``torch.cuda.reset_peak_memory_stats()``,
  minus ``torch.cuda.memory_allocated()`` before the step: the caching allocator's own count
  of the tensor memory the step's kernels hold.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile


def profiled_peak(step: Callable[[], object]) -> int:
    """The highest net allocation (bytes) of the CPU allocator during ``step()``."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocations: list[tuple[int, int]] = []
    pending = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        node = pending.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))
        pending.extend(node.children)
    live = peak = 0
    for _, size in sorted(allocations):
        live += size
        peak = max(peak, live)
    return peak


def cuda_peak(step: Callable[[], object]) -> int:
    """The highest CUDA memory (bytes) allocated during ``step()`` beyond what was before it."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def rss_peak_delta(step: Callable[[], object]) -> int | None:
    """Peak RSS during ``step()`` minus the RSS before it; ``None`` where the peak cannot be
    reset (no ``/proc/self/clear_refs``)."""
    before = rss_bytes("VmRSS")
    reset = _reset_peak_rss()
    step()
    return rss_bytes("VmHWM") - before if reset else None


def live_tensor_bytes(device_type: str) -> int:
    """Bytes of the distinct storages of every tensor on ``device_type`` that Python objects
    reach (the garbage collector's view: parameters, optimizer state, inputs, caches). Tensors
    held only by C++, such as an autograd graph's saved tensors, are not seen: call it between
    steps, when there are none."""
    storages: dict[int, int] = {}
    with warnings.catch_warnings():  # isinstance() on some objects warns (lazy modules)
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        if obj.device.type == device_type and obj.layout == torch.strided:
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = max(
                storages.get(storage.data_ptr(), 0), storage.nbytes()
            )
    return sum(storages.values())


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's ``field`` of /proc/self/status in bytes (VmRSS now, VmHWM its peak); -1
    where there is none."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
