"""The launchers and entry points as a user runs them: any setting, any method, from any directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import pytest
import torch
from deep_components.loss import method_order
from deep_components.cli import main
from deep_components.collect import build_table
from deep_components.loss import METHODS
from helpers import REPO, cli


def test_entry_point_errors(tiny_root, tmp_path):
    r = cli("deep_components/run_train2.py", "--data_dir", tiny_root, "--loss_type", "lcorn",
            "--runs_root", tmp_path)
    assert r.returncode == 2 and "unknown loss 'lcorn' (did you mean 'lcron'?)" in r.stderr
    assert "valid: arf, arf_v2, bce, fs_lambdaloss, fs_ranknet, icc, lcron, rankflow" in r.stderr
    assert "Traceback" not in r.stderr
    if not torch.cuda.is_available():
        r = cli("deep_components/run_train3.py", "--data_dir", tiny_root, "--device", "cuda",
                "--runs_root", tmp_path)
        assert r.returncode == 2 and "CUDA is not available" in r.stderr
    r = cli("deep_components/run_test2.py", "--data_dir", tiny_root, "--runs_root", tmp_path,
            "--epochs", "99")
    assert r.returncode == 2 and "not a run folder" in r.stderr


def test_launcher_from_another_directory(tiny_root, tmp_path):
    r = subprocess.run(["bash", str(REPO / "two_stage" / "bce.sh"), "--batch_size", "32",
                        "--no_progress"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "DATA_DIR": str(tiny_root),
                            "RUNS_ROOT": str(tmp_path / "runs"), "RUN_IDS": "3 4", "DEVICE": "cpu"})
    assert r.returncode == 0, r.stderr
    assert "| BCE |" in r.stdout and "SYNTHETIC" in r.stdout and "| 2 |" in r.stdout
    assert (tmp_path / "runs" / "two_stage" / "bce" / "run-4" / "metrics.json").is_file()


def test_launcher_checks_real_data_before_anything_runs(tiny_copy, tmp_path):
    """On a RecFlow download (no synthetic marker) the launcher runs the data check first: an
    empty day file stops it with the list of problems, before any conversion or training."""
    os.remove(tiny_copy / "SYNTHETIC.json")
    (tiny_copy / "all_stage" / "2024-01-14.feather").write_bytes(b"")
    r = subprocess.run(["bash", str(REPO / "two_stage" / "bce.sh"), "--no_progress"], cwd=tmp_path,
                       capture_output=True, text=True,
                       env={**os.environ, "DATA_DIR": str(tiny_copy),
                            "RUNS_ROOT": str(tmp_path / "runs"), "RUN_IDS": "3", "DEVICE": "cpu"})
    assert r.returncode == 2
    assert f"problem: {tiny_copy}/all_stage/2024-01-14.feather: 0 bytes" in r.stderr
    assert "problem: " in r.stderr and "day 2024-02-04 missing from" in r.stderr   # the paper's split
    assert not (tmp_path / "runs").exists() and not (tiny_copy / ".lcron_cache").exists()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_four_stage_cascade_trains_and_evaluates_from_the_command_line(tiny_root, tmp_path, method, capsys):
    flags = ["--setting", "four_stage", "--method", method, "--run_id", "3", "--batch_size", "32",
             "--data_dir", str(tiny_root), "--runs_root", str(tmp_path), "--device", "cpu",
             "--no_progress"]
    assert main(None, "train", flags) == 0
    run = tmp_path / "four_stage" / method / "run-3"
    assert f"trained {method} (four_stage, run 3) -> {run}" in capsys.readouterr().out
    assert main(None, "evaluate", flags) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["setting"] == "four_stage" and m["method"] == method and m["requests"] == 300
    assert list(m["stages"]) == ["retrieval", "prerank", "coarse", "rank"]
    assert [s["quota"] for s in m["stages"].values()] == [40, 30, 20, 10]
    for s in m["stages"].values():
        assert 0 < s["recall"] <= 1 and 0 < s["ndcg"] < 1
    assert 0 <= m["joint_recall"] < 0.99
    log = [json.loads(line) for line in open(run / "loss_log.jsonl")]
    assert len(log) == 3 * (300 // 32)
    assert sum(r["loss"] for r in log[-5:]) < sum(r["loss"] for r in log[:5]), method
    saved = json.loads((run / "config.json").read_text())
    assert saved["setting"] == "four_stage" and saved["method"] == method


def test_launcher_runs_any_registered_setting(tiny_root, tmp_path):
    env = {**os.environ, "DATA_DIR": str(tiny_root), "RUNS_ROOT": str(tmp_path), "RUN_IDS": "3",
           "DEVICE": "cpu", "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(REPO / "scripts" / "launch.sh"), "four_stage", "bce",
                        "--batch_size", "64", "--no_progress"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    table = (tmp_path / "four_stage_bce.md").read_text()
    assert "coarse R@10@20" in table and "rank R@10@10" in table and "| BCE |" in table
    bad = subprocess.run(["bash", str(REPO / "scripts" / "launch.sh"), "five_stage", "bce"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: unknown cascade setting 'five_stage'; registered: four_stage, three_stage, two_stage"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_registered_method_has_its_launchers(method):
    for setting in ("two_stage", "three_stage"):
        text = (REPO / setting / f"{method}.sh").read_text()
        assert f'scripts/launch.sh" {setting} {method} "$@"' in text, (setting, method)


def test_run_all_and_the_collector_cover_every_registered_method():
    # run_all's default METHODS, computed by the line of run_all.sh itself
    line = next(x for x in (REPO / "scripts" / "run_all.sh").read_text().splitlines()
                if x.startswith("METHODS="))
    r = subprocess.run(["bash", "-c", f'PY="{sys.executable}"; {line}; echo "$METHODS"'],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == method_order(), r.stderr
    metrics = [{"method": m, "tag": "", "joint_recall": 0.5,
                "stages": {"retrieval": {"recall": 0.5, "ndcg": 0.5},
                           "prerank": {"recall": 0.5, "ndcg": 0.5}}} for m in sorted(METHODS)]
    df = build_table(metrics, "two_stage")
    assert list(df["method"]) == [METHODS[m].display for m in method_order()]
