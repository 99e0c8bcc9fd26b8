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
from .generate import describe, generate
from .history import collect_views, recent_cate2
from .params import (PRESETS, PRODUCTION_VIEWS, PRODUCTION_WORLD, RECFLOW_ID_COUNTS,
                     RELEVANCE_TERMS, WorldParams, preset_params)
from .simulation import plan_day, relevance_terms, simulate_requests, stage_score
from .world import build_world

__all__ = ["PRESETS", "PRODUCTION_VIEWS", "PRODUCTION_WORLD", "RECFLOW_ID_COUNTS",
           "RELEVANCE_TERMS", "WorldParams", "build_world", "collect_views", "describe",
           "generate", "plan_day", "preset_params", "recent_cate2", "relevance_terms",
           "simulate_requests", "stage_score"]
