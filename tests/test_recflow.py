"""load_day: values against the raw files, time zones, cache behaviour, drift and bad input."""
from __future__ import annotations

import collections
import datetime as dt
import os
import pickle
import subprocess
import sys
import zoneinfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from deep_components.specs import THREE_STAGE, TWO_STAGE
from deep_components.data import DataError, batch_indices, iter_batches, load_day
from deep_components.data import cache as cache_mod
from deep_components.data.safe_pickle import safe_load_pickle
from deep_components.data.timefeat import calendar_features

from helpers import read_raw_day, released_utils

DAY = "2024-01-14"


def _cal(ts_seconds, tz="Asia/Shanghai"):
    t = dt.datetime.fromtimestamp(int(ts_seconds), zoneinfo.ZoneInfo(tz))
    return [t.isoweekday(), t.hour + 1, t.minute + 1]


@pytest.mark.parametrize("spec", [TWO_STAGE, THREE_STAGE], ids=["two", "three"])
def test_shapes_and_order(tiny_root, spec, tmp_path):
    d = load_day(tiny_root, DAY, spec, cache_dir=tmp_path)
    R, N = d.num_requests, spec.num_slots
    assert R == 300
    assert d.context.shape == (R, 8) and d.history.shape == (R, 50, 5)
    assert d.history_mask.shape == (R, 50) and d.items.shape == (R, N, 8)
    assert d.item_mask.shape == (R, N) and d.labels.shape == (R, N)
    assert (np.diff(d.request_id) > 0).all()
    assert (d.labels[~d.item_mask] == 0).all()
    neg = np.array(spec.negative_labels())
    lab = d.labels[:, 10:].reshape(R, -1, 10)
    assert ((lab == neg[None, :, None]) | ~d.item_mask[:, 10:].reshape(R, -1, 10)).all()
    pad = d.items[~d.item_mask]
    assert (pad[:, 3] == 2).all() and (np.delete(pad, 3, axis=1) == 0).all()


@pytest.mark.parametrize("spec", [TWO_STAGE, THREE_STAGE], ids=["two", "three"])
def test_one_request_by_hand(tiny_root, spec, tmp_path):
    """Rebuild one request from the raw files with plain pandas/pickle/zoneinfo."""
    a, rd, hd = read_raw_day(tiny_root, DAY)
    d = load_day(tiny_root, DAY, spec, cache_dir=tmp_path)
    # a request with a padded group, and an ordinary one
    short = [i for i, r in enumerate(d.request_id) if not d.item_mask[i].all()]
    for i in (short[0], 7):
        rid = int(d.request_id[i])
        row = a[a.request_id == rid].iloc[0]
        exp_ctx = _cal(row.request_timestamp // 1000) + [row.user_id + 1, row.device_id + 1,
                                                         row.gender + 1, row.age + 1,
                                                         row.province + 1]
        assert d.context[i].tolist() == exp_ctx
        exp_items, exp_mask, exp_lab = [], [], []
        for g, group in enumerate(spec.groups):
            arr = rd[rid].get(group, np.zeros((0, 8), np.int64))[:10]
            for r in arr:
                exp_items.append([r[0] + 1, r[1] + 1, r[3] + 1, r[6], r[4] + 1] + _cal(r[5]))
                exp_mask.append(True)
                if g == 0:
                    hit = a[(a.request_id == rid) & (a.video_id == r[0]) & (a[group] == 1)]
                    exp_lab.append(30 - int(hit[spec.index_column].iloc[0]))
                else:
                    exp_lab.append(30 - {"rerank_neg": 22, "rank_neg": 23, "coarse_neg": 24,
                                         "prerank_neg": 25}[group])
            for _ in range(10 - len(arr)):
                exp_items.append([0, 0, 0, 2, 0, 0, 0, 0])
                exp_mask.append(False)
                exp_lab.append(0)
        assert d.items[i].tolist() == exp_items
        assert d.item_mask[i].tolist() == exp_mask
        assert d.labels[i].tolist() == exp_lab
        h = hd[rid]
        valid = h[:, 7] > 0
        exp_h = np.where(valid[:, None], h[:, [0, 1, 2, 3, 4]] + [1, 1, 1, 0, 1], 0)
        assert d.history[i].tolist() == exp_h.tolist()
        assert d.history_mask[i].tolist() == valid.tolist()


def test_time_features_known_timestamps():
    # 2024-01-13 00:30:59 in Shanghai (UTC+8) is Saturday; 2024-01-12 16:30:59 UTC.
    ts = int(dt.datetime(2024, 1, 12, 16, 30, 59, tzinfo=dt.timezone.utc).timestamp())
    assert calendar_features(np.array([ts])).tolist() == [[6, 1, 31]]
    assert calendar_features(np.array([ts]), "UTC").tolist() == [[5, 17, 31]]
    # New York: EST (UTC-5) in January, EDT (UTC-4) in July
    july = int(dt.datetime(2024, 7, 1, 3, 5, tzinfo=dt.timezone.utc).timestamp())  # Monday
    assert calendar_features(np.array([ts, july]), "America/New_York").tolist() == \
        [[5, 12, 31], [7, 24, 6]]
    rng = np.random.default_rng(0)
    many = rng.integers(1_600_000_000, 1_800_000_000, size=200)
    for tz in ("Asia/Shanghai", "Europe/Berlin", "Asia/Kathmandu"):
        assert calendar_features(many, tz).tolist() == [_cal(t, tz) for t in many]


def test_independent_of_machine_time_zone(tiny_root, tmp_path):
    code = ("import sys;from deep_components.data import build_day_arrays;"
            "from deep_components.specs import TWO_STAGE;"
            f"d=build_day_arrays({str(tiny_root)!r},{DAY!r},TWO_STAGE);"
            "sys.stdout.write(str(int(d.context[:,:3].sum()))+' '+str(int(d.items[...,5:].sum())))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "TZ": tz}, check=True).stdout
            for tz in ("UTC", "America/Los_Angeles", "Asia/Tokyo")}
    assert len(outs) == 1


def test_other_zone_changes_hours(tiny_root, tmp_path):
    sh = load_day(tiny_root, DAY, TWO_STAGE, cache_dir=tmp_path)
    utc = load_day(tiny_root, DAY, TWO_STAGE, "UTC", cache_dir=tmp_path)
    diff = (sh.context[:, 1] - utc.context[:, 1]) % 24
    assert (diff == 8).all()
    assert (sh.items == utc.items)[..., :5].all()


def test_cache_reused_then_rebuilt_on_change(tiny_copy, tmp_path, monkeypatch):
    calls = []
    real = cache_mod.build_day_arrays
    monkeypatch.setattr(cache_mod, "build_day_arrays",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    cdir = tmp_path / "cache"
    d1 = load_day(tiny_copy, DAY, TWO_STAGE, cache_dir=cdir)
    d2 = load_day(tiny_copy, DAY, TWO_STAGE, cache_dir=cdir)
    assert len(calls) == 1 and isinstance(d2.items, np.memmap)
    assert np.array_equal(d1.items, d2.items)
    ram = d2.in_memory()
    assert not isinstance(ram.items, np.memmap) and np.array_equal(ram.items, d2.items)
    entries = lambda: sorted(p.name for p in (cdir / "two_stage" / DAY).iterdir())
    first = entries()
    # a setting that shapes the arrays -> a new entry
    load_day(tiny_copy, DAY, TWO_STAGE, "UTC", cache_dir=cdir)
    assert len(calls) == 2 and entries() != first
    # a changed source file -> rebuilt, stale entry removed
    f = tiny_copy / "all_stage" / f"{DAY}.feather"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_day(tiny_copy, DAY, TWO_STAGE, cache_dir=cdir)
    assert len(calls) == 3 and len(entries()) == 1
    # the other setting uses its own folder
    load_day(tiny_copy, DAY, THREE_STAGE, cache_dir=cdir)
    assert (cdir / "three_stage" / DAY).is_dir()


def test_incomplete_cache_entry_is_rebuilt(tiny_copy, tmp_path):
    cdir = tmp_path / "c"
    ref = np.array(load_day(tiny_copy, DAY, TWO_STAGE, cache_dir=cdir).items)  # unmapped copy
    (entry,) = (cdir / "two_stage" / DAY).iterdir()
    (entry / "items.npy").unlink()
    (entry / "items.npy").write_bytes(b"garbage")
    d2 = load_day(tiny_copy, DAY, TWO_STAGE, cache_dir=cdir)
    assert np.array_equal(ref, d2.items) and isinstance(d2.items, np.memmap)


def test_batches_seeded_and_complete(tiny_root, tmp_path):
    d = load_day(tiny_root, DAY, TWO_STAGE, cache_dir=tmp_path)
    b1 = [b["request_id"] for b in iter_batches(d, 64, seed=5)]
    b2 = [b["request_id"] for b in iter_batches(d, 64, seed=5)]
    b3 = [b["request_id"] for b in iter_batches(d, 64, seed=6)]
    assert len(b1) == 300 // 64 and all(len(b) == 64 for b in b1)
    assert all(np.array_equal(x, y) for x, y in zip(b1, b2))
    assert not np.array_equal(b1[0], b3[0])
    full = np.concatenate([b["request_id"] for b in iter_batches(d, 64, shuffle=False,
                                                                  drop_last=False)])
    assert np.array_equal(full, d.request_id)
    one = next(iter_batches(d, 64, seed=5))
    idx = batch_indices(300, 64, seed=5)[0]
    assert np.array_equal(one["items"], d.items[idx]) and np.array_equal(one["labels"], d.labels[idx])


# ---------------------------------------------------------------------------- drift tolerance

def _rewrite_feather(path, fn):
    t = feather.read_table(str(path))
    feather.write_feather(fn(t), str(path))


def test_drift_whitespace_photo_id_parquet(tiny_copy, tmp_path):
    ref = load_day(tiny_copy, DAY, TWO_STAGE, use_cache=False)
    f = tiny_copy / "all_stage" / f"{DAY}.feather"
    _rewrite_feather(f, lambda t: t.rename_columns(
        [("photo_id" if n == "video_id" else f" {n} ") for n in t.column_names]))
    got = load_day(tiny_copy, DAY, TWO_STAGE, use_cache=False)
    assert np.array_equal(ref.labels, got.labels) and np.array_equal(ref.context, got.context)
    # the same day as Parquet
    pq.write_table(feather.read_table(str(f)), tiny_copy / "all_stage" / f"{DAY}.parquet")
    f.unlink()
    got = load_day(tiny_copy, DAY, TWO_STAGE, use_cache=False)
    assert np.array_equal(ref.labels, got.labels) and np.array_equal(ref.items, got.items)


def test_drift_stage_keys_one_row_arrays_defaultdicts(tiny_copy):
    p = tiny_copy / "request_id_dict" / f"{DAY}.pkl"
    with open(p, "rb") as f:
        rd = pickle.load(f)
    rids = sorted(rd)
    rd[rids[0]].pop("rank_neg", None)                               # missing stage key
    rd[rids[1]]["coarse_neg"] = np.zeros((0, 8), np.int64)           # empty stage
    one = rd[rids[2]]["prerank_neg"][0].copy()
    rd[rids[2]]["prerank_neg"] = one                                 # 1-row array stored 1-D
    # the released pickles are defaultdicts whose factory lives in a module named utils
    with released_utils() as utils:
        dd = collections.defaultdict(utils.defaultdict_tuple)
        for k, v in rd.items():
            dd[k] = v
        with open(p, "wb") as f:
            pickle.dump(dd, f)
    cnt_path = tiny_copy / "others" / "id_cnt.pkl"
    with open(cnt_path, "rb") as f:
        cnt = pickle.load(f)
    cnt["photo_id"] = cnt.pop("video_id")
    cnt[" user_id "] = cnt.pop("user_id")
    with open(cnt_path, "wb") as f:
        pickle.dump(cnt, f)
    d = load_day(tiny_copy, DAY, TWO_STAGE, use_cache=False)
    assert not d.item_mask[0, 10:20].any() and (d.labels[0, 10:20] == 0).all()
    assert not d.item_mask[1, 20:30].any()
    assert d.item_mask[2, 30] and not d.item_mask[2, 31:40].any()
    assert d.items[2, 30, 0] == one[0] + 1


def test_missing_positive_row_gets_default_and_is_counted(tiny_copy, caplog):
    f = tiny_copy / "all_stage" / f"{DAY}.feather"
    a = pd.read_feather(f)
    with open(tiny_copy / "request_id_dict" / f"{DAY}.pkl", "rb") as fh:
        rd = pickle.load(fh)
    rid = int(a.request_id.min())
    vid = int(rd[rid]["rank_pos"][3, 0])
    a = a[~((a.request_id == rid) & (a.video_id == vid))]
    a.reset_index(drop=True).to_feather(f)
    with caplog.at_level("WARNING"):
        d = load_day(tiny_copy, DAY, TWO_STAGE, use_cache=False)
    assert d.stats["missing_positive"] == 1
    assert d.labels[0, 3] == 30 - 21 and d.labels[0, 2] == 30 - 3
    assert "1 positive rank_pos videos" in caplog.text


# ------------------------------------------------------------------------------- bad input

def _expect(root, match, spec=TWO_STAGE, date=DAY):
    with pytest.raises(DataError, match=match):
        load_day(root, date, spec, use_cache=False)


def test_missing_root_and_day(tmp_path, tiny_root):
    _expect(tmp_path / "absent", "data folder not found")
    _expect(tiny_root, r"2024-03-01\.feather: day 2024-03-01 not found", date="2024-03-01")


def test_missing_pickle(tiny_copy):
    (tiny_copy / "seq_effective_50_dict" / f"{DAY}.pkl").unlink()
    _expect(tiny_copy, r"seq_effective_50_dict/2024-01-14\.pkl: file not found")


def test_missing_column(tiny_copy):
    f = tiny_copy / "all_stage" / f"{DAY}.feather"
    _rewrite_feather(f, lambda t: t.drop_columns(["rank_index"]))
    _expect(tiny_copy, r"all_stage/2024-01-14\.feather: missing column 'rank_index'")


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_table(tiny_copy, keep):
    f = tiny_copy / "all_stage" / f"{DAY}.feather"
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])
    _expect(tiny_copy, r"all_stage/2024-01-14\.feather: cannot read .*corrupt or truncated")


def test_truncated_and_corrupt_pickles(tiny_copy):
    p = tiny_copy / "request_id_dict" / f"{DAY}.pkl"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _expect(tiny_copy, r"request_id_dict/2024-01-14\.pkl: (truncated|corrupt) pickle")
    p.write_bytes(b"\x80\x04garbage" + data[100:200])
    _expect(tiny_copy, r"request_id_dict/2024-01-14\.pkl: (truncated|corrupt) pickle")


def test_request_missing_from_pickle(tiny_copy):
    p = tiny_copy / "seq_effective_50_dict" / f"{DAY}.pkl"
    with open(p, "rb") as f:
        hd = pickle.load(f)
    rid = sorted(hd)[5]
    del hd[rid]
    with open(p, "wb") as f:
        pickle.dump(hd, f)
    _expect(tiny_copy, rf"seq_effective_50_dict/2024-01-14\.pkl: request {rid} of all_stage is "
                       "missing")


def test_ids_outside_id_cnt(tiny_copy):
    p = tiny_copy / "others" / "id_cnt.pkl"
    with open(p, "rb") as f:
        cnt = pickle.load(f)
    cnt["video_id"] = 10
    with open(p, "wb") as f:
        pickle.dump(cnt, f)
    _expect(tiny_copy, r"request_id_dict/2024-01-14\.pkl \[rank_pos\]: video_id \d+ outside "
                       r"\[0, 10\)")


def test_wrong_dtype_column(tiny_copy):
    f = tiny_copy / "all_stage" / f"{DAY}.feather"
    _rewrite_feather(f, lambda t: t.set_column(t.column_names.index("user_id"), "user_id",
                                               t.column("user_id").cast(pa.float64())))
    _expect(tiny_copy, r"all_stage/2024-01-14\.feather: column 'user_id' has type double")


def test_empty_day(tiny_copy):
    f = tiny_copy / "all_stage" / f"{DAY}.feather"
    _rewrite_feather(f, lambda t: t.slice(0, 0))
    _expect(tiny_copy, r"all_stage/2024-01-14\.feather: no rows")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_and_not_run(tmp_path, tiny_copy):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    p = tiny_copy / "request_id_dict" / f"{DAY}.pkl"
    with open(p, "wb") as f:
        pickle.dump({1: evil}, f)
    with pytest.raises(DataError, match=r"request_id_dict/2024-01-14\.pkl: refusing to unpickle "
                                        r"(posix|os|nt)\.system"):
        safe_load_pickle(p)
    _expect(tiny_copy, "refusing to unpickle")
    assert not marker.exists()
    # plain containers and numpy arrays still load
    ok = tmp_path / "ok.pkl"
    with open(ok, "wb") as f:
        pickle.dump({"a": np.arange(3), "b": [1, (2, 3)], "c": collections.OrderedDict()}, f)
    assert safe_load_pickle(ok)["a"].tolist() == [0, 1, 2]


def test_cli_reports_one_line_and_nonzero_exit(tiny_copy):
    (tiny_copy / "request_id_dict" / f"{DAY}.pkl").write_bytes(b"\x80\x04\x95")
    r = subprocess.run([sys.executable, "-m", "deep_components.data", "--root", str(tiny_copy),
                        "--days", DAY], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "request_id_dict/2024-01-14.pkl" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_summary(tiny_root, tmp_path):
    r = subprocess.run([sys.executable, "-m", "deep_components.data", "--root", str(tiny_root),
                        "--cache_dir", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "SYNTHETIC" in r.stdout and "4 days, 1,200 requests" in r.stdout
