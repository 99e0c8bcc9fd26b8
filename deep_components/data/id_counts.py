"""``others/id_cnt.pkl``: how many ids each field has (the full-size embedding tables' rows)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from . import layout
from .errors import DataError
from .safe_pickle import safe_load_pickle

ID_FIELDS = ("user_id", "device_id", "age", "gender", "province", "video_id", "author_id",
             "category_level_one", "category_level_two", "upload_type")


def read_id_counts(root: str | os.PathLike) -> dict[str, int]:
    """``others/id_cnt.pkl`` with keys stripped of whitespace and ``photo_id`` read as ``video_id``."""
    path = Path(root) / layout.ID_COUNT_FILE
    raw = safe_load_pickle(path)
    if not isinstance(raw, Mapping):
        raise DataError(f"{path}: expected a dict of id counts, found {type(raw).__name__}")
    out: dict[str, int] = {}
    for k, v in raw.items():
        key = str(k).strip()
        if key == "photo_id":
            key = "video_id"
        try:
            out[key] = int(v)
        except (TypeError, ValueError):
            raise DataError(f"{path}: id count of {key!r} is not an integer ({v!r})") from None
    missing = [k for k in ID_FIELDS if k not in out]
    if missing:
        raise DataError(f"{path}: missing id counts for {missing} (found keys {sorted(out)})")
    return out
