"""The synthetic world's parameters (WorldParams), its presets and the RecFlow constants it
writes by."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..timefeat import DEFAULT_TZ

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
    # the paper's split shape at its training length: 22 training days, a validation day and a
    # test day; 22 x 48,000 requests is one pass of 22 x 46 = 1,012 steps at batch 1024 (bench/fidelity.py)
    "paper-length": dict(days=24, requests_per_day=48_000, users=20_000, videos=200_000,
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
