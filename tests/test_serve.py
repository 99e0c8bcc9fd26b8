"""Serving over the catalogue (deep_components.serve): the catalogue's latest features, the exact
index against brute-force tower scores, the cascade as a composition of per-stage top-k, the
approximate index's recall, and one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("faiss")

from deep_components.specs import get_spec# noqa: E402
from deep_components.config import RunConfig  # noqa: E402
from deep_components.data import list_days, load_day  # noqa: E402
from deep_components.data.catalogue import catalogue_of_days  # noqa: E402
from deep_components.serve import Cascade, evaluate_catalogue  # noqa: E402
from deep_components.training import train  # noqa: E402
import pytest
from helpers import REPO



@pytest.fixture(scope="module")
def runs(tiny_root, tmp_path_factory):
    out = {}
    for setting in ("two_stage", "three_stage", "four_stage"):
        cfg = RunConfig(setting=setting, method="lcron", batch_size=32, data_dir=str(tiny_root),
                        run_dir=str(tmp_path_factory.mktemp("serve") / setting), progress=False,
                        device="cpu", max_steps=10)
        out[setting] = train(cfg)
    return out


def test_catalogue_holds_every_candidate_with_its_latest_features(tiny_root):
    spec = get_spec("two_stage")
    days = [load_day(tiny_root, d, spec) for d in list_days(tiny_root)]
    cat = catalogue_of_days(days)
    latest = {}
    for day in days:                               # brute force: the last slot of each video wins
        items, mask = np.asarray(day.items), np.asarray(day.item_mask)
        for r in range(items.shape[0]):
            for n in range(items.shape[1]):
                if mask[r, n]:
                    latest[int(items[r, n, 0])] = items[r, n].tolist()
    assert sorted(latest) == cat.video_ids.tolist()
    for row in cat.items:
        assert row.tolist() == latest[int(row[0])]
    assert (cat.rows_of(cat.video_ids[[5, 0, 7]]) == [5, 0, 7]).all()
    assert cat.rows_of(np.array([10**9]))[0] == -1


def test_catalogue_is_cached(tiny_copy):
    from deep_components.data.catalogue import load_catalogue

    spec = get_spec("three_stage")
    days = list_days(tiny_copy)
    first = load_catalogue(tiny_copy, days, spec, "Asia/Shanghai")
    entries = list((tiny_copy / ".lcron_cache" / "three_stage" / "catalogue").iterdir())
    assert len(entries) == 1 and (entries[0] / "items.npy").is_file()
    stamp = (entries[0] / "items.npy").stat().st_mtime_ns
    again = load_catalogue(tiny_copy, days, spec, "Asia/Shanghai")
    assert np.array_equal(first.items, again.items) and len(first) > 100
    assert (entries[0] / "items.npy").stat().st_mtime_ns == stamp      # read, not rebuilt


@pytest.mark.parametrize("setting", ["two_stage", "three_stage", "four_stage"])
def test_exact_index_and_stage_composition(runs, tiny_root, setting):
    cascade = Cascade.from_run(runs[setting])
    spec = cascade.spec
    keep = {2: (60, 10), 3: (60, 25, 10), 4: (60, 30, 20, 10)}[spec.num_stages]
    day = cascade.vocab.apply(load_day(tiny_root, cascade.saved["test_day"], spec))
    B = 16
    ctx, hist, hmask = (torch.from_numpy(np.array(x[:B])) for x in (day.context, day.history,
                                                                      day.history_mask))
    kept = cascade.recommend(ctx, hist, hmask, keep)
    assert [k.shape for k in kept] == [(B, k) for k in keep]
    with torch.no_grad():
        u = cascade.models[0].user_vectors(ctx, hist, hmask)                       # [B, 32]
        brute = u @ cascade.models[0].item_vectors(cascade.items).T               # [B, V]
    # the exact index keeps the K1 best videos of the whole catalogue
    kth = torch.topk(brute, keep[0], dim=1).values[:, -1:]
    got = torch.gather(brute, 1, torch.from_numpy(kept[0]))
    assert (got >= kth - 1e-4).all()
    assert torch.allclose(got, torch.topk(brute, keep[0], dim=1).values, atol=1e-4)
    # each later stage is its tower's top K among what the stage before kept
    for t in range(1, spec.num_stages):
        prev = torch.from_numpy(kept[t - 1])
        with torch.no_grad():
            s = cascade.models[t](ctx, hist, hmask, cascade.items[prev])
        want = torch.gather(prev, 1, torch.topk(s, keep[t], dim=1).indices)
        assert torch.equal(torch.from_numpy(kept[t]), want)
        assert all(set(a) <= set(b) for a, b in zip(kept[t], kept[t - 1]))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall_is_reported(runs, tiny_root, kind):
    cascade = Cascade.from_run(runs["two_stage"], index=kind)
    day = load_day(tiny_root, cascade.saved["test_day"], cascade.spec)
    r = evaluate_catalogue(cascade, day, (60, 10), max_requests=64, compare_exact=True)
    assert r["index"] == kind and r["requests"] == 64
    # the reported recall is the share of the brute-force top 60 the index returned
    mapped = cascade.vocab.apply(day)
    ctx, hist, hmask = (torch.from_numpy(np.array(x[:64])) for x in (mapped.context, mapped.history,
                                                                      mapped.history_mask))
    with torch.no_grad():
        brute = cascade.models[0].user_vectors(ctx, hist, hmask) @ \
            cascade.models[0].item_vectors(cascade.items).T                     # [64, V]
    exact = torch.topk(brute, 60, dim=1).indices.numpy()
    got = cascade.recommend(ctx, hist, hmask, (60, 10))[0]
    by_hand = np.mean([len(set(a) & set(b)) / 60 for a, b in zip(exact, got)])
    assert r["index_recall_vs_exact"] == pytest.approx(by_hand, abs=2e-3)   # ties aside
    assert 0 < r["index_recall_vs_exact"] <= 1
    assert 0 <= r["survival"]["prerank"] <= r["survival"]["retrieval"] <= 1


def test_cli_writes_metrics_and_rejects_bad_keep(runs, tmp_path):
    run = runs["three_stage"]
    cmd = [sys.executable, "-m", "deep_components.serve", "--run_dir", str(run), "--keep", "80",
           "30", "10", "--max_requests", "40"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    m = json.loads((run / "catalogue_metrics.json").read_text())
    assert m["requests"] == 40 and list(m["survival"]) == ["retrieval", "prerank", "rank"]
    assert m["final"] == m["survival"]["rank"]
    for keep, msg in [(["80", "10"], "--keep needs one value per stage of three_stage (3"),
                      (["80", "90", "10"], "--keep must be positive and strictly decreasing"),
                      (["10**9", "1", "0"], "invalid int value")]:
        r = subprocess.run(cmd[:6] + keep, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert msg in r.stderr


def test_run_of_another_dataset_is_one_error_line(runs, tmp_path):
    from deep_components.data.synthetic import generate, preset_params

    other = tmp_path / "other"
    generate(other, preset_params("tiny", videos=333), seed=1, preset="tiny", verbose=False)
    r = subprocess.run([sys.executable, "-m", "deep_components.serve", "--run_dir",
                        str(runs["two_stage"]), "--data_dir", str(other)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "trained on another dataset" in r.stderr


def test_a_day_without_requests_is_refused(runs, tiny_root):
    cascade = Cascade.from_run(runs["two_stage"])
    day = load_day(tiny_root, cascade.saved["test_day"], cascade.spec)
    with pytest.raises(Exception, match="no requests to serve"):
        evaluate_catalogue(cascade, day, (60, 10), max_requests=0)


def test_default_keep_has_one_value_per_stage():
    from deep_components.serve import default_keep

    assert [default_keep(t) for t in (1, 2, 3, 4)] == [[10], [500, 10], [500, 100, 10],
                                                      [500, 100, 50, 10]]


def _cfg(root, run_dir, **kw):
    return RunConfig(**({"data_dir": str(root), "run_dir": str(run_dir), "batch_size": 32,
                         "progress": False, "device": "cpu"} | kw))



def test_serve_refuses_a_keep_beyond_the_gpu_index(monkeypatch, tiny_root, tmp_path, capsys):
    from deep_components import serve

    pytest.importorskip("faiss")
    run = train(_cfg(tiny_root, tmp_path / "run", max_steps=2))
    monkeypatch.setattr(serve, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(serve, "index_device", lambda kind, device: ("cuda", None))
    assert serve.main(["--run_dir", str(run), "--device", "cuda", "--keep", "5000", "10"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --keep 5000: a faiss GPU index searches at most 2048 neighbours; keep at most "
        "2048 from the index, or serve with --device cpu"]
    serve.check_index_k("exact", torch.device("cuda"), 2048)              # the limit itself is fine
    assert not (run / "catalogue_metrics.json").exists()


def test_the_index_device_says_why_it_is_not_the_gpu():
    from deep_components import serve

    faiss = pytest.importorskip("faiss")
    cuda = torch.device("cuda")
    assert serve.index_device("exact", torch.device("cpu")) == ("cpu", None)
    assert serve.index_device("ivf", cuda) == ("cpu", "the ivf index runs on the CPU (only the "
                                                      "exact index moves to the GPU)")
    where, why = serve.index_device("exact", cuda)
    if hasattr(faiss, "StandardGpuResources"):
        assert (where, why) == ("cuda", None)
    else:
        assert where == "cpu" and why.startswith("faiss-gpu is not installed")
