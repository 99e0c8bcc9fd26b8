"""Batches as fancy-indexed slices of a day's arrays: no per-sample Python, no workers."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .day import DayData


def batch_indices(n: int, batch_size: int, *, seed: int | None = None, shuffle: bool = True,
                  drop_last: bool = True) -> list[np.ndarray]:
    """Split ``range(n)`` (shuffled with ``np.random.default_rng(seed)`` if asked) into batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def iter_batches(day: DayData, batch_size: int, *, seed: int | None = None, shuffle: bool = True,
                 drop_last: bool = True, fields: tuple[str, ...] | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Yield dicts of ``[b, ...]`` arrays (``fields`` of :class:`DayData`, default all)."""
    arrays = day.arrays() if fields is None else {k: getattr(day, k) for k in fields}
    for idx in batch_indices(day.num_requests, batch_size, seed=seed, shuffle=shuffle,
                             drop_last=drop_last):
        yield {k: v[idx] for k, v in arrays.items()}


#: what the towers read of a day, and what a training step reads (request_id is not an input)
TOWER_INPUTS = ("context", "history", "history_mask", "items")
STEP_FIELDS = TOWER_INPUTS + ("item_mask", "labels")


def batch_to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """numpy batch -> tensors: ids int32 as they are, masks bool, labels float32."""
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if k == "labels":
            t = t.float()
        out[k] = t.to(device, non_blocking=True)
    return out


class DayBatches:
    """The step batches of one day on ``device``: ``feeder[i]`` is batch ``i`` of ``batches``
    (index arrays into the day), as :func:`batch_to_device` gives it.

    On the CPU: numpy fancy indexing, as :func:`batch_to_device`.  On CUDA: the day's step arrays
    are copied to the device once when they fit in ``fit_fraction`` of its free memory, and each
    batch is gathered there (no host copy, no host wait per step); otherwise each batch is
    gathered on the host into one of two pinned buffers by a background thread one batch ahead
    and copied asynchronously (an event guards a buffer's reuse)."""

    def __init__(self, arrays: dict[str, np.ndarray], batches: list[np.ndarray],
                 device: torch.device, fit_fraction: float = 0.5):
        self.arrays = {k: arrays[k] for k in STEP_FIELDS}
        self.batches, self.device = batches, device
        self.mode = "host"
        if device.type == "cuda" and batches:
            need = sum(v.nbytes for v in self.arrays.values())
            free, _ = torch.cuda.mem_get_info(device)
            if need < fit_fraction * free:
                self.mode = "device"
                self.on_device = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device)
                                  for k, v in self.arrays.items()}
                self.index = torch.from_numpy(np.stack(batches)).to(device)
            else:
                self.mode = "pinned"
                self._start_pinned()

    def __len__(self) -> int:
        return len(self.batches)

    def _gather(self, i: int) -> dict[str, np.ndarray]:
        idx = self.batches[i]
        return {k: v[idx] for k, v in self.arrays.items()}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.mode == "host":
            return batch_to_device(self._gather(i), self.device)
        if self.mode == "device":
            idx = self.index[i]
            out = {k: t.index_select(0, idx) for k, t in self.on_device.items()}
            out["labels"] = out["labels"].float()
            return out
        return self._pinned(i)

    # ---------------------------------------------------------------- pinned, one batch ahead
    def _start_pinned(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        first = self._gather(0)
        self.buffers = [{k: torch.empty(v.shape, dtype=torch.from_numpy(v[:0]).dtype).pin_memory()
                         for k, v in first.items()} for _ in range(2)]
        self.ready = [None, None]                    # the CUDA event of each buffer's last copy
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: dict[int, object] = {}

    def _fill(self, i: int) -> int:
        slot = i % 2
        if self.ready[slot] is not None:
            self.ready[slot].synchronize()           # its previous copy has left the buffer
        for k, v in self._gather(i).items():
            self.buffers[slot][k].numpy()[...] = v
        return slot

    def _pinned(self, i: int) -> dict[str, torch.Tensor]:
        fut = self.pending.pop(i, None) or self.pool.submit(self._fill, i)
        slot = fut.result()
        out = {k: b.to(self.device, non_blocking=True) for k, b in self.buffers[slot].items()}
        ev = torch.cuda.Event()
        ev.record()
        self.ready[slot] = ev
        out["labels"] = out["labels"].float()
        if i + 1 < len(self.batches):
            self.pending[i + 1] = self.pool.submit(self._fill, i + 1)
        return out

    def close(self) -> None:
        if self.mode == "pinned":
            self.pool.shutdown(wait=True)
