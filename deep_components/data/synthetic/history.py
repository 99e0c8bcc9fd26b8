"""Histories built forward in time from effective views (earlier views only, across days)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .params import HISTORY_LEN
from .simulation import DayLog
from .world import World, sample_in_cate1, sample_pref_cate1


@dataclass
class Views:
    """Effective views sorted by (user, time)."""

    user: np.ndarray
    ts_ms: np.ndarray
    video: np.ndarray
    request_id: np.ndarray
    playing_time: np.ndarray


def prehistory(w: World, rng: np.random.Generator, first_request_id: int) -> tuple[dict, int]:
    """Views before the first day that seed every user's history (virtual requests)."""
    p = w.p
    U, L = p.users, p.prehistory_views
    n = rng.integers(L // 2, L + 1, size=U) if L else np.zeros(U, dtype=np.int64)
    user = np.repeat(np.arange(U), n)
    if user.size == 0:
        e = np.zeros(0, dtype=np.int64)
        return dict(user=e, ts_ms=e, video=e, request_id=e, playing_time=e), 0
    cate = sample_pref_cate1(w, rng, user, 1)[:, 0]
    video = sample_in_cate1(w, rng, cate)
    ts = w.day_start_ms[0] - rng.integers(60_000, 30 * 86_400_000, size=user.size)
    rid = first_request_id + np.arange(user.size, dtype=np.int64)
    play = (w.video_duration[video] * rng.uniform(0.5, 1.0, size=user.size)).astype(np.int64)
    return dict(user=user, ts_ms=ts, video=video, request_id=rid, playing_time=play), user.size


def collect_views(parts: list[dict]) -> Views:
    cat = {k: np.concatenate([d[k] for d in parts]) for k in parts[0]}
    order = np.lexsort((cat["ts_ms"], cat["user"]))
    return Views(**{k: v[order] for k, v in cat.items()})


def day_views(log: DayLog) -> dict:
    r, c = np.nonzero(log.feedback["effective_view"])
    return dict(user=log.user[r], ts_ms=log.ts_ms[r], video=log.pool[r, c],
                request_id=log.request_id[r], playing_time=log.feedback["playing_time"][r, c])


def last_views(views: Views, user: np.ndarray, ts_ms: np.ndarray, n_max: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(src [R, n_max] indices into ``views``, valid [R, n_max]): each request's last <= n_max
    effective views strictly before it, oldest first, left-padded."""
    span = int(max(views.ts_ms.max(initial=0), ts_ms.max(initial=0))) + 1
    key = views.user * span + views.ts_ms  # ascending: views are sorted by (user, time)
    end = np.searchsorted(key, user * span + ts_ms, side="left")
    begin = np.searchsorted(key, user * span, side="left")
    n = np.minimum(end - begin, n_max)
    j = np.arange(n_max)[None, :]
    valid = j >= n_max - n[:, None]
    return np.where(valid, end[:, None] - n_max + j, 0), valid


def recent_cate2(w: World, views: Views, user: np.ndarray, ts_ms: np.ndarray, k: int) -> np.ndarray:
    """[R, k] level-two category (entity index) of each request's last k effective views (-1 none)."""
    src, valid = last_views(views, user, ts_ms, k)
    if views.video.size == 0:
        return np.full(src.shape, -1, dtype=np.int64)
    return np.where(valid, w.video_cate2[views.video[src]], -1)


def histories(w: World, views: Views, user: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
    """[R, 50, 10] int64: each request's last <= 50 effective views strictly before it, left-padded."""
    src, valid = last_views(views, user, ts_ms, HISTORY_LEN)
    out = np.zeros((len(user), HISTORY_LEN, 10), dtype=np.int64)
    if views.video.size == 0:
        return out
    v = views.video[src]
    cols = [w.ids["video_id"][v], w.ids["author_id"][w.video_author[v]],
            w.ids["category_level_two"][w.video_cate2[v]],
            w.ids["category_level_one"][w.video_cate1[v]], w.ids["upload_type"][w.video_utype[v]],
            w.video_upload_ts[v], w.video_duration[v], views.ts_ms[src], views.playing_time[src],
            views.request_id[src]]
    for c, val in enumerate(cols):
        out[..., c] = np.where(valid, val, 0)
    return out
