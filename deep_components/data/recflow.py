"""Build one RecFlow day's per-request arrays (data/README.md, "One training example").

Everything is vectorised with numpy/pyarrow: request-level features come from the first row of
each request, positive indices from a sorted-key look-up of ``(request_id, video_id)``, calendar
features from integer arithmetic.  The only per-request Python is walking the unpickled dicts
once to collect their arrays, which the pickle format itself imposes.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..spec import LABEL_BASE, CascadeSpec
from . import layout
from .day import HISTORY_LEN, DayData
from .errors import DataError
from .id_counts import read_id_counts
from .request_pickles import first_rows, request_batches
from .tables import iter_column_batches
from .timefeat import DEFAULT_TZ, calendar_features

log = logging.getLogger("deep_components.data")

#: Index given to a positive video with no matching positive row in all_stage (label 30 - 21 = 9:
#: still above every negative label 5..8, below every found positive).  Counted in the stats.
MISSING_POSITIVE_INDEX = 21
#: category_level_one is stored unshifted; its padding index in candidate slots is 2.
CATE1_PAD = 2

REQUEST_COLUMNS = ("request_id", "request_timestamp", "user_id", "device_id", "gender", "age",
                   "province")
# Column layout of a request_id_dict stage array [n, 8].
(STAGE_VIDEO, STAGE_AUTHOR, STAGE_DURATION, STAGE_CATE2, STAGE_UTYPE, STAGE_UPLOAD_TS, STAGE_CATE1,
 STAGE_EFFECTIVE) = range(8)
# Column layout of a seq_effective_50_dict history array [50, 10].
(HIST_VIDEO, HIST_AUTHOR, HIST_CATE2, HIST_CATE1, HIST_UTYPE, HIST_UPLOAD_TS, HIST_DURATION,
 HIST_REQ_TS, HIST_PLAY, HIST_REQ_ID) = range(10)


def _check_range(name: str, values: np.ndarray, valid: np.ndarray | None, upper: int,
                 where: str) -> None:
    """Raise unless ``0 <= values < upper`` on valid entries."""
    v = values if valid is None else values[valid]
    if v.size == 0:
        return
    lo, hi = int(v.min()), int(v.max())
    if lo < 0 or hi >= upper:
        bad = lo if lo < 0 else hi
        raise DataError(f"{where}: {name} {bad} outside [0, {upper}) given by "
                        f"{layout.ID_COUNT_FILE} ({name}: {upper})")


# --------------------------------------------------------------------------------------------
# the day


@dataclass
class _Requests:
    """What all_stage says about a day: its requests and their positive rows."""

    request_id: np.ndarray        # [R] sorted
    first: dict[str, np.ndarray]  # request column -> [R] value of the request's first row
    pos_keys: np.ndarray          # sorted (request_id * vid_span + video_id) of positive rows
    pos_index: np.ndarray         # their index column
    vid_span: int


def _scan_requests(all_stage_path: Path, spec: CascadeSpec, counts: Mapping[str, int],
                   date: str) -> _Requests:
    """One pass over all_stage in record batches: each request's first-row features (checking
    that a request's columns are constant) and the positive rows' (request, video) -> index."""
    pos_flag = spec.positive_group
    wanted = REQUEST_COLUMNS + ("video_id", pos_flag, spec.index_column)
    firsts: list[dict[str, np.ndarray]] = []      # per batch: its first row of each request
    pos_rid, pos_vid, pos_idx = [], [], []
    n_rows, vid_max = 0, 0
    for cols in iter_column_batches(all_stage_path, wanted):
        rid = cols["request_id"]
        if rid.size == 0:
            continue
        u, first, inverse = np.unique(rid, return_index=True, return_inverse=True)
        for name in REQUEST_COLUMNS[1:]:  # one request id = one request: its columns are constant
            col = cols[name]
            bad = np.flatnonzero(col != col[first][inverse])
            if bad.size:
                i = int(bad[0])
                _conflict(all_stage_path, int(rid[i]), name, int(col[first[inverse[i]]]), int(col[i]))
        firsts.append({"row": first + n_rows, **{k: cols[k][first] for k in REQUEST_COLUMNS}})
        is_pos = cols[pos_flag] == 1
        pos_rid.append(rid[is_pos])
        pos_vid.append(cols["video_id"][is_pos])
        pos_idx.append(cols[spec.index_column][is_pos])
        vid_max = max(vid_max, int(cols["video_id"].max()))
        n_rows += rid.size
    if n_rows == 0:
        raise DataError(f"{all_stage_path}: no rows (empty day {date})")
    cat = {k: np.concatenate([f[k] for f in firsts]) for k in firsts[0]}
    order = np.lexsort((cat["row"], cat["request_id"]))          # by request, then file order
    cat = {k: v[order] for k, v in cat.items()}
    request_id, first = np.unique(cat["request_id"], return_index=True)
    owner = np.repeat(np.arange(request_id.size), np.diff(np.append(first, cat["row"].size)))
    for name in REQUEST_COLUMNS[1:]:   # a request spanning batches: each batch's first row agrees
        col = cat[name]
        bad = np.flatnonzero(col != col[first][owner])
        if bad.size:
            i = int(bad[0])
            _conflict(all_stage_path, int(cat["request_id"][i]), name, int(col[first[owner[i]]]), int(col[i]))
    vid_span = max(int(counts["video_id"]), vid_max + 1) + 1
    pos_keys = np.concatenate(pos_rid) * vid_span + np.concatenate(pos_vid)
    pos_index = np.concatenate(pos_idx)
    order = np.argsort(pos_keys, kind="stable")
    return _Requests(request_id, {k: cat[k][first] for k in REQUEST_COLUMNS}, pos_keys[order],
                     pos_index[order], vid_span)


def _conflict(all_stage_path: Path, rid: int, name: str, a: int, b: int):
    raise DataError(f"{all_stage_path}: request_id {rid} has conflicting {name} values ({a} and {b}): "
                    "duplicated request id? (every request-level column must be constant within "
                    "a request)")


def _fill_candidates(request_dict_path: Path, spec: CascadeSpec, req: _Requests, counts: Mapping[str, int],
                     tz: str, missing_index: int, items: np.ndarray, item_mask: np.ndarray,
                     labels: np.ndarray) -> int:
    """Candidate groups from request_id_dict, streamed; returns the missing-positive count."""
    K = spec.group_size
    # per request, so a request handed out twice (the whole-file fallback) is counted once
    missing = np.zeros(req.request_id.shape[0], dtype=np.int64)
    for rows, values in request_batches(request_dict_path, req.request_id):
        per_request = [v if isinstance(v, Mapping) else _bad_stage(request_dict_path, v) for v in values]
        for g, group in enumerate(spec.groups):
            where = f"{request_dict_path} [{group}]"
            got, n = first_rows([s.get(group) for s in per_request], 8, K, where, rows)
            valid = np.arange(K)[None, :] < n[:, None]  # [b, K]
            for name, c in (("video_id", STAGE_VIDEO), ("author_id", STAGE_AUTHOR),
                            ("category_level_two", STAGE_CATE2), ("upload_type", STAGE_UTYPE)):
                _check_range(name, got[..., c], valid, counts[name], where)
            _check_range("category_level_one", got[..., STAGE_CATE1], valid,
                         counts["category_level_one"] + 2, where)
            blk = np.zeros(got.shape, dtype=np.int64)
            blk[..., 0] = got[..., STAGE_VIDEO] + 1
            blk[..., 1] = got[..., STAGE_AUTHOR] + 1
            blk[..., 2] = got[..., STAGE_CATE2] + 1
            blk[..., 3] = got[..., STAGE_CATE1]
            blk[..., 4] = got[..., STAGE_UTYPE] + 1
            if valid.any():
                blk[valid, 5:8] = calendar_features(got[..., STAGE_UPLOAD_TS][valid], tz)
            blk[~valid] = 0
            blk[~valid, 3] = CATE1_PAD
            sl = spec.group_slice(group)
            items[rows, sl] = blk
            item_mask[rows, sl] = valid
            if g == 0:
                keys = req.request_id[rows][:, None] * req.vid_span + got[..., STAGE_VIDEO]
                if req.pos_keys.size:
                    at = np.minimum(np.searchsorted(req.pos_keys, keys), req.pos_keys.size - 1)
                    found = req.pos_keys[at] == keys
                    idx = np.where(found, req.pos_index[at], missing_index)
                else:
                    found = np.zeros_like(valid)
                    idx = np.full(keys.shape, missing_index, dtype=np.int64)
                missing[rows] = (valid & ~found).sum(axis=1)
                lab = LABEL_BASE - idx
            else:
                lab = np.full(valid.shape, LABEL_BASE - spec.negative_index[group], dtype=np.int64)
            labels[rows, sl] = np.where(valid, lab, 0)
    return int(missing.sum())


def _fill_histories(history_path: Path, req: _Requests, req_ts_ms: np.ndarray, counts: Mapping[str, int],
                    history_len: int, history: np.ndarray, hmask: np.ndarray) -> None:
    """Histories from seq_effective_50_dict, streamed and checked batch by batch."""
    for rows, hist_list in request_batches(history_path, req.request_id):
        try:
            raw = np.stack(hist_list)
        except (ValueError, TypeError):
            shapes = sorted({str(getattr(h, "shape", type(h).__name__)) for h in hist_list})
            raise DataError(f"{history_path}: expected every history to be an array of shape "
                            f"[{HISTORY_LEN}, 10], found {', '.join(shapes[:5])}") from None
        if raw.ndim != 3 or raw.shape[1] != HISTORY_LEN or raw.shape[2] < 8:
            raise DataError(f"{history_path}: expected histories of shape [{HISTORY_LEN}, 10], found "
                            f"{raw.shape[1:]}")
        if not np.issubdtype(raw.dtype, np.integer):
            raise DataError(f"{history_path}: expected integer histories, found dtype {raw.dtype}")
        raw = raw.astype(np.int64, copy=False)
        _check_history_layout(raw, req_ts_ms[rows], req.request_id[rows], history_path)
        raw = raw[:, HISTORY_LEN - history_len:]
        m = raw[..., HIST_REQ_TS] > 0
        for name, c in (("video_id", HIST_VIDEO), ("author_id", HIST_AUTHOR),
                        ("category_level_two", HIST_CATE2), ("upload_type", HIST_UTYPE)):
            _check_range(name, raw[..., c], m, counts[name], str(history_path))
        _check_range("category_level_one", raw[..., HIST_CATE1], m, counts["category_level_one"] + 2,
                     str(history_path))
        h = np.zeros((len(rows), history_len, 5), dtype=np.int32)
        for j, (c, shift) in enumerate(((HIST_VIDEO, 1), (HIST_AUTHOR, 1), (HIST_CATE2, 1), (HIST_CATE1, 0),
                                        (HIST_UTYPE, 1))):
            h[..., j] = np.where(m, raw[..., c] + shift, 0)
        history[rows] = h
        hmask[rows] = m


def build_day_arrays(root: str | os.PathLike, date: str, spec: CascadeSpec, *,
                     tz: str = DEFAULT_TZ, history_len: int = HISTORY_LEN,
                     missing_index: int = MISSING_POSITIVE_INDEX) -> DayData:
    """Read one raw day of ``root`` and build its arrays (no cache; see :func:`load_day`).

    Streams every file: all_stage in record batches of its needed columns, both pickles item
    batch by item batch (pickle_stream), so peak memory is about the output arrays plus one
    batch, whatever the day's size."""
    root = layout.check_root(root)
    if not 1 <= history_len <= HISTORY_LEN:
        raise ValueError(f"history_len must be in 1..{HISTORY_LEN}, got {history_len}")
    all_stage_path = layout.table_path(root, layout.ALL_STAGE, date)
    request_dict_path = layout.pickle_path(root, layout.REQUEST_DICT_DIR, date)
    history_path = layout.pickle_path(root, layout.HISTORY_DIR, date)
    counts = read_id_counts(root)

    # ---- request-level features: first row of each request -------------------------------
    req = _scan_requests(all_stage_path, spec, counts, date)
    R = req.request_id.shape[0]
    context = np.zeros((R, 8), dtype=np.int32)
    req_ts_ms = req.first["request_timestamp"]
    context[:, :3] = calendar_features(req_ts_ms // 1000, tz)
    for j, name in enumerate(("user_id", "device_id", "gender", "age", "province")):
        v = req.first[name]
        _check_range(name, v, None, counts[name], f"{all_stage_path}")
        context[:, 3 + j] = v + 1

    # ---- candidate groups from request_id_dict --------------------------------------------
    N = spec.num_slots
    items = np.zeros((R, N, 8), dtype=np.int32)
    items[:, :, 3] = CATE1_PAD
    item_mask = np.zeros((R, N), dtype=bool)
    labels = np.zeros((R, N), dtype=np.int16)
    stats: dict[str, Any] = {"requests": int(R), "tz": tz}
    stats["missing_positive"] = _fill_candidates(request_dict_path, spec, req, counts, tz,
                                                 missing_index, items, item_mask, labels)
    if stats["missing_positive"]:
        log.warning("%s: %d positive %s videos have no %s row in %s; they get index %d (label %d)",
                    date, stats["missing_positive"], spec.positive_group, spec.positive_group, all_stage_path,
                    missing_index, LABEL_BASE - missing_index)

    # ---- histories from seq_effective_50_dict ---------------------------------------------
    history = np.zeros((R, history_len, 5), dtype=np.int32)
    hmask = np.zeros((R, history_len), dtype=bool)
    _fill_histories(history_path, req, req_ts_ms, counts, history_len, history, hmask)
    stats["empty_history"] = int((~hmask.any(axis=1)).sum())
    stats["padded_slots"] = int((~item_mask).sum())
    return DayData(date=date, spec_name=spec.name, request_id=req.request_id.astype(np.int64),
                   context=context, history=history, history_mask=hmask, items=items,
                   item_mask=item_mask, labels=labels, stats=stats)


def _check_history_layout(raw: np.ndarray, req_ts_ms: np.ndarray, request_id: np.ndarray,
                          path: Path) -> None:
    """Histories are left-padded zero rows (valid rows, column 7 > 0, a contiguous suffix) of
    views no later than the request.  Anything else is a corrupt or foreign file."""
    valid = raw[..., HIST_REQ_TS] > 0                                        # [R, 50]
    n = valid.sum(axis=1)
    problems = (
        (valid != (np.arange(raw.shape[1])[None, :] >= raw.shape[1] - n[:, None])).any(axis=1),
        "valid rows (column 7 > 0) are not a contiguous suffix (histories are left-padded)",
        (raw[~valid] != 0).any(axis=-1) if (~valid).any() else np.zeros(0, bool),
        "a padded row (column 7 <= 0) holds non-zero values",
        (np.where(valid, raw[..., HIST_REQ_TS], 0) > req_ts_ms[:, None]).any(axis=1),
        "a history view is later than the request itself",
    )
    for bad, what in zip(problems[::2], problems[1::2]):
        if bad.any():
            if bad.shape[0] == raw.shape[0]:
                rid = int(request_id[np.flatnonzero(bad)[0]])
            else:  # per padded row: map back to its request
                rid = int(request_id[np.nonzero(~valid)[0][np.flatnonzero(bad)[0]]])
            raise DataError(f"{path}: request {rid}: {what}; corrupt file?")


def _bad_stage(path: Path, obj: Any):
    raise DataError(f"{path}: expected each request to map to a dict stage -> array, found "
                    f"{type(obj).__name__}")
