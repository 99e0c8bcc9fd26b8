"""Devices and precisions at the command line: a device the machine lacks, torchrun with more processes than GPUs, a checkpoint's precision."""
from __future__ import annotations

import subprocess
import sys
import pytest
import torch
from deep_components import cli
from deep_components.errors import UsageError
from deep_components.training import train
from helpers import REPO, fake_gpus, torchrun_env
from deep_components.config import RunConfig


def _cfg(root, run_dir, **kw):
    return RunConfig(**({"data_dir": str(root), "run_dir": str(run_dir), "batch_size": 32,
                         "progress": False, "device": "cpu"} | kw))


def test_a_device_beyond_the_count_is_one_line(tiny_root, tmp_path, monkeypatch, capsys):
    fake_gpus(monkeypatch, 1)
    rc = cli.main("two_stage", "train", ["--data_dir", str(tiny_root), "--run_dir",
                                         str(tmp_path / "r"), "--device", "cuda:7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: --device cuda:7: this machine has 1 CUDA device(s) (cuda:0)"]
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_7_without_cuda_is_one_line(tiny_root, tmp_path):
    r = subprocess.run([sys.executable, "deep_components/run_train2.py", "--data_dir", str(tiny_root),
                        "--run_dir", str(tmp_path / "r"), "--device", "cuda:7"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: --device cuda:7: CUDA is not available on this machine (use --device cpu or auto)"]


def test_torchrun_with_more_processes_than_gpus_is_one_line(tiny_root, tmp_path, monkeypatch,
                                                            capsys):
    import torch.distributed as dist

    import deep_components.distributed as D

    fake_gpus(monkeypatch, 2)
    torchrun_env(monkeypatch, 3, 4)
    monkeypatch.setattr(D, "_CONTEXT", None)
    monkeypatch.setattr(dist, "init_process_group", lambda **k: pytest.fail("joined a group"))
    rc = cli.main("two_stage", "train", ["--data_dir", str(tiny_root), "--run_dir",
                                         str(tmp_path / "r"), "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [
        "error: torchrun started 4 processes on this node but it has 2 GPU(s) (local rank 3 has "
        "none); use --nproc_per_node=2 or fewer"]
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_resumes_only_in_its_precision(tiny_root, tmp_path):
    train(_cfg(tiny_root, tmp_path / "run", max_steps=3, precision="bf16"))
    with pytest.raises(UsageError, match="precision: checkpoint 'bf16', this run 'fp32'"):
        train(_cfg(tiny_root, tmp_path / "run", resume=True))
    train(_cfg(tiny_root, tmp_path / "run", resume=True, precision="bf16", max_steps=5))
