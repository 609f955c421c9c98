"""``adafactor bench`` / ``python -m adafactor.bench``: step time, state and transient memory of
this Adafactor next to its peers and AdamW, on realistic parameter sets built without downloads,
on the CPU (``--device cpu``, the default) or a CUDA GPU (``--device cuda``).

Every candidate × parameter set × dtype runs in a subprocess of its own, so that its memory is
its own and one candidate's allocations cannot warm the allocator for the next. The parent runs
them round-robin (repetition 1 of every candidate, then repetition 2, ...), so that a change of
machine load hits every candidate alike; medians are over all timed steps of all repetitions
and every ratio is between medians of the same run.

The parent measures the device's copy bandwidth (``dst.copy_(src)`` on the device, counted as
read + write) and divides each set's minimum step traffic by it: the bandwidth floor.

The modules, one idea each:

* ``sets``: the parameter sets and their bandwidth floors;
* ``candidates``: who is benchmarked, on which devices, and how each optimizer is built
  (``peers``: the peers' own classes, timm's loaded without its package);
* ``child``: the subprocess that measures one case, with ``timing`` (CPU clock or CUDA
  events), ``transient`` (peak transient memory) and ``graph`` (a step captured in a CUDA
  graph);
* ``runner``: the cases, round-robin, each in its own process; ``summary``: runs into rows,
  medians and ratios;
* ``report``, ``chart``, ``machine``: the markdown tables, the PNG, the machine's description;
* ``cli``: the options and ``main``.

``--training`` benchmarks whole training steps instead (forward, backward, ``step()``,
``zero_grad()``) of real models built from configs, this Adafactor with and without
``step_in_backward`` next to AdamW and torch's Adafactor: ``training`` (the models, the
subprocess's measurements), ``training_report`` (rows, the targets, tables) and
``training_cli`` (the options, the round-robin, the files; its chart is in ``chart``).
"""

from .cli import main

__all__ = ["main"]
