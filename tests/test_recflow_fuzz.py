"""Seeded fuzzing of broken RecFlow inputs: every fault ends in one DataError naming the broken
file — no hang, no traceback from library internals, no silently wrong arrays."""
from __future__ import annotations

import contextlib
import pickle
import shutil
import signal

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from deep_components.specs import THREE_STAGE, TWO_STAGE
from deep_components.data import DataError, build_day_arrays

DAY = "2024-01-14"
SEEDS = range(6)


@contextlib.contextmanager
def deadline(seconds: int):
    def boom(*_):
        raise TimeoutError(f"no answer within {seconds}s (hang)")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _files(root):
    return {"all_stage": root / "all_stage" / f"{DAY}.feather",
            "request_id_dict": root / "request_id_dict" / f"{DAY}.pkl",
            "seq_effective_50_dict": root / "seq_effective_50_dict" / f"{DAY}.pkl",
            "id_cnt": root / "others" / "id_cnt.pkl"}


def _load_pkl(p):
    with open(p, "rb") as f:
        return pickle.load(f)


def _dump_pkl(obj, p):
    with open(p, "wb") as f:
        pickle.dump(obj, f)


def _rewrite_table(p, fn):
    feather.write_feather(fn(feather.read_table(str(p))), str(p))


# ------------------------------------------------------------------- the seeded fault makers
# Each takes (root, rng, spec), breaks something the setting reads, and returns that file.

def truncated_table(root, rng, spec):
    p = _files(root)["all_stage"]
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * rng.uniform(0.0, 0.95))])
    return p


def truncated_parquet(root, rng, spec):
    p = _files(root)["all_stage"]
    out = p.with_suffix(".parquet")
    pq.write_table(feather.read_table(str(p)), out)
    p.unlink()
    data = out.read_bytes()
    out.write_bytes(data[: int(len(data) * rng.uniform(0.0, 0.95))])
    return out


def truncated_pickle(root, rng, spec):
    p = _files(root)[rng.choice(["request_id_dict", "seq_effective_50_dict", "id_cnt"])]
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * rng.uniform(0.0, 0.98))])
    return p


def corrupted_pickle_opcodes(root, rng, spec):
    """Garbage in the pickle's structure (its first bytes, where the container opcodes are)."""
    p = _files(root)[rng.choice(["request_id_dict", "seq_effective_50_dict", "id_cnt"])]
    data = bytearray(p.read_bytes())
    n = int(rng.integers(4, 32))
    start = int(rng.integers(2, 24))
    data[start:start + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    p.write_bytes(bytes(data))
    return p


def wrong_dtype_column(root, rng, spec):
    p = _files(root)["all_stage"]
    col = str(rng.choice(["user_id", "request_timestamp", "video_id", spec.index_column,
                          spec.positive_group]))
    typ = [pa.float64(), pa.string()][int(rng.integers(0, 2))]
    _rewrite_table(p, lambda t: t.set_column(t.column_names.index(col), col, t.column(col).cast(typ)))
    return p


def wrong_dtype_pickle_arrays(root, rng, spec):
    f = _files(root)
    if rng.random() < 0.5:
        rd = _load_pkl(f["request_id_dict"])
        rid = sorted(rd)[int(rng.integers(0, len(rd)))]
        rd[rid][spec.positive_group] = rd[rid][spec.positive_group].astype(float)
        _dump_pkl(rd, f["request_id_dict"])
        return f["request_id_dict"]
    hd = _load_pkl(f["seq_effective_50_dict"])
    rid = sorted(hd)[int(rng.integers(0, len(hd)))]
    hd[rid] = hd[rid].astype(str) if rng.random() < 0.5 else hd[rid][:, :3]
    _dump_pkl(hd, f["seq_effective_50_dict"])
    return f["seq_effective_50_dict"]


def bad_ids(root, rng, spec):
    f = _files(root)
    where = int(rng.integers(0, 3))
    sign = -1 if rng.random() < 0.5 else 1
    if where == 0:
        col = str(rng.choice(["user_id", "device_id", "province"]))
        def fn(t):
            v = t.column(col).to_numpy().copy()
            v[int(rng.integers(0, len(v)))] = -5 if sign < 0 else 10**9
            return t.set_column(t.column_names.index(col), col, pa.array(v))
        _rewrite_table(f["all_stage"], fn)
        return f["all_stage"]
    if where == 1:
        rd = _load_pkl(f["request_id_dict"])
        rid = sorted(rd)[int(rng.integers(0, len(rd)))]
        arr = rd[rid]["coarse_neg"].copy()
        arr[0, int(rng.choice([0, 1, 3, 4]))] = -7 if sign < 0 else 10**9
        rd[rid]["coarse_neg"] = arr
        _dump_pkl(rd, f["request_id_dict"])
        return f["request_id_dict"]
    hd = _load_pkl(f["seq_effective_50_dict"])
    rid = max(hd, key=lambda r: int((hd[r][:, 7] > 0).sum()))
    h = hd[rid].copy()
    h[-1, int(rng.choice([0, 1, 2, 4]))] = -2 if sign < 0 else 10**9
    hd[rid] = h
    _dump_pkl(hd, f["seq_effective_50_dict"])
    return f["seq_effective_50_dict"]


def duplicated_request_ids(root, rng, spec):
    p = _files(root)["all_stage"]
    def fn(t):
        rid = t.column("request_id").to_numpy().copy()
        ids = np.unique(rid)
        a, b = rng.choice(len(ids) - 1, size=2, replace=False)
        rid[rid == ids[b]] = ids[a]                        # two requests now share one id
        return t.set_column(0, "request_id", pa.array(rid))
    _rewrite_table(p, fn)
    return p


def empty_day(root, rng, spec):
    f = _files(root)
    kind = int(rng.integers(0, 3))
    if kind == 0:
        _rewrite_table(f["all_stage"], lambda t: t.slice(0, 0))
        return f["all_stage"]
    key = ["request_id_dict", "seq_effective_50_dict"][kind - 1]
    _dump_pkl({}, f[key])
    return f[key]


def not_a_dict(root, rng, spec):
    p = _files(root)[rng.choice(["request_id_dict", "seq_effective_50_dict", "id_cnt"])]
    _dump_pkl([1, 2, 3] if rng.random() < 0.5 else np.arange(4), p)
    return p


FAULTS = [truncated_table, truncated_parquet, truncated_pickle,
          corrupted_pickle_opcodes, wrong_dtype_column, wrong_dtype_pickle_arrays, bad_ids,
          duplicated_request_ids, empty_day, not_a_dict]


@pytest.fixture(scope="module")
def pristine(tiny_root):
    return tiny_root


@pytest.fixture(scope="module")
def pristine_arrays(pristine):
    return {spec.name: build_day_arrays(pristine, DAY, spec) for spec in (TWO_STAGE, THREE_STAGE)}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_fault_gives_one_clear_error(pristine, tmp_path, fault, seed):
    root = tmp_path / "data"
    shutil.copytree(pristine, root, ignore=shutil.ignore_patterns(".lcron_cache"))
    rng = np.random.default_rng([seed, FAULTS.index(fault)])
    spec = (TWO_STAGE, THREE_STAGE)[seed % 2]
    broken = fault(root, rng, spec)
    with deadline(60):
        with pytest.raises(DataError) as e:
            build_day_arrays(root, DAY, spec)
    msg = str(e.value)
    assert msg.startswith(str(broken)), msg           # names the broken file first
    assert "Traceback" not in msg and len(msg) < 600


@pytest.mark.parametrize("target", ["all_stage", "request_id_dict", "seq_effective_50_dict", "id_cnt"])
def test_random_garbage_is_caught_or_harmless(pristine, pristine_arrays, tmp_path, target):
    """16 random bytes anywhere in a file: either a DataError naming it, or (when the bytes
    land in data no setting reads, e.g. an unread column) arrays identical to the pristine day.
    Never different arrays."""
    outcomes = {"error": 0, "identical": 0}
    for seed in range(12):
        root = tmp_path / f"d{seed}"
        shutil.copytree(pristine, root, ignore=shutil.ignore_patterns(".lcron_cache"))
        p = _files(root)[target]
        rng = np.random.default_rng([seed, 99])
        data = bytearray(p.read_bytes())
        start = int(rng.integers(0, max(1, len(data) - 16)))
        data[start:start + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        p.write_bytes(bytes(data))
        spec = (TWO_STAGE, THREE_STAGE)[seed % 2]
        with deadline(60):
            try:
                day = build_day_arrays(root, DAY, spec)
            except DataError as e:
                assert str(e).startswith(str(p)), str(e)
                outcomes["error"] += 1
                continue
        ref = pristine_arrays[spec.name]
        for k in day.ARRAYS:
            assert np.array_equal(getattr(day, k), getattr(ref, k)), f"silently different {k}"
        outcomes["identical"] += 1
    assert outcomes["error"] >= 1, outcomes
