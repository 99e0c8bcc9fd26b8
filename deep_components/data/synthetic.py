"""A synthetic RecFlow world, written in exactly the RecFlow layout (data/README.md).

Usage::

    python -m deep_components.data.synthetic --out data/synthetic/small --preset small [--seed 0]

The world (see data/README.md for every parameter):

* users (device, gender, age, province, activity), videos (author, category_level_two nested in
  category_level_one, upload_type, upload time, duration, popularity), authors (quality);
* a planted relevance ``r(u, v, t) = w_latent <p_u, q_v>/sqrt(d) + w_pref pref[u, cate1(v)]
  + w_pop pop[v] + w_cate2 qual[cate2(v)] + w_author qual[author(v)] + w_hour H[hour(t), cate1(v)]
  + w_recent recent(u, v) + sigma_r eps`` (``recent``: the share of the user's last views in
  the candidate's level-two category);
* per request a candidate pool (half from the user's preferred categories, half by popularity;
  no video twice), and a logged cascade of stage models, each scoring its own view of ``r``
  (``stage_views``: cheap, popularity-biased signals and a coarse embedding early, every term
  late, a freshness rule at rerank; the first world, ``stage_views=None``, gives every stage
  ``r`` itself) plus its own noise (noisier early, sharper late): pre-rank keeps ``prerank_keep`` (rest ``prerank_neg``), coarse keeps
  ``coarse_keep`` (rest ``coarse_neg``), rank orders the survivors (top 10 ``rank_pos`` with
  ``rank_index`` 1..10; top ``rerank_size`` go on to rerank; positions after that ``rank_neg``),
  rerank orders those (top 10 ``rerank_pos`` with ``rerank_index`` 1..10, rest ``rerank_neg``),
  its first ``show`` items are exposed (``realshow``) with feedback drawn from ``r``;
* histories built forward in time from effective views (a pre-period seeds every user), so a
  request's history holds only earlier views, across days;
* a fraction ``short_frac`` of requests has one stage array cut to 0..9 rows, so padding occurs.

Everything is vectorised over requests and items; the only per-request Python is building the
pickled dicts, which the format imposes.  Days are generated one after the other and, within a
day, ``chunk_requests`` requests at a time, written as they are made (Feather record batches,
streamed pickles), so memory follows a chunk, not the dataset.  Deterministic for a given seed
and parameters.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..parsing import OneLineParser
from . import layout
from .pickle_writer import DictPickleWriter
from .timefeat import DEFAULT_TZ, utc_offset_seconds

STAGE_LABELS = ("realshow", "rerank_pos", "rerank_neg", "rank_pos", "rank_neg", "coarse_neg",
                "prerank_neg")
FLAG_COLUMNS = ("realshow", "rerank_pos", "rerank_neg", "rank_pos", "rank_neg", "coarse_neg",
                "prerank_neg")
FEEDBACK_COLUMNS = ("playing_time", "effective_view", "long_view", "like", "follow", "forward",
                    "comment")
#: RecFlow's real id cardinalities (data/README.md), used by the recflow-scale preset.
RECFLOW_ID_COUNTS = {
    "user_id": 42_472, "device_id": 42_561, "age": 8, "gender": 3, "province": 79,
    "video_id": 82_216_301, "author_id": 33_474_011, "category_level_one": 140,
    "category_level_two": 784, "upload_type": 40,
}
HISTORY_LEN = 50
GROUP = 10
#: the terms of the planted relevance r, in the order of a stage_views row ("residual" is
#: sigma_r * noise: relevance no feature of the dataset carries)
RELEVANCE_TERMS = ("latent", "pref", "pop", "cate2", "author", "hour", "recent", "residual")
#: the logged cascade of the default world (small, medium); data/README.md argues each row
PRODUCTION_VIEWS = (
    # latent pref  pop  cate2 author hour recent residual
    (1.0, 1.0, 1.5, 0.5, 0.0, 0.0, 0.0, 0.0),    # pre-rank: cheap item and category signals
    (1.0, 1.0, 1.2, 1.0, 1.0, 0.0, 0.0, 0.0),    # coarse rank: adds item quality
    (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),    # rank: every signal, the session included
    (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),    # rerank: rank's view plus business rules
)
PRODUCTION_WORLD = dict(stage_views=PRODUCTION_VIEWS, stage_latent_dims=(2, 4, 8, 8),
                        w_recent=1.0, recent_views=5, w_fresh=0.5)


@dataclass
class WorldParams:
    """Every knob of the synthetic world.  See data/README.md."""

    days: int = 4
    requests_per_day: int = 300
    users: int = 200
    videos: int = 1_500
    authors: int = 300
    cate1: int = 12
    cate2: int = 48
    upload_types: int = 8
    provinces: int = 79
    start_date: str = "2024-01-13"
    tz: str = DEFAULT_TZ
    # candidate pool and the logged cascade
    pool_size: int = 70
    prerank_keep: int = 50
    coarse_keep: int = 35
    rerank_size: int = 20
    show: int = 4
    pool_pref_frac: float = 0.5
    # planted relevance
    latent_dim: int = 8
    w_latent: float = 0.6
    w_pref: float = 1.0
    w_pop: float = 0.5
    w_cate2: float = 0.5
    w_author: float = 0.3
    w_hour: float = 0.4
    sigma_r: float = 0.3
    stage_noise: tuple[float, float, float, float] = (1.2, 1.0, 0.8, 0.6)  # prerank..rerank
    # the logged cascade's stage models (data/README.md, "The logged cascade").  None: every
    # stage sees the whole relevance r plus its own noise (the first world, preset small-v1);
    # else one row per stage (prerank, coarse, rank, rerank) of weights on the relevance terms
    # RELEVANCE_TERMS, relative to their weight in r (1 = seen as the truth weighs it,
    # 0 = not seen, > 1 = over-weighted: a bias)
    stage_views: tuple[tuple[float, ...], ...] | None = None
    #: latent dimensions each stage's model resolves (a coarse embedding early, all of it late)
    stage_latent_dims: tuple[int, int, int, int] = (8, 8, 8, 8)
    #: weight in r of the user's session interest: the share of the last ``recent_views``
    #: effective views whose level-two category is the candidate's
    w_recent: float = 0.0
    recent_views: int = 5
    #: rerank's freshness boost (a business rule, not relevance): w_fresh * exp(-age_days / 7)
    w_fresh: float = 0.0
    # histories and padding
    prehistory_views: int = 30
    short_frac: float = 0.03
    # id spaces: None = dense ids (id_cnt = entity counts); else id_cnt values, ids spread in them
    id_space: dict | None = None
    # requests simulated and written at a time (None = a whole day at once); bounds memory
    chunk_requests: int | None = None

    def validate(self) -> None:
        if self.stage_views is not None:
            if len(self.stage_views) != 4 or any(len(v) != len(RELEVANCE_TERMS)
                                                 for v in self.stage_views):
                raise ValueError(f"stage_views needs 4 rows (prerank, coarse, rank, rerank) of "
                                 f"{len(RELEVANCE_TERMS)} weights ({', '.join(RELEVANCE_TERMS)})")
        if len(self.stage_latent_dims) != 4 or not all(
                1 <= k <= self.latent_dim for k in self.stage_latent_dims):
            raise ValueError(f"stage_latent_dims needs 4 values in 1..latent_dim={self.latent_dim}")
        if self.recent_views < 1:
            raise ValueError("recent_views must be >= 1")
        if not (self.pool_size - self.prerank_keep >= GROUP and
                self.prerank_keep - self.coarse_keep >= GROUP and
                self.coarse_keep - self.rerank_size >= GROUP and
                self.rerank_size >= 2 * GROUP and self.show <= self.rerank_size):
            raise ValueError(
                "pool sizes must leave at least 10 items per negative group: need pool_size - "
                "prerank_keep >= 10, prerank_keep - coarse_keep >= 10, coarse_keep - rerank_size "
                f">= 10, rerank_size >= 20 (got {self.pool_size}, {self.prerank_keep}, "
                f"{self.coarse_keep}, {self.rerank_size})")
        for name in ("days", "requests_per_day", "users", "videos", "authors", "cate1",
                     "upload_types"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.cate2 < self.cate1:
            raise ValueError("cate2 must be >= cate1 (level-two categories nest in level one)")
        if self.videos < 2 * self.pool_size:
            raise ValueError(f"videos ({self.videos}) must be at least 2 x pool_size "
                             f"({self.pool_size})")
        if self.id_space:
            for k, n in self.entity_counts().items():
                if self.id_space.get(k, n) < n:
                    raise ValueError(f"id space of {k} ({self.id_space[k]}) is smaller than its "
                                     f"entity count ({n})")
        dt.date.fromisoformat(self.start_date)

    def entity_counts(self) -> dict[str, int]:
        return {"user_id": self.users, "device_id": self.users, "age": 8, "gender": 3,
                "province": self.provinces, "video_id": self.videos, "author_id": self.authors,
                "category_level_one": self.cate1, "category_level_two": self.cate2,
                "upload_type": self.upload_types}


PRESETS: dict[str, dict] = {
    "tiny": dict(days=4, requests_per_day=300, users=200, videos=1_500, authors=300, cate1=12,
                 cate2=48, upload_types=8, pool_size=70, prerank_keep=50, coarse_keep=35),
    "small": dict(days=6, requests_per_day=8_192, users=1_000, videos=6_000, authors=1_000,
                  cate1=20, cate2=100, upload_types=10, pool_size=100, prerank_keep=70,
                  coarse_keep=50, **PRODUCTION_WORLD),
    "medium": dict(days=6, requests_per_day=50_000, users=20_000, videos=200_000,
                   authors=30_000, cate1=40, cate2=400, upload_types=20, pool_size=100,
                   prerank_keep=70, coarse_keep=50, **PRODUCTION_WORLD),
    # the first world (every stage sees r plus noise), kept to compare side by side
    "small-v1": dict(days=6, requests_per_day=8_192, users=1_000, videos=6_000, authors=1_000,
                     cate1=20, cate2=100, upload_types=10, pool_size=100, prerank_keep=70,
                     coarse_keep=50),
    "medium-v1": dict(days=6, requests_per_day=50_000, users=20_000, videos=200_000,
                      authors=30_000, cate1=40, cate2=400, upload_types=20, pool_size=100,
                      prerank_keep=70, coarse_keep=50),
    "recflow-scale": dict(days=2, requests_per_day=2_000, users=2_000, videos=50_000,
                          authors=10_000, cate1=140, cate2=784, upload_types=40, pool_size=100,
                          prerank_keep=70, coarse_keep=50, id_space=dict(RECFLOW_ID_COUNTS)),
    # one RecFlow day's size: 251k requests of 200 all_stage rows, the real id spaces, millions
    # of distinct videos; for benchmarks (conversion, memory, speed), never for tests
    "recflow-day": dict(days=2, requests_per_day=251_000, users=42_472, videos=4_000_000,
                        authors=1_000_000, cate1=140, cate2=784, upload_types=40, pool_size=200,
                        prerank_keep=120, coarse_keep=60, rerank_size=20,
                        id_space=dict(RECFLOW_ID_COUNTS), chunk_requests=16_384),
}


def preset_params(preset: str, **overrides) -> WorldParams:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {sorted(PRESETS)}")
    kw = dict(PRESETS[preset])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    p = WorldParams(**kw)
    p.validate()
    return p


# --------------------------------------------------------------------------------------------
# the world


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
        user_activity=_normalise(rng.lognormal(0.0, 0.8, size=U)),
        user_latent=rng.normal(0.0, 1.0, size=(U, d)),
        user_pref=rng.normal(0.0, 1.0, size=(U, C1)),
        video_author=video_author, video_cate2=video_cate2, video_cate1=video_cate1,
        video_utype=rng.integers(0, p.upload_types, size=V), video_upload_ts=video_upload_ts,
        video_duration=video_duration, video_pop=video_pop, video_latent=video_latent,
        video_static=video_static, cate2_quality=cate2_q, author_quality=author_q,
        hour_cate=rng.normal(0.0, 1.0, size=(24, C1)),
        by_cate1_order=order, by_cate1_start=start_idx, by_cate1_cum=np.cumsum(weights[order]),
        pop_cum=np.cumsum(weights), day_start_ms=day_start_ms)


def _normalise(w: np.ndarray) -> np.ndarray:
    return w / w.sum()


def _sample_by_pop(w: World, rng: np.random.Generator, size) -> np.ndarray:
    u = rng.random(size) * w.pop_cum[-1]
    return np.minimum(np.searchsorted(w.pop_cum, u, side="right"), w.p.videos - 1)


def _sample_in_cate1(w: World, rng: np.random.Generator, cate1: np.ndarray) -> np.ndarray:
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


def _sample_pref_cate1(w: World, rng: np.random.Generator, users: np.ndarray, k: int) -> np.ndarray:
    """[len(users), k] level-one categories drawn from softmax(pref[user])."""
    pref = w.user_pref[users]
    cum = np.cumsum(np.exp(pref - pref.max(axis=1, keepdims=True)), axis=1)
    cum /= cum[:, -1:]
    # one searchsorted over all rows: row i's CDF lives in [i, i + 1]
    row = np.arange(len(users))[:, None]
    flat = (cum + row).ravel()
    at = np.searchsorted(flat, (rng.random((len(users), k)) + row).ravel(), side="right")
    return np.minimum(at.reshape(len(users), k) - row * w.p.cate1, w.p.cate1 - 1)


def _unique_rows(w: World, rng: np.random.Generator, users: np.ndarray, n: int) -> np.ndarray:
    """[R, n] distinct videos per request: a preference half and a popularity half."""
    R = len(users)
    out = np.empty((R, n), dtype=np.int64)
    todo = np.arange(R)
    extra = max(8, n // 3)
    while todo.size:
        m = n + extra
        n_pref = int(round(m * w.p.pool_pref_frac))
        cand = np.empty((todo.size, m), dtype=np.int64)
        cand[:, :n_pref] = _sample_in_cate1(w, rng, _sample_pref_cate1(w, rng, users[todo], n_pref))
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


def _positions(score: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """[R, P] 1-based descending position of each alive item by ``score`` (0 where not alive)."""
    s = np.where(alive, score, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.arange(1, s.shape[1] + 1)[None, :].repeat(s.shape[0], 0), 1)
    return np.where(alive, pos, 0)


@dataclass
class DayLog:
    """Simulated requests (R) of one day, or of a chunk of it, and their pool slots (P)."""

    request_id: np.ndarray     # [R]
    user: np.ndarray           # [R] user entity index
    ts_ms: np.ndarray          # [R]
    pool: np.ndarray           # [R, P] video entity index
    flags: dict[str, np.ndarray]  # FLAG_COLUMNS -> [R, P] 0/1
    rank_pos: np.ndarray       # [R, P] rank position (0 = did not reach rank)
    rerank_pos: np.ndarray     # [R, P] rerank position (0 = did not reach rerank)
    feedback: dict[str, np.ndarray]  # FEEDBACK_COLUMNS -> [R, P]
    cut_label: np.ndarray      # [R] index into STAGE_LABELS of a truncated stage, or -1
    cut_len: np.ndarray        # [R] rows kept of that stage


@dataclass
class DayPlan:
    """The request-level draws of one day (who, when, which stage array is cut short)."""

    request_id: np.ndarray     # [R] ascending with time
    user: np.ndarray           # [R]
    hour: np.ndarray           # [R] local hour
    ts_ms: np.ndarray          # [R]
    cut_label: np.ndarray | None  # [R] (None: drawn after the day's simulation, see generate)
    cut_len: np.ndarray | None    # [R]


def draw_cuts(p: WorldParams, rng: np.random.Generator, R: int) -> tuple[np.ndarray, np.ndarray]:
    """Which stage array of each request is cut short (-1 = none), and to how many rows."""
    cut = rng.random(R) < p.short_frac
    cut_label = np.where(cut, rng.integers(1, len(STAGE_LABELS), size=R), -1)
    return cut_label, rng.integers(0, GROUP, size=R)


def plan_day(w: World, rng: np.random.Generator, day: int, first_request_id: int,
             cuts: bool = True) -> DayPlan:
    p = w.p
    R = p.requests_per_day
    user = rng.choice(p.users, size=R, p=w.user_activity)
    # diurnal traffic: busier in the local evening
    hour_w = _normalise(1.0 + 0.8 * np.sin((np.arange(24) - 14) / 24 * 2 * np.pi) ** 2
                        + (np.arange(24) >= 18) * 0.8)
    hour = rng.choice(24, size=R, p=hour_w)
    ts_ms = w.day_start_ms[day] + hour * 3_600_000 + rng.integers(0, 3_600_000, size=R)
    order = np.argsort(ts_ms, kind="stable")           # request ids follow time
    cut_label, cut_len = draw_cuts(p, rng, R) if cuts else (None, None)
    return DayPlan(first_request_id + np.arange(R, dtype=np.int64), user[order], hour[order],
                   ts_ms[order], cut_label, cut_len)


def relevance_terms(w: World, rng: np.random.Generator, user: np.ndarray, hour: np.ndarray,
                    pool: np.ndarray, recent: np.ndarray | None) -> dict[str, np.ndarray]:
    """The weighted terms of r (RELEVANCE_TERMS -> [R, P]), and "latent@k" for each latent
    resolution a stage uses.  ``recent`` [R, K]: the level-two categories of each request's last
    effective views (-1 = none)."""
    p = w.p
    u_lat, v_lat = w.user_latent[user], w.video_latent[pool]
    c1 = w.video_cate1[pool]
    terms = {"latent": p.w_latent * np.einsum("rd,rpd->rp", u_lat, v_lat) / np.sqrt(p.latent_dim)}
    for k in set(p.stage_latent_dims) - {p.latent_dim}:   # a model resolving only k dimensions
        terms[f"latent@{k}"] = p.w_latent * np.einsum("rd,rpd->rp", u_lat[:, :k], v_lat[..., :k]) \
            / np.sqrt(p.latent_dim)
    terms["pref"] = p.w_pref * np.take_along_axis(w.user_pref[user], c1, axis=1)
    terms["pop"] = p.w_pop * w.video_pop[pool]
    terms["cate2"] = p.w_cate2 * w.cate2_quality[w.video_cate2[pool]]
    terms["author"] = p.w_author * w.author_quality[w.video_author[pool]]
    terms["hour"] = p.w_hour * w.hour_cate[hour[:, None], c1]
    if recent is None:
        terms["recent"] = np.zeros(pool.shape)
    else:
        same = recent[:, None, :] == w.video_cate2[pool][:, :, None]           # [R, P, K]
        terms["recent"] = p.w_recent * same.mean(axis=2)
    terms["residual"] = p.sigma_r * rng.normal(size=pool.shape)
    return terms


def stage_score(w: World, terms: dict[str, np.ndarray], stage: int) -> np.ndarray:
    """What logged stage ``stage`` (0 prerank .. 3 rerank) scores, before its noise."""
    p = w.p
    k = p.stage_latent_dims[stage]
    latent = f"latent@{k}" if k != p.latent_dim else "latent"
    out = np.zeros_like(terms["residual"])
    for name, weight in zip(RELEVANCE_TERMS, p.stage_views[stage]):
        if weight:
            out += weight * terms[latent if name == "latent" else name]
    return out


def simulate_requests(w: World, rng: np.random.Generator, plan: DayPlan, sl: slice,
                      recent: np.ndarray | None = None) -> DayLog:
    """Candidate pools, the logged cascade and feedback of requests ``plan[sl]``.

    ``recent`` [R, K]: the level-two categories of each request's last effective views before
    the chunk (the session interest; used only when ``w_recent`` is set)."""
    p = w.p
    user, hour, ts_ms = plan.user[sl], plan.hour[sl], plan.ts_ms[sl]
    R, P = len(user), p.pool_size
    pool = _unique_rows(w, rng, user, P)
    n_pre, n_coarse, n_rank, n_rerank = p.stage_noise
    if p.stage_views is None:             # the first world: every stage sees r plus noise
        lat = np.einsum("rd,rpd->rp", w.user_latent[user], w.video_latent[pool]) / np.sqrt(p.latent_dim)
        c1 = w.video_cate1[pool]
        r = (p.w_latent * lat + p.w_pref * np.take_along_axis(w.user_pref[user], c1, axis=1)
             + w.video_static[pool] + p.w_hour * w.hour_cate[hour[:, None], c1]
             + p.sigma_r * rng.normal(size=(R, P)))
        del lat, c1
        views = [r, r, r, r]
    else:                                 # stage models with their own views (README)
        terms = relevance_terms(w, rng, user, hour, pool, recent if p.w_recent else None)
        r = sum(terms[k] for k in RELEVANCE_TERMS)
        views = [stage_score(w, terms, t) for t in range(4)]
        if p.w_fresh:
            age_days = (ts_ms[:, None] // 1000 - w.video_upload_ts[pool]) / 86_400
            views[3] = views[3] + p.w_fresh * np.exp(-np.maximum(age_days, 0.0) / 7.0)
        del terms
    alive = np.ones((R, P), dtype=bool)
    pre = _positions(views[0] + n_pre * rng.normal(size=(R, P)), alive)
    pre_keep = pre <= p.prerank_keep
    coarse = _positions(views[1] + n_coarse * rng.normal(size=(R, P)), pre_keep)
    coarse_keep = (coarse >= 1) & (coarse <= p.coarse_keep)
    rank = _positions(views[2] + n_rank * rng.normal(size=(R, P)), coarse_keep)
    to_rerank = (rank >= 1) & (rank <= p.rerank_size)
    rerank = _positions(views[3] + n_rerank * rng.normal(size=(R, P)), to_rerank)
    del views
    shown = (rerank >= 1) & (rerank <= p.show)
    flags = {
        "prerank_neg": ~pre_keep,
        "coarse_neg": pre_keep & ~coarse_keep,
        "rank_pos": (rank >= 1) & (rank <= GROUP),
        "rank_neg": rank > p.rerank_size,
        "rerank_pos": (rerank >= 1) & (rerank <= GROUP),
        "rerank_neg": rerank > GROUP,
        "realshow": shown,
    }
    flags = {k: v.astype(np.int64) for k, v in flags.items()}
    # feedback on exposed items, drawn from the relevance
    p_eff = 1.0 / (1.0 + np.exp(-(r - np.median(r[shown]))))
    eff = shown & (rng.random((R, P)) < p_eff)
    dur = w.video_duration[pool]
    play = np.where(shown, (dur * np.where(eff, rng.uniform(0.5, 1.0, (R, P)),
                                           rng.uniform(0.0, 0.3, (R, P)))).astype(np.int64), 0)
    u = rng.random((R, P))
    feedback = {
        "playing_time": play, "effective_view": eff.astype(np.int64),
        "long_view": (eff & (u < 0.5)).astype(np.int64), "like": (eff & (u < 0.08)).astype(np.int64),
        "follow": (eff & (u < 0.02)).astype(np.int64), "forward": (eff & (u < 0.01)).astype(np.int64),
        "comment": (eff & (u < 0.015)).astype(np.int64),
    }
    if plan.cut_label is None:            # a day in one piece: cuts are drawn after it
        cut_label, cut_len = draw_cuts(p, rng, R)
    else:
        cut_label, cut_len = plan.cut_label[sl], plan.cut_len[sl]
    return DayLog(plan.request_id[sl], user, ts_ms, pool, flags, rank, rerank, feedback,
                  cut_label, cut_len)


# --------------------------------------------------------------------------------------------
# histories from effective views


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
    cate = _sample_pref_cate1(w, rng, user, 1)[:, 0]
    video = _sample_in_cate1(w, rng, cate)
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


# --------------------------------------------------------------------------------------------
# writing


def _item_columns(w: World, video: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "video_id": w.ids["video_id"][video],
        "author_id": w.ids["author_id"][w.video_author[video]],
        "category_level_one": w.ids["category_level_one"][w.video_cate1[video]],
        "category_level_two": w.ids["category_level_two"][w.video_cate2[video]],
        "upload_type": w.ids["upload_type"][w.video_utype[video]],
        "upload_timestamp": w.video_upload_ts[video],
        "duration": w.video_duration[video],
    }


class DayWriter:
    """Writes one day (all_stage, realshow, request_id_dict, seq_effective_50_dict) chunk of
    requests by chunk: Feather record batches and streamed pickles, so a day of any size is
    written in the memory of one chunk."""

    def __init__(self, out: Path, date: str):
        self.out, self.date = out, date
        self.rows = 0
        self._tables: dict[str, Any] = {}
        self._files = [open(out / layout.REQUEST_DICT_DIR / f"{date}.pkl", "wb"),
                       open(out / layout.HISTORY_DIR / f"{date}.pkl", "wb")]
        self.rd = DictPickleWriter(self._files[0])
        self.hd = DictPickleWriter(self._files[1])

    def _table(self, sub: str, table) -> None:
        import pyarrow as pa

        if sub not in self._tables:
            opts = pa.ipc.IpcWriteOptions(compression="lz4")
            self._tables[sub] = pa.ipc.new_file(str(self.out / sub / f"{self.date}.feather"),
                                                table.schema, options=opts)
        self._tables[sub].write_table(table, max_chunksize=1 << 16)

    def write(self, w: World, log: DayLog, hist: np.ndarray) -> None:
        """Append requests ``log`` with their histories ``hist`` [R, 50, 10]."""
        import pyarrow as pa

        R, P = log.pool.shape
        u = log.user
        cols: dict[str, np.ndarray] = {
            "request_id": np.repeat(log.request_id, P),
            "request_timestamp": np.repeat(log.ts_ms, P),
            "user_id": np.repeat(w.ids["user_id"][u], P),
            "device_id": np.repeat(w.ids["device_id"][w.user_device[u]], P),
            "age": np.repeat(w.user_age[u], P),
            "gender": np.repeat(w.user_gender[u], P),
            "province": np.repeat(w.user_province[u], P),
        }
        cols.update({k: v.reshape(-1) for k, v in _item_columns(w, log.pool).items()})
        for k in FLAG_COLUMNS:
            cols[k] = log.flags[k].reshape(-1)
        cols["rank_index"] = log.rank_pos.reshape(-1).astype(np.int64)
        cols["rerank_index"] = log.rerank_pos.reshape(-1).astype(np.int64)
        for k in FEEDBACK_COLUMNS:
            cols[k] = log.feedback[k].reshape(-1)
        table = pa.table({k: np.ascontiguousarray(v, dtype=np.int64) for k, v in cols.items()})
        self._table(layout.ALL_STAGE, table)
        self._table(layout.REALSHOW, table.take(np.flatnonzero(cols["realshow"] == 1)))
        self.rows += int(table.num_rows)
        del table

        # request_id_dict: per stage, positives in stage order, everything else in random order
        rng_order = np.random.default_rng(int(log.request_id[0]) + 7)
        item = np.stack([cols[k].reshape(R, P) for k in
                         ("video_id", "author_id", "duration", "category_level_two", "upload_type",
                          "upload_timestamp", "category_level_one")]
                        + [log.feedback["effective_view"]], axis=-1)  # [R, P, 8]
        del cols
        stage_rows = {}
        for label in STAGE_LABELS:
            member = log.flags[label].astype(bool)
            if label in ("rank_pos",):
                key = np.where(member, log.rank_pos, np.iinfo(np.int64).max)
            elif label in ("rerank_pos", "realshow"):
                key = np.where(member, log.rerank_pos, np.iinfo(np.int64).max)
            else:
                key = np.where(member, rng_order.integers(0, 1 << 30, size=(R, P)),
                               np.iinfo(np.int64).max)
            n = member.sum(axis=1)
            order = np.argsort(key, axis=1, kind="stable")[:, : int(n.max(initial=0))]
            rows = np.take_along_axis(item, order[:, :, None], axis=1)
            stage_rows[label] = (np.ascontiguousarray(rows), n.tolist())
        rids = log.request_id.tolist()
        cut_label, cut_len = log.cut_label.tolist(), log.cut_len.tolist()
        for i, rid in enumerate(rids):  # the pickle format is one dict per request
            d = {}
            for j, label in enumerate(STAGE_LABELS):
                rows, n = stage_rows[label]
                k = n[i]
                if cut_label[i] == j:
                    k = min(k, cut_len[i])
                    if k == 0:
                        continue  # a missing stage key, as in the released data
                d[label] = rows[i, :k]
            self.rd.add(rid, d)
        for i, rid in enumerate(rids):
            self.hd.add(rid, hist[i])

    def close(self) -> int:
        """Finish every file; returns the day's all_stage rows."""
        for t in self._tables.values():
            t.close()
        self.rd.close()
        self.hd.close()
        for f in self._files:
            f.close()
        return self.rows


def generate(out: str | os.PathLike, params: WorldParams, seed: int = 0, *, preset: str = "custom",
             verbose: bool = True) -> dict:
    """Generate a dataset under ``out``; returns a summary dict (also written to SYNTHETIC.json).

    Day by day, and within a day ``params.chunk_requests`` requests at a time (requests are in
    time order, so a chunk's histories only need views of earlier chunks and days): memory
    follows one chunk and the views so far, not the dataset."""
    params.validate()
    t0 = time.perf_counter()
    out = Path(out)
    for sub in (layout.ALL_STAGE, layout.REALSHOW, layout.HISTORY_DIR, layout.REQUEST_DICT_DIR,
                "others"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = build_world(params, rng)
    pre, n_pre = prehistory(w, rng, first_request_id=0)
    next_rid = n_pre
    view_parts = [pre]
    start = dt.date.fromisoformat(params.start_date)
    dates, rows = [], 0
    R = params.requests_per_day
    chunk = params.chunk_requests or R
    session = params.w_recent and params.stage_views is not None
    views = collect_views(view_parts)           # every effective view before the next chunk
    for day in range(params.days):
        date = (start + dt.timedelta(days=day)).isoformat()
        # a day in one piece keeps the draw order of the presets made before chunking existed
        plan = plan_day(w, rng, day, next_rid, cuts=chunk < R)
        next_rid += R
        writer = DayWriter(out, date)
        for a in range(0, R, chunk):
            sl = slice(a, min(a + chunk, R))
            recent = (recent_cate2(w, views, plan.user[sl], plan.ts_ms[sl], params.recent_views)
                      if session else None)
            del views                           # not held while the chunk is simulated
            lg = simulate_requests(w, rng, plan, sl, recent)
            view_parts.append(day_views(lg))
            views = collect_views(view_parts)
            writer.write(w, lg, histories(w, views, lg.user, lg.ts_ms))
            del lg
        rows += writer.close()
        dates.append(date)
        if verbose:
            print(f"  {date}: {R} requests", file=sys.stderr)
    counts = dict(params.id_space or params.entity_counts())
    counts["request_id"] = next_rid
    # the released file's spelling: a leading space on the level-two category key
    id_cnt = {(" " + k if k == "category_level_two" else k): int(v) for k, v in counts.items()}
    with open(out / layout.ID_COUNT_FILE, "wb") as f:
        pickle.dump(id_cnt, f, protocol=4)
    train, test = layout.default_split(dates) if len(dates) >= 2 else (dates, None)
    summary = {
        "synthetic": True, "preset": preset, "seed": seed, "days": dates,
        "train_days": train, "test_day": test, "requests": params.requests_per_day * params.days,
        "all_stage_rows": rows, "seconds": round(time.perf_counter() - t0, 2),
        "params": dataclasses.asdict(params),
    }
    with open(out / layout.SYNTHETIC_MARKER, "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def describe(summary: dict, out: str | os.PathLike) -> str:
    p = summary["params"]
    lines = [
        f"Synthetic RecFlow dataset (preset {summary['preset']}, seed {summary['seed']}) at {out}",
        "  THIS IS SIMULATED DATA, not RecFlow: results on it say nothing about the paper's numbers.",
        f"  days       {summary['days'][0]} ... {summary['days'][-1]} ({len(summary['days'])})",
        f"  train/test {len(summary['train_days'])} days / {summary['test_day']}",
        f"  requests   {summary['requests']:,} ({p['requests_per_day']:,} per day), "
        f"{summary['all_stage_rows']:,} all_stage rows",
        f"  world      {p['users']:,} users, {p['videos']:,} videos, {p['authors']:,} authors, "
        f"{p['cate1']} / {p['cate2']} categories, pool {p['pool_size']} per request",
        f"  generated in {summary['seconds']:.1f}s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m deep_components.data.synthetic",
                                 description="Write a synthetic dataset in the RecFlow layout.")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--requests-per-day", dest="requests_per_day", type=int)
    ap.add_argument("--days", type=int)
    ap.add_argument("--users", type=int)
    ap.add_argument("--videos", type=int)
    ap.add_argument("--authors", type=int)
    ap.add_argument("--pool-size", dest="pool_size", type=int)
    ap.add_argument("--start-date", dest="start_date")
    ap.add_argument("--short-frac", dest="short_frac", type=float,
                    help="share of requests with one stage array cut short (padding)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    overrides = {k: getattr(a, k) for k in ("requests_per_day", "days", "users", "videos",
                                            "authors", "pool_size", "start_date", "short_frac")}
    try:
        params = preset_params(a.preset, **overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = generate(a.out, params, a.seed, preset=a.preset, verbose=not a.quiet)
    print(describe(summary, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
