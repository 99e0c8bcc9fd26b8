"""The synthetic world: users, videos and authors with their attributes, and how candidates
are drawn for a request."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from ..timefeat import utc_offset_seconds
from .params import WorldParams


@dataclass
class World:
    p: WorldParams
    ids: dict[str, np.ndarray]          # entity index -> stored id, per field
    user_device: np.ndarray             # [U] device entity index
    user_gender: np.ndarray
    user_age: np.ndarray
    user_province: np.ndarray
    user_activity: np.ndarray           # [U] sampling weights (sum 1)
    user_latent: np.ndarray             # [U, d]
    user_pref: np.ndarray               # [U, C1]
    video_author: np.ndarray            # [V]
    video_cate2: np.ndarray
    video_cate1: np.ndarray
    video_utype: np.ndarray
    video_upload_ts: np.ndarray         # seconds
    video_duration: np.ndarray          # ms
    video_pop: np.ndarray               # [V] log-popularity
    video_latent: np.ndarray            # [V, d]
    video_static: np.ndarray            # [V] item-only relevance part
    cate2_quality: np.ndarray           # [C2]
    author_quality: np.ndarray          # [A]
    hour_cate: np.ndarray               # [24, C1]
    by_cate1_order: np.ndarray          # videos sorted by cate1
    by_cate1_start: np.ndarray          # [C1 + 1] offsets into by_cate1_order
    by_cate1_cum: np.ndarray            # cumulative popularity weights in that order
    pop_cum: np.ndarray                 # cumulative popularity weights over all videos
    day_start_ms: list[int] = field(default_factory=list)


def _spread_ids(rng: np.random.Generator, n: int, space: int | None) -> np.ndarray:
    """Entity index -> stored id: dense 0..n-1, or n distinct ids spread over [0, space)."""
    if space is None or space == n:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(space, size=n, replace=False)).astype(np.int64)


def build_world(p: WorldParams, rng: np.random.Generator) -> World:
    U, V, A, C1, C2, d = p.users, p.videos, p.authors, p.cate1, p.cate2, p.latent_dim
    space = p.id_space or {}
    ids = {k: _spread_ids(rng, n, space.get(k)) for k, n in p.entity_counts().items()}
    start = dt.datetime.fromisoformat(p.start_date)
    day_start_ms = []
    for i in range(p.days):
        naive = start + dt.timedelta(days=i)
        utc_guess = int(naive.replace(tzinfo=dt.timezone.utc).timestamp())
        off = int(utc_offset_seconds(np.array([utc_guess]), p.tz)[0])
        day_start_ms.append((utc_guess - off) * 1000)
    cate2_parent = np.arange(C2) % C1                       # cate2 nests in cate1
    cate2_size = rng.zipf(1.6, size=C2).clip(1, 50).astype(float)
    video_cate2 = np.concatenate([np.arange(C2), rng.choice(C2, size=V - C2, p=cate2_size / cate2_size.sum())]) \
        if V >= C2 else rng.choice(C2, size=V)
    rng.shuffle(video_cate2)
    video_cate1 = cate2_parent[video_cate2]
    author_cate2 = rng.choice(C2, size=A)
    video_author = rng.integers(0, A, size=V)
    # authors specialise: most of an author's videos sit in the author's own category
    own = rng.random(V) < 0.7
    video_cate2 = np.where(own & (cate2_parent[author_cate2[video_author]] == video_cate1),
                           author_cate2[video_author], video_cate2)
    video_cate1 = cate2_parent[video_cate2]
    video_pop = rng.normal(0.0, 1.0, size=V)
    video_latent = rng.normal(0.0, 1.0, size=(V, d))
    author_q = rng.normal(0.0, 1.0, size=A)
    cate2_q = rng.normal(0.0, 1.0, size=C2)
    video_static = (p.w_pop * video_pop + p.w_cate2 * cate2_q[video_cate2]
                    + p.w_author * author_q[video_author])
    first_ms = day_start_ms[0]
    video_upload_ts = first_ms // 1000 - rng.integers(3_600, 60 * 86_400, size=V)
    video_duration = rng.integers(5_000, 300_000, size=V)
    weights = np.exp(0.8 * video_pop)
    order = np.argsort(video_cate1, kind="stable")
    start_idx = np.searchsorted(video_cate1[order], np.arange(C1 + 1))
    return World(
        p=p, ids=ids,
        user_device=rng.permutation(U),
        user_gender=rng.integers(0, 3, size=U), user_age=rng.integers(0, 8, size=U),
        user_province=rng.integers(0, p.provinces, size=U),
        user_activity=normalise(rng.lognormal(0.0, 0.8, size=U)),
        user_latent=rng.normal(0.0, 1.0, size=(U, d)),
        user_pref=rng.normal(0.0, 1.0, size=(U, C1)),
        video_author=video_author, video_cate2=video_cate2, video_cate1=video_cate1,
        video_utype=rng.integers(0, p.upload_types, size=V), video_upload_ts=video_upload_ts,
        video_duration=video_duration, video_pop=video_pop, video_latent=video_latent,
        video_static=video_static, cate2_quality=cate2_q, author_quality=author_q,
        hour_cate=rng.normal(0.0, 1.0, size=(24, C1)),
        by_cate1_order=order, by_cate1_start=start_idx, by_cate1_cum=np.cumsum(weights[order]),
        pop_cum=np.cumsum(weights), day_start_ms=day_start_ms)


def normalise(w: np.ndarray) -> np.ndarray:
    return w / w.sum()


def _sample_by_pop(w: World, rng: np.random.Generator, size) -> np.ndarray:
    u = rng.random(size) * w.pop_cum[-1]
    return np.minimum(np.searchsorted(w.pop_cum, u, side="right"), w.p.videos - 1)


def sample_in_cate1(w: World, rng: np.random.Generator, cate1: np.ndarray) -> np.ndarray:
    """One popularity-weighted video from each given level-one category (empty -> any video)."""
    lo, hi = w.by_cate1_start[cate1], w.by_cate1_start[cate1 + 1]
    cum = w.by_cate1_cum
    base = np.where(lo > 0, cum[np.maximum(lo - 1, 0)], 0.0)
    top = np.where(hi > 0, cum[np.maximum(hi - 1, 0)], 0.0)
    pos = np.searchsorted(cum, base + rng.random(cate1.shape) * (top - base), side="right")
    pos = np.clip(pos, lo, np.maximum(hi - 1, lo))
    out = w.by_cate1_order[np.minimum(pos, w.p.videos - 1)]
    empty = hi <= lo
    if empty.any():
        out[empty] = _sample_by_pop(w, rng, int(empty.sum()))
    return out


def sample_pref_cate1(w: World, rng: np.random.Generator, users: np.ndarray, k: int) -> np.ndarray:
    """[len(users), k] level-one categories drawn from softmax(pref[user])."""
    pref = w.user_pref[users]
    cum = np.cumsum(np.exp(pref - pref.max(axis=1, keepdims=True)), axis=1)
    cum /= cum[:, -1:]
    # one searchsorted over all rows: row i's CDF lives in [i, i + 1]
    row = np.arange(len(users))[:, None]
    flat = (cum + row).ravel()
    at = np.searchsorted(flat, (rng.random((len(users), k)) + row).ravel(), side="right")
    return np.minimum(at.reshape(len(users), k) - row * w.p.cate1, w.p.cate1 - 1)


def unique_rows(w: World, rng: np.random.Generator, users: np.ndarray, n: int) -> np.ndarray:
    """[R, n] distinct videos per request: a preference half and a popularity half."""
    R = len(users)
    out = np.empty((R, n), dtype=np.int64)
    todo = np.arange(R)
    extra = max(8, n // 3)
    while todo.size:
        m = n + extra
        n_pref = int(round(m * w.p.pool_pref_frac))
        cand = np.empty((todo.size, m), dtype=np.int64)
        cand[:, :n_pref] = sample_in_cate1(w, rng, sample_pref_cate1(w, rng, users[todo], n_pref))
        cand[:, n_pref:] = _sample_by_pop(w, rng, (todo.size, m - n_pref))
        # keep the first occurrence of each video, in draw order
        order = np.argsort(cand, axis=1, kind="stable")
        srt = np.take_along_axis(cand, order, axis=1)
        dup_sorted = np.zeros_like(srt, dtype=bool)
        dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
        dup = np.zeros_like(dup_sorted)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        keep_order = np.argsort(dup, axis=1, kind="stable")
        ok = (~dup).sum(axis=1) >= n
        out[todo[ok]] = np.take_along_axis(cand, keep_order, axis=1)[ok, :n]
        todo = todo[~ok]
        extra *= 2
    # mix the two halves so pool position carries no information
    return np.take_along_axis(out, rng.random((R, n)).argsort(axis=1), axis=1)
