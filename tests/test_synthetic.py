"""The synthetic generator: determinism and every RecFlow layout invariant."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

from deep_components.specs import THREE_STAGE, TWO_STAGE
from deep_components.data import default_split, list_days
from deep_components.data.synthetic import RECFLOW_ID_COUNTS, generate, preset_params
from deep_components.data.synthetic.__main__ import main

from helpers import read_raw_day

STAGES = ("realshow", "rerank_pos", "rerank_neg", "rank_pos", "rank_neg", "coarse_neg",
          "prerank_neg")


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "SYNTHETIC.json")


def test_deterministic_per_seed(tmp_path):
    p = preset_params("tiny", days=2, requests_per_day=60)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate(tmp_path / name, p, seed=seed, verbose=False)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert [f.relative_to(tmp_path / "a") for f in fa] == [f.relative_to(tmp_path / "b") for f in fb]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))
    differs = [x.read_bytes() != y.read_bytes() for x, y in zip(fa, fc) if "id_cnt" not in x.name]
    assert all(differs)


def test_layout_and_split(tiny_root):
    days = list_days(tiny_root)
    assert days == ["2024-01-13", "2024-01-14", "2024-01-15", "2024-01-16"]
    assert default_split(days) == (days[:-1], days[-1])
    for sub in ("all_stage", "realshow"):
        assert sorted(p.stem for p in (tiny_root / sub).glob("*.feather")) == days
    for sub in ("request_id_dict", "seq_effective_50_dict"):
        assert sorted(p.stem for p in (tiny_root / sub).glob("*.pkl")) == days
    info = json.loads((tiny_root / "SYNTHETIC.json").read_text())
    assert info["synthetic"] is True and info["test_day"] == "2024-01-16"


def test_paper_split_used_when_those_days_exist():
    days = pd.date_range("2024-01-13", "2024-02-18").strftime("%Y-%m-%d").tolist()
    train, test = default_split(days)
    assert test == "2024-02-04" and train[0] == "2024-01-13" and train[-1] == "2024-02-03"
    assert len(train) == 22


def test_id_cnt_spelling_and_ranges(tiny_root):
    with open(tiny_root / "others" / "id_cnt.pkl", "rb") as f:
        cnt = pickle.load(f)
    assert "video_id" in cnt and " category_level_two" in cnt and "category_level_two" not in cnt
    cnt = {k.strip(): v for k, v in cnt.items()}
    for date in list_days(tiny_root):
        a, rd, hd = read_raw_day(tiny_root, date)
        assert all(a[c].dtype == np.int64 for c in a.columns)
        for c in ("user_id", "device_id", "age", "gender", "province", "video_id", "author_id",
                  "category_level_one", "category_level_two", "upload_type"):
            assert a[c].min() >= 0 and a[c].max() < cnt[c], c
        assert a["request_id"].max() < cnt["request_id"]


def test_every_request_in_both_pickles_and_arrays_well_formed(tiny_root):
    for date in list_days(tiny_root):
        a, rd, hd = read_raw_day(tiny_root, date)
        rids = set(a["request_id"].unique().tolist())
        assert rids == set(rd) == set(hd)
        for rid in list(rids)[:100]:
            for label, arr in rd[rid].items():
                assert label in STAGES
                assert arr.ndim == 2 and arr.shape[1] == 8 and arr.dtype == np.int64
            h = hd[rid]
            assert h.shape == (50, 10) and h.dtype == np.int64


def test_positives_have_flagged_rows_in_rank_order(tiny_root):
    date = list_days(tiny_root)[0]
    a, rd, _ = read_raw_day(tiny_root, date)
    for flag, index in (("rank_pos", "rank_index"), ("rerank_pos", "rerank_index")):
        pos = a[a[flag] == 1].set_index(["request_id", "video_id"])[index]
        checked = 0
        for rid, d in rd.items():
            arr = d.get(flag)
            if arr is None:
                continue
            idx = [pos[(rid, v)] for v in arr[:10, 0]]  # KeyError if a row is missing
            assert idx == sorted(idx) and all(1 <= i <= 10 for i in idx)
            checked += 1
        assert checked > 250


def test_groups_disjoint_and_sized(tiny_root):
    date = list_days(tiny_root)[1]
    a, rd, _ = read_raw_day(tiny_root, date)
    for spec in (TWO_STAGE, THREE_STAGE):          # each setting's groups are disjoint
        assert a[list(spec.groups)].to_numpy().sum(axis=1).max() == 1
    full = [d for d in rd.values() if len(d) == 7 and all(len(v) >= 10 for k, v in d.items()
                                                           if k != "realshow")]
    assert len(full) > 0.9 * len(rd)               # most requests are complete
    short = [d for d in rd.values() if len(d) < 7 or any(len(v) < 10 for k, v in d.items()
                                                         if k != "realshow")]
    assert len(short) >= 1                         # ... and some are padded
    rid = next(iter(rd))
    for spec in (TWO_STAGE, THREE_STAGE):
        videos = [set(rd[rid][g][:, 0].tolist()) for g in spec.groups if g in rd[rid]]
        assert sum(map(len, videos)) == len(set().union(*videos))


def test_histories_left_padded_and_strictly_earlier(tiny_root):
    days = list_days(tiny_root)
    a, _, hd = read_raw_day(tiny_root, days[2])
    req = a.groupby("request_id")[["request_timestamp", "user_id"]].first()
    n_valid = []
    for rid, h in hd.items():
        valid = h[:, 7] > 0
        n = int(valid.sum())
        n_valid.append(n)
        assert (valid == (np.arange(50) >= 50 - n)).all()           # a contiguous suffix
        assert (h[~valid] == 0).all()
        assert (h[valid, 7] < req.loc[rid, "request_timestamp"]).all()
        assert (np.diff(h[valid, 7]) >= 0).all()                   # oldest first
    assert np.mean(n_valid) > 10
    # histories are built from effective views of earlier requests (or the seeding pre-period)
    allv = pd.concat([pd.read_feather(tiny_root / "all_stage" / f"{d}.feather") for d in days[:3]])
    eff = set(map(tuple, allv.loc[allv.effective_view == 1, ["request_id", "video_id"]].to_numpy()))
    rid, h = max(hd.items(), key=lambda kv: kv[1][-1, 9])
    assert (int(h[-1, 9]), int(h[-1, 0])) in eff


def test_realshow_is_subset(tiny_root):
    date = list_days(tiny_root)[0]
    a = pd.read_feather(tiny_root / "all_stage" / f"{date}.feather")
    r = pd.read_feather(tiny_root / "realshow" / f"{date}.feather")
    assert list(r.columns) == list(a.columns) and len(r) > 0
    assert (r.realshow == 1).all() and len(r) == int(a.realshow.sum())


def test_recflow_scale_is_cheap_and_uses_real_cardinalities(tmp_path, capsys):
    rc = main(["--out", str(tmp_path / "s"), "--preset", "recflow-scale", "--requests-per-day",
               "40", "--days", "2", "--quiet"])
    assert rc == 0 and "SIMULATED" in capsys.readouterr().out
    with open(tmp_path / "s" / "others" / "id_cnt.pkl", "rb") as f:
        cnt = {k.strip(): v for k, v in pickle.load(f).items()}
    for k, v in RECFLOW_ID_COUNTS.items():
        assert cnt[k] == v
    a = pd.read_feather(tmp_path / "s" / "all_stage" / "2024-01-13.feather")
    assert a.video_id.max() > 1_000_000 and a.video_id.max() < RECFLOW_ID_COUNTS["video_id"]


def test_bad_parameters_are_refused(capsys):
    assert main(["--out", "/tmp/never", "--preset", "tiny", "--pool-size", "30"]) == 2
    assert "negative group" in capsys.readouterr().err
    with pytest.raises(ValueError):
        preset_params("galactic")


def test_chunked_generation_keeps_every_invariant(tmp_path):
    """A day written 77 requests at a time: same layout, histories only of earlier views (also
    of earlier chunks of the same day), readable by the reader in both settings."""
    from deep_components.data import build_day_arrays

    p = preset_params("tiny", days=2, requests_per_day=300, chunk_requests=77)
    generate(tmp_path, p, seed=1, verbose=False)
    for date in ("2024-01-13", "2024-01-14"):
        a = pd.read_feather(tmp_path / "all_stage" / f"{date}.feather")
        assert a.request_id.nunique() == 300 and len(a) == 300 * p.pool_size
        with open(tmp_path / "seq_effective_50_dict" / f"{date}.pkl", "rb") as f:
            hd = pickle.load(f)
        req = a.groupby("request_id").request_timestamp.first()
        assert sorted(hd) == sorted(req.index)
        assert (np.diff(req.to_numpy()) >= 0).all()            # ids follow time across chunks
        eff = set(zip(a.request_id[a.effective_view == 1], a.video_id[a.effective_view == 1]))
        later = [rid for rid in req.index[100:]]               # requests after the first chunk
        seen_same_day = 0
        for rid in later:
            h = hd[rid]
            valid = h[:, 7] > 0
            assert (h[valid, 7] < req[rid]).all()
            seen_same_day += sum((int(r), int(v)) in eff for r, v in h[valid][:, [9, 0]])
        assert seen_same_day > 0          # views of earlier chunks of the day reach histories
        for spec in (TWO_STAGE, THREE_STAGE):
            day = build_day_arrays(tmp_path, date, spec)
            assert day.num_requests == 300 and day.item_mask[:, :10].all(axis=1).mean() > 0.9


# ------------------------------------------------------------ the logged cascade's stage models
from deep_components.data import synthetic as S  # noqa: E402


def _world(**kw):
    p = preset_params("tiny", days=1, requests_per_day=40, **kw)
    return S.build_world(p, np.random.default_rng(0)), p


def test_first_world_is_kept_as_the_v1_presets():
    new, old = preset_params("small"), preset_params("small-v1")
    assert old.stage_views is None and old.w_recent == 0 and old.w_fresh == 0
    assert new.stage_views == S.PRODUCTION_VIEWS and new.w_recent == 1.0
    same = {f: getattr(new, f) for f in ("days", "requests_per_day", "users", "videos", "pool_size",
                                         "prerank_keep", "coarse_keep", "stage_noise", "sigma_r")}
    assert same == {f: getattr(old, f) for f in same}
    assert preset_params("tiny").stage_views is None        # the tests' fixture keeps the first world


def test_stage_score_weighs_exactly_the_terms_a_stage_sees():
    w, p = _world(**S.PRODUCTION_WORLD)
    rng = np.random.default_rng(1)
    user, hour = np.array([0, 1, 2]), np.array([3, 10, 22])
    pool = np.stack([rng.choice(p.videos, p.pool_size, replace=False) for _ in user])
    recent = np.array([[-1, -1, 4, 4, 7], [-1] * 5, [1, 2, 3, 4, 5]])
    t = S.relevance_terms(w, rng, user, hour, pool, recent)
    lat2 = np.einsum("rd,rpd->rp", w.user_latent[user, :2], w.video_latent[pool][..., :2]) / np.sqrt(8)
    np.testing.assert_allclose(t["latent@2"], p.w_latent * lat2)
    np.testing.assert_allclose(t["pop"], p.w_pop * w.video_pop[pool])
    share = (recent[:, None, :] == w.video_cate2[pool][:, :, None]).mean(2)
    np.testing.assert_allclose(t["recent"], share * p.w_recent)
    assert t["recent"][1].max() == 0                      # no views: no session interest
    pre = S.stage_score(w, t, 0)       # pre-rank: 2-d latent, pref, 1.5 x pop, 0.5 x cate2
    np.testing.assert_allclose(pre, t["latent@2"] + t["pref"] + 1.5 * t["pop"] + 0.5 * t["cate2"])
    rank = S.stage_score(w, t, 2)      # rank sees every term of r
    np.testing.assert_allclose(rank, sum(t[k] for k in S.RELEVANCE_TERMS))


def test_a_popularity_only_prerank_drops_the_least_popular(tmp_path):
    views = ((0, 0, 1, 0, 0, 0, 0, 0),) + S.PRODUCTION_VIEWS[1:]
    w, p = _world(stage_views=views, stage_noise=(0.0, 1.0, 0.8, 0.6))
    plan = S.plan_day(w, np.random.default_rng(2), 0, 0)
    log = S.simulate_requests(w, np.random.default_rng(3), plan, slice(0, 40))
    pop = w.video_pop[log.pool]
    dropped = log.flags["prerank_neg"].astype(bool)
    assert (dropped.sum(1) == p.pool_size - p.prerank_keep).all()
    assert (np.where(dropped, pop, -np.inf).max(1) <= np.where(~dropped, pop, np.inf).min(1)).all()


def test_recent_categories_are_the_last_views_before_the_request():
    w, _ = _world()
    views = S.collect_views([dict(user=np.array([0, 0, 0, 1]), ts_ms=np.array([10, 20, 30, 5]),
                                  video=np.array([5, 6, 7, 8]), request_id=np.arange(4),
                                  playing_time=np.zeros(4, dtype=np.int64))])
    got = S.recent_cate2(w, views, np.array([0, 0, 1, 2]), np.array([25, 31, 6, 100]), 2)
    c = w.video_cate2
    np.testing.assert_array_equal(got, [[c[5], c[6]], [c[6], c[7]], [-1, c[8]], [-1, -1]])


def test_production_world_is_deterministic_and_valid(tmp_path):
    p = preset_params("tiny", days=2, requests_per_day=60, **S.PRODUCTION_WORLD)
    for name in ("a", "b"):
        generate(tmp_path / name, p, seed=5, verbose=False)
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert fa and all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))
    from deep_components.data import load_day

    for spec in (TWO_STAGE, THREE_STAGE):             # the loader reads it like any RecFlow day
        day = load_day(tmp_path / "a", "2024-01-14", spec)
        assert day.num_requests == 60 and day.item_mask.mean() > 0.95
        assert (day.labels[:, :10][day.item_mask[:, :10]] >= 20).all()
    with pytest.raises(ValueError, match="stage_views needs 4 rows"):
        preset_params("tiny", stage_views=((1.0,) * 8,) * 3)
