"""Per-day on-disk cache of :class:`DayData` arrays (``.npy``, memory-mapped on load).

A raw day is converted once.  The cache folder's name is a hash of the source files' identity
(path relative to the root, size, modification time) and of every setting that shapes the arrays
(spec groups and label constants, time zone, history length, missing-positive index, format
version), so a changed source or setting builds a new entry and the stale one is removed.
Entries are written to a temporary folder and renamed into place: an interrupted build never
leaves a half-written entry that a later run would trust.

Every entry also records ``content_digest``, a SHA-256 of the day's arrays (see
:func:`content_digest`), in ``DayData.stats``: two folders hold the same day (as a run of this
setting, time zone and history length sees it) exactly when the digests agree, whatever their
paths or modification times.  Hashing the arrays (0.6 GB for a real RecFlow day) costs a tenth
of hashing the raw files (6 GB).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..atomic import clean_stale, staged
from ..spec import CascadeSpec
from . import layout
from .errors import DataError
from .day import HISTORY_LEN, DayData
from .recflow import MISSING_POSITIVE_INDEX, build_day_arrays
from .timefeat import DEFAULT_TZ

log = logging.getLogger("deep_components.data")

CACHE_FORMAT_VERSION = 1
CACHE_DIRNAME = ".lcron_cache"
META = "meta.json"


def default_cache_dir(root: str | os.PathLike) -> Path:
    """``$LCRON_CACHE_DIR`` if set, else ``<root>/.lcron_cache``."""
    env = os.environ.get("LCRON_CACHE_DIR")
    return Path(env) if env else Path(root) / CACHE_DIRNAME


def source_files(root: Path, date: str) -> list[Path]:
    return [layout.table_path(root, layout.ALL_STAGE, date),
            layout.pickle_path(root, layout.REQUEST_DICT_DIR, date),
            layout.pickle_path(root, layout.HISTORY_DIR, date),
            root / layout.ID_COUNT_FILE]


def _file_digest(h, path: Path, label: str) -> None:
    h.update(label.encode() + b"\0")
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    h.update(b"\0")


def content_digest(day: DayData) -> str:
    """Hex SHA-256 (20 digits) of a day's arrays (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for k in DayData.ARRAYS:
        a = np.ascontiguousarray(getattr(day, k))
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        flat = a.reshape(-1).view(np.uint8)
        for i in range(0, flat.size, 1 << 26):            # mmapped arrays are read in pieces
            h.update(flat[i:i + (1 << 26)])
    return h.hexdigest()[:20]


def id_count_digest(root: str | os.PathLike) -> str:
    """Hex SHA-256 (20 digits) of ``others/id_cnt.pkl``'s bytes."""
    h = hashlib.sha256()
    path = Path(root) / layout.ID_COUNT_FILE
    try:
        _file_digest(h, path, layout.ID_COUNT_FILE)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return h.hexdigest()[:20]


def cache_key(root: Path, date: str, spec: CascadeSpec, *, tz: str, history_len: int,
              missing_index: int) -> str:
    """Hex digest of the sources' identity and every array-shaping setting."""
    files = []
    for p in source_files(root, date):
        try:
            st = p.stat()
        except FileNotFoundError:
            raise DataError(f"{p}: file not found") from None
        files.append([str(p.relative_to(root)), st.st_size, st.st_mtime_ns])
    ident = {"version": CACHE_FORMAT_VERSION, "date": date, "spec": spec.fingerprint(), "tz": tz,
             "history_len": history_len, "missing_index": missing_index, "files": files}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def load_day(root: str | os.PathLike, date: str, spec: CascadeSpec, tz: str = DEFAULT_TZ, *,
             cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
             history_len: int = HISTORY_LEN,
             missing_index: int = MISSING_POSITIVE_INDEX) -> DayData:
    """One RecFlow day as :class:`DayData` (memory-mapped from the cache; built on first use).

    ``root`` is a RecFlow-layout folder, ``date`` ``YYYY-MM-DD``, ``spec`` the cascade setting,
    ``tz`` the zone of the calendar features.  Raises :class:`DataError` on bad input.
    """
    root = layout.check_root(root)
    if not use_cache:
        return build_day_arrays(root, date, spec, tz=tz, history_len=history_len,
                                missing_index=missing_index)
    key = cache_key(root, date, spec, tz=tz, history_len=history_len, missing_index=missing_index)
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir(root)
    day_dir = base / spec.name / date
    entry = day_dir / key
    day = _read_entry(entry, date, spec)
    if day is not None:
        if "content_digest" not in day.stats:         # an entry written before digests existed
            day.stats["content_digest"] = content_digest(day)
            _add_digest(entry, day.stats["content_digest"])
        return day
    if entry.exists():  # unreadable (interrupted copy, disk fault): drop it and rebuild
        shutil.rmtree(entry, ignore_errors=True)
    t0 = time.perf_counter()
    day = build_day_arrays(root, date, spec, tz=tz, history_len=history_len,
                           missing_index=missing_index)
    day.stats["build_seconds"] = round(time.perf_counter() - t0, 3)
    day.stats["content_digest"] = content_digest(day)
    _write_entry(day_dir, key, day)
    log.info("cached %s %s (%d requests) in %.1fs -> %s", spec.name, date, day.num_requests,
             day.stats["build_seconds"], entry)
    return _read_entry(entry, date, spec) or day


def _read_entry(entry: Path, date: str, spec: CascadeSpec) -> DayData | None:
    meta_path = entry / META
    if not meta_path.is_file():
        return None
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        arrays = {k: np.load(entry / f"{k}.npy", mmap_mode="r") for k in DayData.ARRAYS}
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable cache entry %s (%s); rebuilding", entry, e)
        return None
    return DayData(date=date, spec_name=spec.name, stats=meta.get("stats", {}), **arrays)


def _add_digest(entry: Path, digest: str) -> None:
    """Record ``digest`` in an existing entry's meta.json (atomically; best effort: a read-only
    cache only means the digest is computed again next time)."""
    try:
        with open(entry / META) as f:
            meta = json.load(f)
        meta.setdefault("stats", {})["content_digest"] = digest
        with staged(entry / META) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
    except (OSError, ValueError):
        pass


def publish_entry(folder: Path, key: str, arrays: dict[str, np.ndarray], meta: dict,
                  what: str) -> None:
    """Write ``arrays`` (one ``.npy`` each) and ``meta.json`` into a temporary folder of
    ``folder``, then rename it to ``folder/key``: readers never see a half-written entry, and
    of two processes writing the same entry the first rename wins.  A failure removes the
    temporary folder and is one DataError naming ``folder`` and ``what``."""
    advice = "set LCRON_CACHE_DIR or --cache_dir to a writable folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        clean_stale(folder)
    except OSError as e:
        raise DataError(f"{folder}: cannot create {what} here ({e.strerror or e}); {advice}") from None
    try:
        with staged(folder / key, directory=True, replace=False) as tmp:  # first writer wins
            for k, v in arrays.items():
                np.save(tmp / f"{k}.npy", np.ascontiguousarray(v))
            with open(tmp / META, "w") as f:
                json.dump(meta, f, indent=1)
    except OSError as e:
        raise DataError(f"{folder}: cannot write {what} ({e.strerror or e}); {advice}") from None


def _write_entry(day_dir: Path, key: str, day: DayData) -> None:
    arrays = day.arrays()
    publish_entry(day_dir, key, arrays,
                  {"date": day.date, "spec": day.spec_name, "stats": day.stats,
                   "shapes": {k: list(v.shape) for k, v in arrays.items()}}, "the data cache")
    for stale in day_dir.iterdir():  # entries of older sources/settings
        if stale.name != key and not stale.name.startswith(".tmp-"):
            shutil.rmtree(stale, ignore_errors=True)
