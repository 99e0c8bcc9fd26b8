"""The compact id vocabulary: embedding tables sized to the ids that occur in a run's days.

RecFlow's ``id_cnt.pkl`` counts 82M videos and 33M authors; a run's days hold a small part of
them.  A :class:`Vocabulary` lists, per id field, the sorted distinct ids (in the shifted form
of :class:`DayData`: raw id + 1, 0 = padding) found in the run's days, and maps day arrays onto
compact table rows:

    row 0        padding (zero vector, never trained), as in the full-size tables
    row 1        the *unknown* row: an id absent from the vocabulary (only possible on a day
                 outside the days the vocabulary was built from); initialised like any row and
                 never trained, since every training id is in the vocabulary.  Counted per field
                 in ``unknown_ids`` (metrics.json).
    row 2 + k    the k-th smallest id of the field

The mapping is monotonic, so the order of rows is the order of ids.  Fields with a compact
table: :data:`COMPACT_FIELDS`.  ``category_level_one`` (stored raw, padding row 2, 140 values)
and the calendar tables stay full-size.

Built once per (setting, days, source files, array settings) and cached next to the day cache,
under ``<cache>/<setting>/vocab/<key>/``, keyed by the day cache keys of its days.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path

import numpy as np

from .day import DayData

log = logging.getLogger("deep_components.data")

#: id field -> where it sits in DayData arrays: (array, column)
LOCATIONS: dict[str, tuple[tuple[str, int], ...]] = {
    "user_id": (("context", 3),), "device_id": (("context", 4),), "gender": (("context", 5),),
    "age": (("context", 6),), "province": (("context", 7),),
    "video_id": (("history", 0), ("items", 0)), "author_id": (("history", 1), ("items", 1)),
    "category_level_two": (("history", 2), ("items", 2)),
    "upload_type": (("history", 4), ("items", 4)),
}
COMPACT_FIELDS = tuple(LOCATIONS)
PAD_ROW, UNKNOWN_ROW, FIRST_ROW = 0, 1, 2
#: row key of the unknown row (embedding_init draws its vector from this key)
UNKNOWN_KEY = -1
VOCAB_FORMAT_VERSION = 1


@dataclass
class Vocabulary:
    """ids[field]: int64 [V_f] sorted distinct shifted ids (> 0) of the field (not to be changed
    once made: the lookup tables are built from them once)."""

    ids: dict[str, np.ndarray]
    _luts: dict[str, np.ndarray] = dataclass_field(default_factory=dict, repr=False, compare=False)

    def rows(self, field: str) -> int:
        """Rows of the field's compact table (padding + unknown + ids)."""
        return FIRST_ROW + len(self.ids[field])

    def table_rows(self) -> dict[str, int]:
        return {f: self.rows(f) for f in self.ids}

    def row_keys(self, field: str) -> np.ndarray:
        """int64 [rows]: the key each row is initialised from (its shifted id; -1 unknown)."""
        return np.concatenate([np.array([PAD_ROW, UNKNOWN_KEY], dtype=np.int64), self.ids[field]])

    def lookup(self, field: str) -> np.ndarray:
        """int32 [max id + 1]: shifted id -> row (0 -> padding row, absent -> unknown row).
        A direct table makes mapping a gather (a 10M-id column in ~0.1 s instead of seconds
        of binary search); 4 bytes per possible id up to the largest id of the vocabulary.
        Built once per field and kept."""
        if field in self._luts:
            return self._luts[field]
        ids = self.ids[field]
        top = int(ids[-1]) if len(ids) else 0
        lut = np.full(top + 1, UNKNOWN_ROW, dtype=np.int32)
        lut[ids] = np.arange(FIRST_ROW, FIRST_ROW + len(ids), dtype=np.int32)
        lut[0] = PAD_ROW
        lut.flags.writeable = False
        self._luts[field] = lut
        return lut

    def map_ids(self, field: str, values: np.ndarray,
                lut: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """Shifted ids (any shape) -> compact rows (int32), and how many non-padding ids were
        absent (mapped to the unknown row)."""
        lut = self.lookup(field) if lut is None else lut
        v = np.asarray(values)
        top = lut.shape[0] - 1
        if v.size and (int(v.max()) > top or int(v.min()) < 0):
            out = np.where((v >= 0) & (v <= top), lut[np.clip(v, 0, top)], UNKNOWN_ROW)
        else:
            out = lut[v]
        return out.astype(np.int32, copy=False), int(np.count_nonzero(out == UNKNOWN_ROW))

    def apply(self, day: DayData, in_place: bool = False) -> DayData:
        """The day with every compact field's ids replaced by table rows.  ``in_place`` rewrites
        the day's own arrays (they must be writable, e.g. after ``in_memory()``); otherwise the
        three id arrays are copied.  ``stats["unknown_ids"]`` counts absent ids per field."""
        arrays = {k: getattr(day, k) for k in ("context", "history", "items")}
        if not in_place:
            arrays = {k: np.array(v, copy=True) for k, v in arrays.items()}
        unknown = {}
        for field, places in LOCATIONS.items():
            n = 0
            lut = self.lookup(field)
            for name, col in places:
                rows, absent = self.map_ids(field, arrays[name][..., col], lut)
                arrays[name][..., col] = rows
                n += absent
            unknown[field] = n
        out = DayData(day.date, day.spec_name, stats=dict(day.stats),
                      **{k: getattr(day, k) for k in DayData.ARRAYS} | arrays)
        out.stats["unknown_ids"] = unknown
        return out

    def digest(self) -> str:
        h = hashlib.sha256()
        for f in sorted(self.ids):
            h.update(f.encode())
            h.update(np.ascontiguousarray(self.ids[f], dtype=np.int64).tobytes())
        return h.hexdigest()[:20]

    def sizes(self) -> dict[str, int]:
        return {f: int(len(v)) for f, v in self.ids.items()}

    def state(self) -> dict:
        """For towers.pt / checkpoints (tensors only, loadable with weights_only=True)."""
        import torch

        return {f: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for f, v in self.ids.items()}

    @classmethod
    def from_state(cls, state: dict) -> "Vocabulary":
        ids = {f: np.asarray(state[f].cpu().numpy() if hasattr(state[f], "cpu") else state[f],
                             dtype=np.int64) for f in COMPACT_FIELDS}
        for f, v in ids.items():
            if v.size and (v[0] <= 0 or np.any(np.diff(v) <= 0)):
                raise ValueError(f"vocabulary of {f} is not sorted distinct positive ids")
        return cls(ids)


def build_vocabulary(days) -> Vocabulary:
    """The distinct ids of every compact field over an iterable of :class:`DayData`.

    Presence bitmaps (one bool per possible id up to the largest seen) instead of sorting:
    linear in the day's size."""
    seen: dict[str, np.ndarray] = {f: np.zeros(1, dtype=bool) for f in COMPACT_FIELDS}
    for day in days:
        for field, places in LOCATIONS.items():
            for name, col in places:
                v = np.asarray(getattr(day, name)[..., col]).ravel()
                if not v.size:
                    continue
                top = int(v.max())
                if top >= seen[field].shape[0]:
                    grown = np.zeros(top + 1, dtype=bool)
                    grown[:seen[field].shape[0]] = seen[field]
                    seen[field] = grown
                seen[field][v] = True
    return Vocabulary({f: np.flatnonzero(m[1:]).astype(np.int64) + 1 for f, m in seen.items()})


def load_vocabulary(root: str | os.PathLike, dates: list[str], spec, tz: str, *,
                    cache_dir: str | os.PathLike | None = None, history_len: int = 50,
                    opened: dict[str, DayData] | None = None) -> Vocabulary:
    """The vocabulary of ``dates`` (built from their day caches on first use, then cached);
    ``opened``: days already loaded, by date (not opened again)."""
    from .cache import (MISSING_POSITIVE_INDEX, cache_key, default_cache_dir, load_day,
                        publish_entry)
    from . import layout

    root = layout.check_root(root)
    keys = [cache_key(root, d, spec, tz=tz, history_len=history_len,
                      missing_index=MISSING_POSITIVE_INDEX) for d in sorted(set(dates))]
    key = hashlib.sha256(json.dumps({"version": VOCAB_FORMAT_VERSION, "days": keys}).encode()
                         ).hexdigest()[:20]
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir(root)
    vdir = base / spec.name / "vocab"
    entry = vdir / key
    try:
        return Vocabulary({f: np.load(entry / f"{f}.npy") for f in COMPACT_FIELDS})
    except (OSError, ValueError):
        pass
    opened = opened or {}
    vocab = build_vocabulary(opened[d] if d in opened else
                             load_day(root, d, spec, tz, cache_dir=cache_dir, history_len=history_len)
                             for d in sorted(set(dates)))
    publish_entry(vdir, key, vocab.ids, {"days": sorted(set(dates)), "sizes": vocab.sizes()},
                  "the vocabulary cache")
    log.info("vocabulary of %d days: %s", len(set(dates)), vocab.sizes())
    return vocab
