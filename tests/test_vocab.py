"""Compact vocabulary, size-independent embedding initialisation, lazy Adam."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deep_components.specs import get_spec
from deep_components.config import RunConfig
from deep_components.data import load_day, read_id_counts
from deep_components.data.vocab import (COMPACT_FIELDS, LOCATIONS, Vocabulary, build_vocabulary,
                                        load_vocabulary)
from deep_components.embedding_init import row_normals
from deep_components.evaluation import evaluate_run
from deep_components.run_folder import RunFolder
from deep_components.models import build_models
from deep_components.training import train

DAYS = ["2024-01-13", "2024-01-14", "2024-01-15", "2024-01-16"]



def test_vocabulary_maps_and_counts():
    v = Vocabulary({f: np.array([3, 8, 20], dtype=np.int64) for f in COMPACT_FIELDS})
    rows, absent = v.map_ids("video_id", np.array([[0, 3, 8], [20, 9, 21]]))
    assert rows.tolist() == [[0, 2, 3], [4, 1, 1]] and absent == 2
    assert v.rows("video_id") == 5 and v.row_keys("video_id").tolist() == [0, -1, 3, 8, 20]
    back = Vocabulary.from_state(v.state())
    assert back.digest() == v.digest()
    with pytest.raises(ValueError, match="not sorted"):
        Vocabulary.from_state({f: torch.tensor([5, 2]) for f in COMPACT_FIELDS})


def test_vocabulary_of_tiny_days_by_hand(tiny_root, tmp_path):
    spec = get_spec("two_stage")
    days = [load_day(tiny_root, d, spec, cache_dir=tmp_path) for d in DAYS[:3]]
    v = load_vocabulary(tiny_root, DAYS[:3], spec, "Asia/Shanghai", cache_dir=tmp_path)
    for field, places in LOCATIONS.items():
        seen = set()
        for day in days:
            for name, col in places:
                seen |= set(np.asarray(getattr(day, name))[..., col].ravel().tolist())
        assert v.ids[field].tolist() == sorted(seen - {0}), field
    assert (tmp_path / "two_stage" / "vocab").is_dir()
    again = load_vocabulary(tiny_root, DAYS[:3], spec, "Asia/Shanghai", cache_dir=tmp_path)
    assert again.digest() == v.digest()
    counts = read_id_counts(tiny_root)
    assert len(v.ids["video_id"]) <= counts["video_id"]
    # a day outside the vocabulary: its new ids are counted, and land on the unknown row
    one = load_vocabulary(tiny_root, DAYS[:1], spec, "Asia/Shanghai", cache_dir=tmp_path)
    day4 = load_day(tiny_root, DAYS[3], spec, cache_dir=tmp_path)
    mapped = one.apply(day4)
    for field, places in LOCATIONS.items():
        n_new = 0
        for name, col in places:
            raw = np.asarray(getattr(day4, name))[..., col]
            new = (raw != 0) & ~np.isin(raw, one.ids[field])
            n_new += int(new.sum())
            assert (np.asarray(getattr(mapped, name))[..., col][new] == 1).all()
            assert (np.asarray(getattr(mapped, name))[..., col][raw == 0] == 0).all()
        assert mapped.stats["unknown_ids"][field] == n_new, field
    assert mapped.stats["unknown_ids"]["video_id"] > 0 and mapped.stats["unknown_ids"]["user_id"] > 0
    assert build_vocabulary(days).digest() == v.digest()


def _cfg(root, runs, setting, method, **kw):
    return RunConfig(setting=setting, method=method, run_id=5, batch_size=32, data_dir=str(root),
                     runs_root=str(runs), progress=False, device="cpu", threads=1, **kw)


@pytest.mark.parametrize("setting,method", [("two_stage", "lcron"), ("three_stage", "bce")])
def test_compact_and_full_tables_train_to_identical_rows(tiny_root, tmp_path, setting, method):
    runs = {}
    for vocab in ("compact", "full"):
        cfg = _cfg(tiny_root, tmp_path / vocab, setting, method, vocab=vocab)
        runs[vocab] = (train(cfg), evaluate_run(cfg))
    (cm, cmeta, cv), (fm, fmeta, fv) = (RunFolder(runs[k][0]).load_towers(torch.device("cpu"))
                                        for k in ("compact", "full"))
    assert cmeta["vocab"] == "compact" and fmeta["vocab"] == "full" and fv is None
    counts = read_id_counts(tiny_root)
    seed = 5
    for t, (a, b) in enumerate(zip(cm, fm)):
        sa, sb = a.state_dict(), b.state_dict()
        for k in sa:
            field = k.split(".")[2] if k.startswith("emb.tables.") else None
            if field in COMPACT_FIELDS:
                ids = cv.ids[field]
                assert sa[k].shape[0] == len(ids) + 2 <= counts[field] + 2
                assert torch.equal(sa[k][2:], sb[k][ids]), k           # every present id
                absent = np.setdiff1d(np.arange(1, counts[field] + 2), ids)
                init = row_normals(seed, t, field, absent, sb[k].shape[1])
                assert torch.equal(sb[k][absent], torch.from_numpy(init)), k   # never moved
                assert torch.equal(sa[k][1], torch.from_numpy(row_normals(seed, t, field, [-1], 8)[0]))
                assert not sa[k][0].any() and not sb[k][0].any()
            else:
                assert torch.equal(sa[k], sb[k]), k
    mc, mf = runs["compact"][1], runs["full"][1]
    assert mc["joint_recall"] == mf["joint_recall"] and mc["stages"] == mf["stages"]
    assert mc["unknown_ids"] == {f: 0 for f in COMPACT_FIELDS} and "unknown_ids" not in mf


def test_unknown_ids_are_counted_in_metrics(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path, "two_stage", "bce", train_days=DAYS[:1], test_day=DAYS[1])
    run = train(cfg)
    assert json.loads((run / "config.json").read_text())["vocab_sizes"]["video_id"] > 0
    m = evaluate_run(RunConfig(**{**cfg.to_dict(), "test_day": DAYS[3]}))
    assert m["unknown_ids"]["user_id"] > 0 and m["unknown_ids"]["gender"] == 0
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["unknown_ids"] == m["unknown_ids"] and saved["test_day"] == DAYS[3]


def test_build_models_compact_sizes(tiny_root):
    spec = get_spec("three_stage")
    v = Vocabulary({f: np.arange(1, 4, dtype=np.int64) for f in COMPACT_FIELDS})
    models = build_models(spec, read_id_counts(tiny_root), vocab=v, seed=1)
    for m in models:
        assert m.emb.tables["video_id"].weight.shape == (5, 8)
        assert m.emb.tables["category_level_one"].weight.shape[0] == read_id_counts(tiny_root)["category_level_one"] + 2


def test_resume_and_retest_use_the_saved_vocabulary(tiny_root, tmp_path):
    """With the vocabulary cache gone, --resume takes the checkpoint's vocabulary and run_test
    the towers': both work, and resuming still equals the uninterrupted run."""
    import shutil

    cache = tmp_path / "cache"
    full = _cfg(tiny_root, tmp_path / "full", "two_stage", "lcron", cache_dir=str(cache), ckpt_every=4)
    train(full)
    part = _cfg(tiny_root, tmp_path / "part", "two_stage", "lcron", cache_dir=str(cache), ckpt_every=4,
                max_steps=10)
    train(part)
    shutil.rmtree(cache / "two_stage" / "vocab")
    train(RunConfig(**{**part.to_dict(), "resume": True, "max_steps": None}))
    assert not (cache / "two_stage" / "vocab").exists()          # not rebuilt: the checkpoint's
    a = torch.load(full.resolved_run_dir() / "towers.pt", weights_only=True)
    b = torch.load(part.resolved_run_dir() / "towers.pt", weights_only=True)
    for x, y in zip(a["models"], b["models"]):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert all(torch.equal(a["vocab"][f], b["vocab"][f]) for f in COMPACT_FIELDS)
    assert evaluate_run(part)["joint_recall"] == evaluate_run(full)["joint_recall"]
    assert not (cache / "two_stage" / "vocab").exists()
