"""Checkpoint/resume exactness under SIGKILL, atomic and safe checkpoints, the non-finite guard,
up-front flag validation and unwritable locations."""
from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from deep_components import cli
from deep_components.config import RunConfig
from deep_components.run_folder import RunFolder
from deep_components.evaluation import evaluate_run
from deep_components.errors import TrainingError, UsageError
from deep_components.training import train
from helpers import REPO


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from deep_components import training as T
    original, kill_at = T.Trainer.train_step, int(os.environ["KILL_AT_STEP"])
    def step(self, batch, *args, **kwargs):
        result = original(self, batch, *args, **kwargs)   # the optimisers have stepped: mid-update
        if self.step + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    T.Trainer.train_step = step
    from deep_components.cli import main
    sys.exit(main("two_stage", "train", sys.argv[1:]))
""")


def _args(root, run_dir, *extra):
    return ["--data_dir", str(root), "--run_dir", str(run_dir), "--loss_type", "lcron",
            "--batch_size", "16", "--ckpt_every", "4", "--no_progress", "--device", "cpu", *extra]


def _state(run_dir):
    return torch.load(run_dir / "towers.pt", weights_only=True)


def test_sigkill_mid_day_then_resume_is_exact(tiny_root, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = subprocess.run([sys.executable, "deep_components/run_train2.py", *_args(tiny_root, full)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(repo=str(REPO)))
    # 300 // 16 = 18 batches a day: step 23 is batch 5 of the second day, 3 steps after a checkpoint
    r = subprocess.run([sys.executable, str(script), *_args(tiny_root, killed)], cwd=REPO,
                       capture_output=True, text=True, env={**os.environ, "KILL_AT_STEP": "23"})
    assert r.returncode == -9                                        # SIGKILL
    assert not (killed / "towers.pt").exists()
    pos = RunFolder(killed).load_checkpoint()["position"]
    assert pos == {"day_index": 1, "batch_index": 2, "step": 20, "requests": 320, "skipped": 0}
    r = subprocess.run([sys.executable, "deep_components/run_train2.py",
                        *_args(tiny_root, killed, "--resume")], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    a, b = _state(full), _state(killed)
    for sa, sb in zip(a["models"], b["models"]):
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(a["loss"][k], b["loss"][k]) for k in a["loss"])
    log_a = (full / "loss_log.jsonl").read_text().splitlines()
    log_b = (killed / "loss_log.jsonl").read_text().splitlines()
    assert log_a == log_b and len(log_a) == 54
    cfg = lambda d: RunConfig(data_dir=str(tiny_root), run_dir=str(d), device="cpu")
    ma, mb = evaluate_run(cfg(full)), evaluate_run(cfg(killed))
    assert ma["joint_recall"] == mb["joint_recall"] and ma["stages"] == mb["stages"]
    assert json.loads((killed / "train_summary.json").read_text())["resumed"] is True


def _cfg(root, tmp_path, **kw):
    base = dict(data_dir=str(root), run_dir=str(tmp_path / "run"), batch_size=32, device="cpu",
                progress=False, ckpt_every=2)
    return RunConfig(**(base | kw))


def test_crash_during_checkpoint_write_keeps_last_good(tiny_root, tmp_path, monkeypatch):
    import deep_components.checkpoint as ck

    cfg = _cfg(tiny_root, tmp_path, max_steps=4)
    train(cfg)
    path = RunFolder(tmp_path / "run").checkpoint_path()
    before = path.read_bytes()
    real_save = torch.save

    def dying_save(obj, f):
        real_save(obj, f)
        f.truncate(100)                      # half-written ...
        raise OSError(errno.EIO, "simulated crash while writing")

    monkeypatch.setattr(ck.torch, "save", dying_save)
    with pytest.raises(UsageError, match=r"checkpoint.pt: cannot write the checkpoint "
                                         r"\(simulated crash while writing\)"):
        train(_cfg(tiny_root, tmp_path, resume=True, max_steps=8))
    assert path.read_bytes() == before                          # the last good one is intact
    assert not list(path.parent.glob(".tmp-*"))                 # and no temporary file is left
    assert RunFolder(path.parent).load_checkpoint()["position"]["step"] == 4


def test_resume_refuses_a_different_run(tiny_root, tmp_path):
    train(_cfg(tiny_root, tmp_path, max_steps=2))
    with pytest.raises(UsageError, match=r"method: checkpoint 'lcron', this run 'bce'"):
        train(_cfg(tiny_root, tmp_path, method="bce", resume=True))
    with pytest.raises(UsageError, match=r"emb_dim: checkpoint 8, this run 4"):
        train(_cfg(tiny_root, tmp_path, emb_dim=4, resume=True))
    with pytest.raises(UsageError, match="setting: checkpoint 'two_stage', this run 'three_stage'"):
        train(_cfg(tiny_root, tmp_path, setting="three_stage", resume=True))
    with pytest.raises(UsageError, match="no checkpoint to resume from"):
        train(_cfg(tiny_root, tmp_path, run_dir=str(tmp_path / "fresh"), resume=True))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/lcron-pwned-by-checkpoint",))


def test_checkpoint_loading_runs_no_code(tiny_root, tmp_path):
    train(_cfg(tiny_root, tmp_path, max_steps=2))
    path = RunFolder(tmp_path / "run").checkpoint_path()
    with open(path, "wb") as f:
        pickle.dump({"format": 1, "evil": _Evil()}, f)
    with pytest.raises(UsageError, match=r"checkpoint.pt: cannot load the checkpoint: its "
                                         r"content is not tensors and plain containers"):
        train(_cfg(tiny_root, tmp_path, resume=True))
    assert not Path("/tmp/lcron-pwned-by-checkpoint").exists()
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UsageError, match="cannot load the checkpoint"):
        train(_cfg(tiny_root, tmp_path, resume=True))


class _Poison(torch.nn.Module):
    """Wraps a loss: at call ``at`` the loss (or only its gradient) becomes non-finite."""

    def __init__(self, inner, at: int, kind: str):
        super().__init__()
        self.inner, self.at, self.kind, self.calls = inner, at, kind, 0

    def forward(self, logits, labels, mask):
        out = self.inner(logits, labels, mask)
        self.calls += 1
        if self.calls == self.at:
            if self.kind == "loss":
                out["loss"] = out["loss"] * float("nan")
            else:  # finite value, infinite gradient: d/dx sqrt(x) at 0
                x = logits[0][0, 0]
                out["loss"] = out["loss"] + 0.0 * torch.sqrt(x - x.detach())
        return out


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_non_finite_stops_with_a_clear_message(tiny_root, tmp_path, monkeypatch, kind):
    import deep_components.training as T

    real = T.build_loss
    monkeypatch.setattr(T, "build_loss", lambda *a, **k: _Poison(real(*a, **k), 5, kind))
    with pytest.raises(TrainingError) as e:
        train(_cfg(tiny_root, tmp_path))
    msg = str(e.value)
    assert f"non-finite {kind} at step 5 (day 2024-01-13, batch 4)" in msg
    assert "e2e=" in msg and "single/retrieval=" in msg
    assert "last good checkpoint is" in msg and "(step 4)" in msg
    assert RunFolder(tmp_path / "run").load_checkpoint()["position"]["step"] == 4


def test_skip_nonfinite_counts_and_continues(tiny_root, tmp_path, monkeypatch):
    import deep_components.training as T

    real = T.build_loss
    monkeypatch.setattr(T, "build_loss", lambda *a, **k: _Poison(real(*a, **k), 5, "loss"))
    run_dir = train(_cfg(tiny_root, tmp_path, skip_nonfinite=True))
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["skipped_nonfinite"] == 1 and summary["steps"] == 27
    log = [json.loads(line) for line in (run_dir / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("skipped")] == [5]


BAD_FLAGS = [
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--tau", "-1"], "--tau must be > 0"),
    (["--seq_len", "60"], "--seq_len must be in 1..50"),
    (["--epochs", "-3"], "--epochs (the run id) must be >= 0"),
    (["--loss_opt", "e2e_k=99"], "e2e_k: cut-offs must be whole numbers in [gt_num=10, N=40]"),
    (["--loss_opt", "terms=all"], "terms must be one of"),
    (["--loss_opt", "taus=3"], "no option 'taus' (did you mean 'tau'?)"),
    (["--loss_type", "lcorn"], "unknown loss 'lcorn' (did you mean 'lcron'?)"),
    (["--train_days", "2024-01-13", "--test_day", "2024-01-13"], "is also one of --train_days"),
    (["--train_days", "2030-01-01"], "days ['2030-01-01'] not found"),
    (["--ckpt_every", "-1"], "--ckpt_every must be >= 0"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_fail_up_front(tiny_root, tmp_path, capsys, flags, message):
    run_dir = tmp_path / "never"
    rc = cli.main("two_stage", "train", ["--data_dir", str(tiny_root), "--run_dir", str(run_dir),
                                         "--no_progress", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not run_dir.exists()                                   # nothing started


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_flag_without_cuda(tiny_root, tmp_path, capsys):
    rc = cli.main("three_stage", "train", ["--data_dir", str(tiny_root), "--device", "cuda",
                                           "--run_dir", str(tmp_path / "r")])
    assert rc == 2 and "CUDA is not available" in capsys.readouterr().err


def test_unwritable_run_folder_and_cache(tiny_root, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match=r"a_file/run: cannot write the run folder here"):
        train(_cfg(tiny_root, tmp_path, run_dir=str(blocker / "run")))
    with pytest.raises(UsageError, match=r"a_file/cache: cannot write the data cache here"):
        train(_cfg(tiny_root, tmp_path, cache_dir=str(blocker / "cache")))
    real_open = open

    def read_only(path, mode="r", *a, **k):
        if ".write-test-" in str(path) and "w" in mode:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", read_only)
    with pytest.raises(UsageError, match="cannot write the (run folder|data cache) here .Read-only file system."):
        train(_cfg(tiny_root, tmp_path, run_dir=str(tmp_path / "ro")))
    monkeypatch.setattr("builtins.open", real_open)
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("Usage", (), {"free": 1024})())
    with pytest.raises(UsageError, match=r"only 0 MB free, a checkpoint needs about"):
        train(_cfg(tiny_root, tmp_path, run_dir=str(tmp_path / "full")))
    assert not (tmp_path / "full" / "loss_log.jsonl").exists()


def test_corrupt_towers_file_is_a_clear_error(tiny_root, tmp_path):
    run_dir = train(_cfg(tiny_root, tmp_path, max_steps=2))
    (run_dir / "towers.pt").write_bytes(b"not a torch file")
    with pytest.raises(UsageError, match=r"towers.pt: cannot load the trained towers"):
        evaluate_run(_cfg(tiny_root, tmp_path))


def test_resume_refuses_a_checkpoint_of_another_vocabulary_mode(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path, method="bce", max_steps=4, ckpt_every=2)
    train(cfg)
    with pytest.raises(UsageError, match="vocab: checkpoint 'compact', this run 'full'"):
        train(RunConfig(**{**cfg.to_dict(), "vocab": "full", "resume": True, "max_steps": None}))
