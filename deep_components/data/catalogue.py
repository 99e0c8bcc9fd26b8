"""The catalogue: every video that occurs as a candidate in a dataset's days, with its latest
features, for serving a trained cascade over all of them (deep_components.serve).

A video's features are those of its last candidate slot (days in date order, requests in day
order, slots in slot order): video, author, cate2, cate1, upload type, upload weekday, hour and
minute, the same 8 columns (and shifts) as ``DayData.items``.  Videos that only appear in
histories carry no upload time and are not in the catalogue.  Built from the day caches once
and cached as ``<cache>/<setting>/catalogue/<key>/`` (key: the day cache keys of the days).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

CATALOGUE_FORMAT_VERSION = 1


@dataclass
class Catalogue:
    """items int32 [V, 8] (column 0: the shifted video id, ascending and distinct)."""

    items: np.ndarray

    @property
    def video_ids(self) -> np.ndarray:
        return self.items[:, 0]

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def rows_of(self, video_ids: np.ndarray) -> np.ndarray:
        """Catalogue rows of shifted video ids (any shape); -1 where absent."""
        v = np.asarray(video_ids)
        if not len(self):
            return np.full(v.shape, -1)
        pos = np.clip(np.searchsorted(self.video_ids, v), 0, len(self) - 1)
        return np.where(self.video_ids[pos] == v, pos, -1)


def catalogue_of_days(days) -> Catalogue:
    """The catalogue of an iterable of :class:`DayData` (in date order)."""
    parts = []
    for day in days:
        items = np.asarray(day.items)
        mask = np.asarray(day.item_mask)
        parts.append(items[mask])                       # [valid slots, 8], request/slot order
    if not parts or not sum(len(p) for p in parts):
        raise DataError("no candidate videos in the days given: the catalogue would be empty")
    rows = np.concatenate(parts)
    # the last occurrence of every video: unique over the reversed rows takes the first
    _, first_rev = np.unique(rows[::-1, 0], return_index=True)
    return Catalogue(np.ascontiguousarray(rows[::-1][first_rev]).astype(np.int32))


def load_catalogue(root: str | os.PathLike, dates: list[str], spec, tz: str, *,
                   cache_dir: str | os.PathLike | None = None, history_len: int = 50) -> Catalogue:
    """The catalogue of ``dates`` (built from their day caches on first use, then cached)."""
    from . import layout
    from .cache import MISSING_POSITIVE_INDEX, cache_key, default_cache_dir, load_day, publish_entry

    root = layout.check_root(root)
    dates = sorted(set(dates))
    keys = [cache_key(root, d, spec, tz=tz, history_len=history_len,
                      missing_index=MISSING_POSITIVE_INDEX) for d in dates]
    key = hashlib.sha256(json.dumps({"version": CATALOGUE_FORMAT_VERSION, "days": keys}).encode()
                         ).hexdigest()[:20]
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir(root)
    folder = base / spec.name / "catalogue"
    try:
        return Catalogue(np.load(folder / key / "items.npy"))
    except (OSError, ValueError):
        pass
    cat = catalogue_of_days(load_day(root, d, spec, tz, cache_dir=cache_dir, history_len=history_len)
                            for d in dates)
    publish_entry(folder, key, {"items": cat.items}, {"days": dates, "videos": len(cat)},
                  "the catalogue cache")
    return cat
