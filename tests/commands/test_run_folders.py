"""Run folders that can never hold a misleading result: each case ends in exit status 2 and one
`error:` line naming the file or flag, with no traceback and no result that disagrees with its
own config.json (the numbers are the cases of the issue that asked for this)."""
from __future__ import annotations

import json
import os
import resource
import shutil
import socket
from pathlib import Path

import pytest
import torch

from deep_components.specs import TWO_STAGE
from deep_components.config import RunConfig
from deep_components.data import load_day
from deep_components.data.synthetic import generate, preset_params
from deep_components.run_folder import RunLock
from deep_components.errors import UsageError
from deep_components.training import train

TRAIN = "deep_components/run_train2.py"
TEST = "deep_components/run_test2.py"
from helpers import REPO, cli, one_error


def _train_args(root, run_dir, *extra):
    return [TRAIN, "--data_dir", root, "--run_dir", run_dir, "--batch_size", "64", "--no_progress",
            "--device", "cpu", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def trained(tiny_root, tmp_path_factory):
    """One finished, tested run folder (two-stage BCE)."""
    run = tmp_path_factory.mktemp("runs") / "run"
    assert cli(*_train_args(tiny_root, run, "--loss_type", "bce")).returncode == 0
    assert cli(TEST, "--run_dir", run, "--device", "cpu").returncode == 0
    return run


# 1. evaluation checks that the towers fit the data ------------------------------------------
@pytest.mark.parametrize("more", [True, False])
def test_towers_must_fit_the_data(trained, tmp_path, more):
    other = tmp_path / "other"
    p = preset_params("tiny", days=4, videos=3000 if more else 1000, users=400 if more else 150)
    generate(other, p, seed=5, verbose=False)
    r = cli(TEST, "--run_dir", trained, "--data_dir", other, "--device", "cpu")
    one_error(r, str(trained), str(other), "trained on another dataset", "video_id")
    assert json.loads((trained / "metrics.json").read_text())["data_dir"] != str(other)


# 2. run_test defaults to the run's own data folder ------------------------------------------
def test_run_test_uses_the_runs_data_folder(trained, tiny_root, tmp_path):
    r = cli(REPO / TEST, "--run_dir", trained, "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    assert json.loads((trained / "metrics.json").read_text())["data_dir"] == str(tiny_root)


# 3. run_test validates its flags ------------------------------------------------------------
@pytest.mark.parametrize("flags,needle", [
    (["--infer_recall_batch_size", "-5"], "--infer_recall_batch_size must be >= 1"),
    (["--infer_recall_batch_size", "0"], "--infer_recall_batch_size must be >= 1"),
    (["--test_day", "2024-01-14"], "--test_day 2024-01-14 is one of the run's training days"),
])
def test_run_test_validates_flags(trained, flags, needle):
    before = (trained / "metrics.json").read_text()
    one_error(cli(TEST, "--run_dir", trained, "--device", "cpu", *flags), needle)
    assert (trained / "metrics.json").read_text() == before


def test_training_day_needs_an_explicit_flag(trained):
    r = cli(*[TEST, "--run_dir", trained, "--device", "cpu", "--test_day", "2024-01-14",
              "--allow_train_day"])
    assert r.returncode == 0, r.stderr[-1500:]
    assert json.loads((trained / "metrics.json").read_text())["test_day"] == "2024-01-14"
    assert cli(TEST, "--run_dir", trained, "--device", "cpu").returncode == 0   # back to its day


# 4. a run that would train zero steps -------------------------------------------------------
def test_zero_steps_is_an_error(tiny_root, tmp_path):
    run = tmp_path / "run"
    r = cli(TRAIN, "--data_dir", tiny_root, "--run_dir", run, "--no_progress", "--device", "cpu")
    one_error(r, "--batch_size 1024 is larger than every training day", "300..300 requests")
    assert not run.exists()


# 5. one writer per run folder ---------------------------------------------------------------
def test_a_locked_run_folder_is_refused(tiny_root, tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        r = cli(*_train_args(tiny_root, run))
        one_error(r, f"{run}: in use by another process (pid {os.getpid()})")
        with pytest.raises(UsageError, match="in use by another process"):
            RunLock(run).acquire()
    assert cli(*_train_args(tiny_root, run, "--max_steps", "2")).returncode == 0


# 6. no stale results ------------------------------------------------------------------------
def test_existing_results_need_resume_or_overwrite(trained, tiny_root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    one_error(cli(*_train_args(tiny_root, run, "--lr", "0.05")), "already holds a run",
               "--resume", "--overwrite")
    assert json.loads((run / "config.json").read_text())["lr"] == 0.01
    r = cli(*_train_args(tiny_root, run, "--lr", "0.05", "--overwrite", "--max_steps", "3"))
    assert r.returncode == 0, r.stderr[-1500:]
    assert json.loads((run / "config.json").read_text())["lr"] == 0.05
    assert not (run / "metrics.json").exists()              # the old metrics went first
    assert len((run / "loss_log.jsonl").read_text().splitlines()) == 3


def test_results_of_another_training_are_never_used(trained, tmp_path):
    from deep_components.collect import load_metrics

    root = tmp_path / "runs"
    run = root / "two_stage" / "bce" / "run-30"
    shutil.copytree(trained, run)
    assert len(load_metrics(root, "two_stage")) == 1
    cfg = json.loads((run / "config.json").read_text())
    cfg["run_key"], cfg["lr"] = "another-training", 0.05     # a retrain that died after config.json
    (run / "config.json").write_text(json.dumps(cfg))
    r = cli("-m", "deep_components.collect", "--runs_root", root, "--setting", "two_stage")
    assert "warning:" in r.stderr and "skipped" in r.stderr and str(run / "metrics.json") in r.stderr
    assert load_metrics(root, "two_stage") == []
    one_error(cli(TEST, "--run_dir", run, "--device", "cpu"),
               "towers.pt: comes from another training than")


# 7. faults found before the run folder is touched or the first step ---------------------------
def test_a_truncated_later_day_stops_before_training(tiny_copy, tmp_path):
    f = tiny_copy / "all_stage" / "2024-01-15.feather"
    f.write_bytes(f.read_bytes()[:5000])
    run = tmp_path / "run"
    one_error(cli(*_train_args(tiny_copy, run)), "2024-01-15.feather")
    assert not run.exists()


@pytest.mark.parametrize("flags,needle", [
    (["--tz", "Mars/Olympus"], "--tz 'Mars/Olympus': unknown time zone"),
    (["--resume"], "no checkpoint to resume from"),
    (["--cache_dir", "FILE"], "cannot write the data cache here"),
])
def test_bad_flags_leave_no_run_folder(tiny_root, tmp_path, flags, needle):
    (tmp_path / "FILE").write_text("x")
    flags = [str(tmp_path / "FILE") if x == "FILE" else x for x in flags]
    run = tmp_path / "run"
    one_error(cli(*_train_args(tiny_root, run, *flags)), needle)
    assert not run.exists()


# 8. write faults ----------------------------------------------------------------------------
def test_file_size_limit_is_one_line_and_leaves_no_temporary_file(tiny_root, tmp_path):
    cache = tmp_path / "cache"
    for d in ("2024-01-13", "2024-01-14", "2024-01-15", "2024-01-16"):
        load_day(tiny_root, d, TWO_STAGE, cache_dir=cache)          # the cache is written before
    train(RunConfig(data_dir=str(tiny_root), run_dir=str(tmp_path / "warm"), cache_dir=str(cache),
                    batch_size=64, max_steps=1, progress=False, device="cpu"))  # ... and the vocabulary
    run = tmp_path / "run"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    r = cli(*_train_args(tiny_root, run, "--cache_dir", cache), preexec=limit)
    one_error(r, "checkpoint.pt: cannot write the checkpoint", "File too large")
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]


def test_cache_write_failure_names_its_reason(tiny_root, tmp_path, monkeypatch):
    from deep_components.data import cache as cache_mod
    from deep_components.data.errors import DataError

    def boom(*a, **k):
        raise OSError("disk quota exceeded")               # an OSError without errno/strerror

    monkeypatch.setattr(cache_mod.np, "save", boom)
    with pytest.raises(DataError, match=r"cannot write the data cache \(disk quota exceeded\)"):
        load_day(tiny_root, "2024-01-13", TWO_STAGE, cache_dir=tmp_path)


def test_stale_temporary_cache_folders_are_cleaned(tiny_root, tmp_path):
    day_dir = tmp_path / "two_stage" / "2024-01-13"
    day_dir.mkdir(parents=True)
    dead = day_dir / f".tmp-{socket.gethostname()}-999999999-abcd"
    live = day_dir / f".tmp-{socket.gethostname()}-{os.getpid()}-abcd"
    dead.mkdir()
    live.mkdir()
    load_day(tiny_root, "2024-01-13", TWO_STAGE, cache_dir=tmp_path)
    assert not dead.exists() and live.exists()


# 9. a malicious .pt -------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/lcron-pwned-by-towers",))


def test_malicious_towers_message(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    torch.save({"models": [_Evil()]}, run / "towers.pt")
    line = one_error(cli(TEST, "--run_dir", run, "--device", "cpu"),
                      "towers.pt: refused to load the trained towers", "posix.system")
    assert "weights_only" not in line and not Path("/tmp/lcron-pwned-by-towers").exists()


# 10. smaller --------------------------------------------------------------------------------
def test_small_usage_faults_are_one_line(trained, tiny_root, tmp_path):
    one_error(cli(*_train_args(tiny_root, tmp_path / "a", "--loss_opt", "terms")),
               "--loss_opt expects NAME=VALUE")
    one_error(cli(*_train_args(tiny_root, tmp_path / "b", "--sort", "bogus")), "--sort",
               "invalid choice")
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "config.json").write_text("{broken")
    one_error(cli(TEST, "--run_dir", run, "--device", "cpu"), f"{run / 'config.json'}: unreadable")


@pytest.mark.parametrize("content", ["{broken", json.dumps({"foo": 1})])
def test_collect_names_a_bad_metrics_file(trained, tmp_path, content):
    root = tmp_path / "runs"
    run = root / "two_stage" / "bce" / "run-30"
    shutil.copytree(trained, run)
    (run / "metrics.json").write_text(content)
    one_error(cli("-m", "deep_components.collect", "--runs_root", root, "--setting", "two_stage"),
               str(run / "metrics.json"))


def test_every_day_is_converted_first_even_with_a_cached_vocabulary(tiny_root, tmp_path):
    """With the run's vocabulary already cached, the days themselves are still converted (and
    so checked) before training, the test day included."""
    import shutil as sh

    cache = tmp_path / "cache"
    cfg = dict(data_dir=str(tiny_root), cache_dir=str(cache), batch_size=64, max_steps=1,
               progress=False, device="cpu")
    train(RunConfig(run_dir=str(tmp_path / "first"), **cfg))
    for d in ("2024-01-15", "2024-01-16"):
        sh.rmtree(cache / "two_stage" / d)
    train(RunConfig(run_dir=str(tmp_path / "second"), **cfg))   # one step, on 2024-01-13
    for d in ("2024-01-15", "2024-01-16"):
        assert [p for p in (cache / "two_stage" / d).iterdir() if not p.name.startswith(".")]


def test_a_run_folder_written_before_the_rename_still_evaluates(trained, tmp_path):
    """config.json and towers.pt of older versions call the method ``loss_type``."""
    import shutil

    import torch

    old = tmp_path / "old"
    shutil.copytree(trained, old)
    cfg = json.loads((old / "config.json").read_text())
    cfg["loss_type"] = cfg.pop("method")
    (old / "config.json").write_text(json.dumps(cfg))
    state = torch.load(old / "towers.pt", weights_only=True)
    state["meta"]["loss_type"] = state["meta"].pop("method")
    torch.save(state, old / "towers.pt")
    (old / "metrics.json").unlink()
    r = cli(TEST, "--run_dir", old, "--device", "cpu")
    assert r.returncode == 0, r.stderr[-1500:]
    new, ref = (json.loads((d / "metrics.json").read_text()) for d in (old, trained))
    assert new["method"] == "bce" and new["joint_recall"] == ref["joint_recall"]
