"""A day of requests through the logged cascade: candidate pools, the planted relevance, each
stage's view and cut, exposure and feedback."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .params import GROUP, RELEVANCE_TERMS, STAGE_LABELS, WorldParams
from .world import World, normalise, unique_rows


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
    hour_w = normalise(1.0 + 0.8 * np.sin((np.arange(24) - 14) / 24 * 2 * np.pi) ** 2
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
    pool = unique_rows(w, rng, user, P)
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
