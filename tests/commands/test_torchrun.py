"""DistributedDataParallel on CPU (gloo) via torchrun: 2 processes vs 1, exact distributed
evaluation, resume under torchrun, global-batch validation."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
from helpers import REPO


def _run(args, nproc=1, env=None):
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={nproc}"] if nproc > 1 else []) + args
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    return r


def _train(root, run_dir, nproc, *extra, method="bce"):
    r = _run(["deep_components/run_train2.py", "--data_dir", str(root), "--run_dir", str(run_dir),
              "--loss_type", method, "--batch_size", "32", "--no_progress", "--device", "cpu",
              "--threads", "1", *extra], nproc)
    assert r.returncode == 0, r.stderr[-2000:]
    return run_dir


def _params(run_dir):
    return torch.load(run_dir / "towers.pt", weights_only=True)["models"]


#: DIN's att2.bias shifts every attention logit equally: softmax makes its gradient exactly 0 in
#: exact arithmetic, so its computed gradient is rounding noise that Adam normalises to ±lr.
NO_GRADIENT = {"att2.bias"}


def _assert_same_up_to_noise(one, two, lr=0.01, steps=2, fraction=5e-3):
    """The towers of two runs agree to 2e-5, but for a few entries whose gradient is rounding
    noise: summing the batch in two halves (one per rank) changes its last bits, and Adam's
    normalisation turns that into a step of up to ±lr.  Besides att2.bias (NO_GRADIENT), such
    entries sit in rows of attention units that are (nearly) never active on tiny data."""
    for a, b in zip(_params(one), _params(two)):
        for k in a:
            if k not in NO_GRADIENT:
                d = (a[k] - b[k]).abs()
                assert d.max() <= steps * lr + 1e-6, (k, d.max())
                assert (d > 2e-5).float().mean() <= fraction, (k, int((d > 2e-5).sum()), d.numel())


def test_two_processes_match_one_process(tiny_root, tmp_path):
    one = _train(tiny_root, tmp_path / "one", 1, "--max_steps", "2")
    two = _train(tiny_root, tmp_path / "two", 2, "--max_steps", "2")
    _assert_same_up_to_noise(one, two)
    log1 = [json.loads(x) for x in (one / "loss_log.jsonl").read_text().splitlines()]
    log2 = [json.loads(x) for x in (two / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log2] == [1, 2]
    for r1, r2 in zip(log1, log2):     # the logged loss is the global batch's, averaged over ranks
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-6)
        assert r2["bce/prerank"] == pytest.approx(r1["bce/prerank"], rel=1e-6)
    summary = json.loads((two / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["requests"] == 64


def test_distributed_evaluation_is_exact(tiny_root, tmp_path):
    run = _train(tiny_root, tmp_path / "run", 1, "--max_steps", "5")
    args = ["deep_components/run_test2.py", "--data_dir", str(tiny_root), "--run_dir", str(run),
            "--device", "cpu", "--infer_recall_batch_size", "64"]
    assert _run(args, 1).returncode == 0
    single = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    r = _run(args, 2)
    assert r.returncode == 0, r.stderr[-2000:]
    dist = json.loads((run / "metrics.json").read_text())
    assert dist["joint_recall"] == single["joint_recall"]
    assert dist["stages"] == single["stages"] and dist["requests"] == 300


def test_resume_under_torchrun(tiny_root, tmp_path):
    full = _train(tiny_root, tmp_path / "full", 2, "--ckpt_every", "4", method="lcron")
    part = _train(tiny_root, tmp_path / "part", 2, "--ckpt_every", "4", "--max_steps", "10",
                  method="lcron")
    assert not (part / "loss_log.jsonl").read_text().count('"step": 11')
    _train(tiny_root, part, 2, "--ckpt_every", "4", "--resume", method="lcron")
    for a, b in zip(_params(full), _params(part)):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert (full / "loss_log.jsonl").read_text() == (part / "loss_log.jsonl").read_text()


def test_global_batch_must_split_evenly(tiny_root, tmp_path):
    r = _run(["deep_components/run_train2.py", "--data_dir", str(tiny_root), "--run_dir",
              str(tmp_path / "r"), "--batch_size", "33", "--device", "cpu"], 2)
    assert r.returncode != 0
    assert "--batch_size 33 is the global batch and must be divisible by the number of processes (2)" in r.stderr


def test_lazy_adam_sparse_gradients_under_gloo(tiny_root, tmp_path):
    """Sparse embedding gradients are all-reduced by gloo: 2 processes match 1 process."""
    one = _train(tiny_root, tmp_path / "one", 1, "--max_steps", "2", "--emb_optimizer", "lazy_adam")
    two = _train(tiny_root, tmp_path / "two", 2, "--max_steps", "2", "--emb_optimizer", "lazy_adam")
    # (the order in which gloo sums the ranks' sparse rows is not fixed either)
    _assert_same_up_to_noise(one, two)
    moved = 0
    log1 = [json.loads(x) for x in (one / "loss_log.jsonl").read_text().splitlines()]
    log2 = [json.loads(x) for x in (two / "loss_log.jsonl").read_text().splitlines()]
    for r1, r2 in zip(log1, log2):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
    init = _train(tiny_root, tmp_path / "init", 1, "--max_steps", "1", "--lr", "1e-30")
    for a, b in zip(_params(two), _params(init)):
        moved += int((a["emb.tables.video_id.weight"] != b["emb.tables.video_id.weight"]).any(-1).sum())
    assert moved > 0
