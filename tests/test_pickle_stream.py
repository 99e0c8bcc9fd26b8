"""The streaming pickle reader and the streamed day conversion: same objects and arrays as
loading everything whole, in bounded memory."""
from __future__ import annotations

import collections
import pickle
import shutil

import numpy as np
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from deep_components.specs import THREE_STAGE, TWO_STAGE
from deep_components.data import DataError, build_day_arrays
from deep_components.data import pickle_stream, tables
from deep_components.data.pickle_stream import SharedObject, iter_pickled_items
from helpers import released_utils

DAY = "2024-01-14"


def _streamed(path):
    out = {}
    for batch in iter_pickled_items(path):
        assert len(batch) <= 1000 or len(out) == 0
        out.update(batch)
    return out


def _equal(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _equal(x, y)
    else:
        assert a == b


def _world(n=2500, seed=0):
    rng = np.random.default_rng(seed)
    d = {}
    for i in range(n):
        rid = int(rng.integers(0, 1 << 40))
        d[rid] = {"rank_pos": rng.integers(0, 1 << 35, size=(int(rng.integers(0, 12)), 8)),
                  "coarse_neg": rng.integers(-5, 99, size=(3, 8)).astype(np.int32),
                  "flag": [True, None, 1.5, -(1 << 70), "é", b"\x00\xff", (1, 2), {3}, frozenset()]}
    d[-7] = {}                                   # negative key, empty value
    return d


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_stream_equals_pickle_load(tmp_path, protocol, monkeypatch):
    monkeypatch.setattr(pickle_stream, "CHUNK", 97)        # refills inside every kind of opcode
    d = _world(1200 if protocol < 2 else 2500)
    p = tmp_path / "d.pkl"
    with open(p, "wb") as f:
        pickle.dump(d, f, protocol=protocol)
    _equal(_streamed(p), d)


def test_defaultdict_top_level_and_released_factory(tmp_path):
    with released_utils() as utils:
        dd = collections.defaultdict(utils.defaultdict_tuple)
        for i in range(3000):
            dd[i]["rank_pos"] = np.full((2, 8), i, dtype=np.int64)
        p = tmp_path / "dd.pkl"
        with open(p, "wb") as f:
            pickle.dump(dd, f, protocol=4)
    batches = list(iter_pickled_items(p))
    assert len(batches) == 3                       # handed out as pickle writes them: 1,000 a batch
    got = dict(kv for b in batches for kv in b)
    assert sorted(got) == list(range(3000))
    assert isinstance(got[5], collections.defaultdict) and got[5].default_factory is tuple
    assert (got[2999]["rank_pos"] == 2999).all()


def test_unsafe_global_is_refused_without_running(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("open('PWNED', 'w').write('x')",))

    p = tmp_path / "evil.pkl"
    with open(p, "wb") as f:
        pickle.dump({1: Boom()}, f, protocol=4)
    with pytest.raises(DataError, match=r"evil\.pkl: refusing to unpickle builtins\.exec"):
        _streamed(p)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("blob,match", [(b"", "truncated"), (b"\x80\x04garbage", "truncated|corrupt"),
                                        (pickle.dumps([1, 2], protocol=4), "expected a dict"),
                                        (pickle.dumps({1: 2}, protocol=4)[:-3], "truncated|corrupt"),
                                        (b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00K\x01Q.", "unsupported opcode 0x51")])
def test_bad_pickles_are_one_clear_error(tmp_path, blob, match):
    p = tmp_path / "bad.pkl"
    p.write_bytes(blob)
    with pytest.raises(DataError, match=match) as e:
        _streamed(p)
    assert str(e.value).startswith(str(p))


def test_object_shared_across_batches_is_detected(tmp_path):
    shared = np.arange(8)
    d = {i: (shared if i in (0, 1500) else np.zeros(8, np.int64)) for i in range(2000)}
    p = tmp_path / "shared.pkl"
    with open(p, "wb") as f:
        pickle.dump(d, f, protocol=4)
    with pytest.raises(SharedObject):
        _streamed(p)


def test_reader_falls_back_for_shared_objects(tiny_copy, tmp_path, caplog):
    """A history pickle whose requests share one array object, referred back to from a later
    batch: the reader reads it whole and gets the arrays of the same content unshared."""
    hp = tiny_copy / "seq_effective_50_dict" / f"{DAY}.pkl"
    with open(hp, "rb") as f:
        hd = pickle.load(f)
    keys = sorted(hd)
    filler = {k + 10 ** 9: np.zeros((50, 10), np.int64) for k in range(1500)}  # not requests
    obj = {keys[0]: hd[keys[0]]} | filler | {k: hd[k] for k in keys[1:]}
    obj[keys[-1]] = obj[keys[0]]                  # one object, two requests, far apart
    with open(hp, "wb") as f:
        pickle.dump(obj, f, protocol=4)
    with caplog.at_level("WARNING"):
        got = build_day_arrays(tiny_copy, DAY, TWO_STAGE)
    assert "shares objects across requests; reading it whole" in caplog.text
    unshared = tmp_path / "unshared"
    shutil.copytree(tiny_copy, unshared, ignore=shutil.ignore_patterns(".lcron_cache"))
    with open(unshared / "seq_effective_50_dict" / f"{DAY}.pkl", "wb") as f:
        pickle.dump({k: v.copy() for k, v in obj.items()}, f, protocol=4)
    ref = build_day_arrays(unshared, DAY, TWO_STAGE)
    for k in got.ARRAYS:
        assert np.array_equal(getattr(got, k), getattr(ref, k)), k
    assert (got.history[-1] == got.history[0]).all()


@pytest.mark.parametrize("spec", [TWO_STAGE, THREE_STAGE], ids=lambda s: s.name)
def test_conversion_is_independent_of_batching_and_format(tiny_root, tmp_path, monkeypatch, spec):
    """Streaming in tiny pieces (requests spanning record batches, pickles refilled every 61
    bytes), Parquet instead of Feather, protocol 2 / 5 pickles: the same arrays."""
    ref = build_day_arrays(tiny_root, DAY, spec)
    monkeypatch.setattr(tables, "TABLE_BATCH_ROWS", 997)
    monkeypatch.setattr(pickle_stream, "CHUNK", 61)
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns(".lcron_cache"))
    f = root / "all_stage" / f"{DAY}.feather"
    feather.write_feather(feather.read_table(str(f)), str(f), chunksize=997)
    small = build_day_arrays(root, DAY, spec)
    t = feather.read_table(str(root / "all_stage" / f"{DAY}.feather"))
    (root / "all_stage" / f"{DAY}.feather").unlink()
    pq.write_table(t, root / "all_stage" / f"{DAY}.parquet", row_group_size=5000)
    for sub, proto in (("request_id_dict", 2), ("seq_effective_50_dict", 5)):
        p = root / sub / f"{DAY}.pkl"
        with open(p, "rb") as f:
            obj = pickle.load(f)
        with open(p, "wb") as f:
            pickle.dump(obj, f, protocol=proto)
    other = build_day_arrays(root, DAY, spec)
    for k in ref.ARRAYS:
        assert np.array_equal(getattr(small, k), getattr(ref, k)), k
        assert np.array_equal(getattr(other, k), getattr(ref, k)), k
    assert small.stats == ref.stats == other.stats


def test_conflict_across_record_batches_is_found(tiny_copy, monkeypatch):
    """A request id reused by rows far apart (different record batches) with another user."""
    monkeypatch.setattr(tables, "TABLE_BATCH_ROWS", 500)
    f = tiny_copy / "all_stage" / f"{DAY}.feather"
    t = feather.read_table(str(f)).to_pandas()
    last = t.index[-1]
    t.loc[last, "request_id"] = t.loc[0, "request_id"]
    t.loc[last, "user_id"] = (t.loc[0, "user_id"] + 1) % 50
    t.to_feather(f, chunksize=500)
    assert feather.read_table(str(f)).to_batches()[-1].num_rows <= 500
    rid = int(t.loc[0, "request_id"])
    with pytest.raises(DataError, match=f"request_id {rid} has conflicting request_timestamp"):
        build_day_arrays(tiny_copy, DAY, TWO_STAGE)


def test_writer_output_loads_with_pickle_and_the_stream(tmp_path):
    from deep_components.data.pickle_writer import DictPickleWriter

    rng = np.random.default_rng(1)
    d = {int(rng.integers(-9, 1 << 45)): {"rank_pos": rng.integers(0, 1 << 40, (int(rng.integers(0, 12)), 8)),
                                           "x": rng.integers(0, 9, (3,)).astype(np.int32)}
         for _ in range(2600)}
    d[11] = {}
    d[12] = {"empty": np.zeros((0, 8), np.int64), "big": np.arange(70_000, dtype=np.int64)}
    p = tmp_path / "w.pkl"
    with open(p, "wb") as f, DictPickleWriter(f) as w:
        for k, v in d.items():
            w.add(k, v)
    with open(p, "rb") as f:
        _equal(pickle.load(f), d)
    _equal(_streamed(p), d)
    h = {i: rng.integers(0, 9, (50, 10)) for i in range(1500)}
    with open(p, "wb") as f, DictPickleWriter(f) as w:
        w.add_many(h.items())
    with open(p, "rb") as f:
        _equal(pickle.load(f), h)


def test_fallback_counts_missing_positives_once(tiny_copy):
    """A request_id_dict that shares an object across batches is read again whole; requests
    already handed out by the stream must not have their missing positives counted twice."""
    import pandas as pd

    rp = tiny_copy / "request_id_dict" / f"{DAY}.pkl"
    with open(rp, "rb") as f:
        rd = pickle.load(f)
    keys = sorted(rd)
    f = tiny_copy / "all_stage" / f"{DAY}.feather"
    a = pd.read_feather(f)
    vid = int(rd[keys[0]]["rank_pos"][3, 0])                 # a positive of the first request
    a = a[~((a.request_id == keys[0]) & (a.video_id == vid))].reset_index(drop=True)
    a.to_feather(f)
    filler = {k + 10 ** 9: {} for k in range(1500)}           # not requests of the day
    obj = {keys[0]: rd[keys[0]]} | filler | {k: rd[k] for k in keys[1:]}
    obj[keys[-1]]["realshow"] = obj[keys[0]]["realshow"]      # one object, two batches
    with open(rp, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)
    day = build_day_arrays(tiny_copy, DAY, TWO_STAGE)
    assert day.stats["missing_positive"] == 1
