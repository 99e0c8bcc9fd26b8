"""Counting the times a training step waits for its device (diagnostics for tests and
bench/gpu_check.py).

``host_reads()`` counts, on any device, the reads of tensor values into Python made by this
package's own code (``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``float(t)``,
``int(t)``, ``bool(t)``): on CUDA each is a synchronisation.  torch's own internals (e.g. Adam
reading its step count, a CPU tensor even on CUDA) are not counted.  ``cuda_syncs()`` counts what
CUDA itself reports through ``torch.cuda.set_sync_debug_mode("warn")``.
"""
from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

PACKAGE = str(Path(__file__).resolve().parent)
READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


class Counter:
    def __init__(self):
        self.count = 0
        self.where: dict[str, int] = {}


@contextmanager
def host_reads() -> Iterator[Counter]:
    """Count reads of tensor values by deep_components code while the block runs."""
    counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name, fn):
        def read(self, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PACKAGE):
                counter.count += 1
                key = f"{Path(caller).name}:{sys._getframe(1).f_lineno} {name}"
                counter.where[key] = counter.where.get(key, 0) + 1
            return fn(self, *a, **k)
        return read

    try:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, wrap(name, fn))
        yield counter
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


@contextmanager
def cuda_syncs() -> Iterator[Counter]:
    """Count CUDA synchronisations while the block runs (CUDA's sync debug mode, "warn")."""
    counter = Counter()
    before = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counter
        finally:
            torch.cuda.set_sync_debug_mode(before)
    for w in caught:
        if "synchroniz" in str(w.message):
            counter.count += 1
            key = f"{Path(w.filename).name}:{w.lineno}"
            counter.where[key] = counter.where.get(key, 0) + 1
