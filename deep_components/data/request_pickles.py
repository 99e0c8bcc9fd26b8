"""The day pickles (``request_id -> array``) as ragged per-request arrays: streamed in batches,
the first rows of each request stacked."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import DataError
from .safe_pickle import safe_load_pickle

log = logging.getLogger("deep_components.data")


def first_rows(arrays: list[Any], width: int, k: int, where: str,
                req_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stack the first ``k`` rows of each request's ``[n, width]`` array.

    ``arrays`` holds one entry per request: an array (2-D, or 1-D for a one-row array), or None
    for a missing/empty stage; ``req_index`` their positions in the day (for messages).
    Returns (rows [b, k, width] int64 zero-padded, counts [b]).
    """
    R = len(arrays)
    fixed = []
    lengths = np.zeros(R, dtype=np.int64)
    for i, a in enumerate(arrays):  # one pass over the unpickled objects; no per-row work
        if a is None:
            continue
        try:
            a = np.asarray(a)
        except (ValueError, TypeError):
            raise DataError(f"{where}: request #{int(req_index[i])} of the day holds a "
                            "ragged/non-array value") from None
        if a.size == 0:
            continue
        if a.ndim == 1:
            a = a.reshape(1, -1)
        if a.ndim != 2 or a.shape[1] != width:
            raise DataError(f"{where}: expected arrays of shape [n, {width}], found {a.shape} "
                            f"(request #{int(req_index[i])} of the day)")
        if not np.issubdtype(a.dtype, np.integer):
            raise DataError(f"{where}: expected integer arrays, found dtype {a.dtype} "
                            f"(request #{int(req_index[i])} of the day)")
        a = a[:k]
        lengths[i] = a.shape[0]
        fixed.append(a)
    out = np.zeros((R, k, width), dtype=np.int64)
    if fixed:
        flat = np.concatenate(fixed, axis=0).astype(np.int64, copy=False)
        req = np.repeat(np.arange(R), lengths)
        start = np.cumsum(lengths) - lengths
        pos = np.arange(flat.shape[0]) - np.repeat(start, lengths)
        out[req, pos] = flat
    return out, lengths


def request_batches(path: Path, request_id: np.ndarray):
    """Stream a day pickle ``request_id -> value``: yields (rows [b] positions in
    ``request_id``, values) for the keys that are requests of the day, batch by batch, and
    checks at the end that every request was a key.  Bounded memory (pickle_stream); a pickle
    that shares objects across batches is read whole instead."""
    from .pickle_stream import SharedObject, iter_pickled_items

    def batches():
        try:
            yield from iter_pickled_items(path)
        except SharedObject:
            log.warning("%s shares objects across requests; reading it whole", path)
            d = safe_load_pickle(path)
            if not isinstance(d, Mapping):
                raise DataError(f"{path}: expected a dict at the top level, found "
                                f"{type(d).__name__}") from None
            yield list(d.items())

    filled = np.zeros(request_id.shape[0], dtype=bool)
    for pairs in batches():
        keys = [k for k, _ in pairs]
        ok = [isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in keys]
        if not all(ok):
            pairs = [p for p, good in zip(pairs, ok) if good]
            keys = [k for k, good in zip(keys, ok) if good]
        if not keys:
            continue
        k = np.array([int(x) for x in keys], dtype=np.int64)
        at = np.minimum(np.searchsorted(request_id, k), request_id.shape[0] - 1)
        hit = request_id[at] == k
        if not hit.any():
            continue
        rows = at[hit]
        values = [v for (_, v), h in zip(pairs, hit) if h]
        filled[rows] = True
        yield rows, values
    if not filled.all():
        r = int(request_id[np.flatnonzero(~filled)[0]])
        raise DataError(f"{path}: request {r} of all_stage is missing from this pickle "
                        "(every request of the day must be a key of both pickles)")
