"""Batches as fancy-indexed slices of a day's arrays: no per-sample Python, no workers."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .recflow import DayData


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


def batch_to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """numpy batch -> tensors: ids int32 as they are, masks bool, labels float32."""
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if k == "labels":
            t = t.float()
        out[k] = t.to(device, non_blocking=True)
    return out
