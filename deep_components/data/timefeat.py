"""Calendar features from Unix timestamps, vectorised and independent of the machine's zone.

weekday 1..7 (Monday = 1), hour 1..24, minute 1..60, in a named time zone (default
``Asia/Shanghai``, RecFlow's UTC+8).  The zone's UTC offset is looked up once per distinct hour
(offsets only change on transitions, which tz databases place on whole minutes), then everything
is integer arithmetic.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .layout import DEFAULT_TZ

_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


def check_tz(tz: str) -> None:
    """A known IANA time zone, or a ValueError naming --tz."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"--tz {tz!r}: unknown time zone (an IANA name such as Asia/Shanghai "
                         "or UTC)") from None


def utc_offset_seconds(ts_seconds: np.ndarray, tz: str) -> np.ndarray:
    """UTC offset (seconds) of zone ``tz`` at each Unix time in seconds; shape as input."""
    ts = np.asarray(ts_seconds, dtype=np.int64)
    if ts.size == 0:
        return np.zeros_like(ts)
    # Offsets change on minute boundaries at the finest: evaluate once per minute of a dense grid
    # over the data's span (no sort), or once per distinct minute when the span is very long.
    minute = ts // 60
    lo, hi = int(minute.min()), int(minute.max())
    if hi - lo <= _GRID_MAX_MINUTES:
        grid = np.arange(lo, hi + 1, dtype=np.int64)
        return _offsets_at_minutes(grid, tz)[minute - lo]
    minutes, inverse = np.unique(minute, return_inverse=True)
    return _offsets_at_minutes(minutes, tz)[inverse].reshape(ts.shape)


_GRID_MAX_MINUTES = 4_000_000  # ~7.6 years


def _offsets_at_minutes(minutes: np.ndarray, tz: str) -> np.ndarray:
    utc = pd.DatetimeIndex(minutes * 60_000_000_000, tz="UTC")
    try:
        local = utc.tz_convert(tz)
    except Exception as e:  # unknown zone name
        raise ValueError(f"unknown time zone {tz!r} ({e})") from None
    return local.tz_localize(None).asi8 // 1_000_000_000 - minutes * 60


def calendar_features(ts_seconds: np.ndarray, tz: str = DEFAULT_TZ) -> np.ndarray:
    """[..., 3] int64 array of (weekday 1..7 Monday=1, hour 1..24, minute 1..60) in zone ``tz``."""
    ts = np.asarray(ts_seconds, dtype=np.int64)
    local = ts + utc_offset_seconds(ts, tz)
    days = np.floor_divide(local, 86_400)
    sec_of_day = local - days * 86_400
    out = np.empty(ts.shape + (3,), dtype=np.int64)
    out[..., 0] = (days + _EPOCH_WEEKDAY) % 7 + 1
    out[..., 1] = sec_of_day // 3600 + 1
    out[..., 2] = (sec_of_day // 60) % 60 + 1
    return out
