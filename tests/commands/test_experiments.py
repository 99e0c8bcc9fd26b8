"""Experiment files (--config), TensorBoard event files and curves.png, and the installed
package's commands, as a user runs them."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, cli, ok, one_error

TRAIN = ("-m", "deep_components.train")
EVALUATE = ("-m", "deep_components.evaluate")
FIVE = REPO / "tests" / "data" / "five_stage.toml"


def _towers(run: Path):
    return torch.load(run / "towers.pt", weights_only=True)


def test_a_five_stage_cascade_written_only_in_a_file_trains_evaluates_and_serves(tiny_root, tmp_path):
    pytest.importorskip("faiss")
    run = tmp_path / "five"
    r = ok(cli(*TRAIN, "--config", FIVE, "--data_dir", tiny_root, "--run_dir", run, "--no_progress"))
    assert f"trained lcron (five_stage, run 30) -> {run}" in r.stdout
    saved = json.loads((run / "config.json").read_text())
    assert saved["setting"] == "five_stage" and [s["quota"] for s in saved["spec"]["stages"]] == \
        [45, 40, 30, 20, 10]
    # a new process knows no five_stage: the run folder's stored spec is enough
    r = ok(cli(*EVALUATE, "--setting", "five_stage", "--run_dir", run, "--device", "cpu"))
    m = json.loads((run / "metrics.json").read_text())
    assert list(m["stages"]) == ["retrieval", "prerank", "coarse", "rank", "rerank"]
    assert [s["quota"] for s in m["stages"].values()] == [45, 40, 30, 20, 10]
    assert 0 < m["joint_recall"] < 1 and m["requests"] == 300
    r = ok(cli("-m", "deep_components.serve", "--run_dir", run, "--device", "cpu", "--keep", "60",
               "40", "30", "20", "10", "--max_requests", "32"))
    c = json.loads((run / "catalogue_metrics.json").read_text())
    assert list(c["survival"]) == ["retrieval", "prerank", "coarse", "rank", "rerank"]
    assert 0 <= c["final"] <= c["survival"]["retrieval"] <= 1


def test_a_spec_in_a_file_is_checked_like_a_registered_one(tiny_root, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(FIVE.read_text().replace("quota = 40 }", "quota = 46 }"))
    one_error(cli(*TRAIN, "--config", bad, "--data_dir", tiny_root, "--run_dir", tmp_path / "r"),
              f"{bad}: spec", "stage 'prerank' quota 46 must lie in [gt_num=10, 45]")
    bad.write_text(FIVE.read_text().replace("bce_slots = [50, 45, 40, 30, 20]",
                                            "bce_slots = [50, 45]"))
    one_error(cli(*TRAIN, "--config", bad, "--data_dir", tiny_root, "--run_dir", tmp_path / "r"),
              "bce: option bce_slots needs 5 values for cascade spec 'five_stage'")
    assert not (tmp_path / "r").exists()


def test_replaying_a_runs_config_json_is_bitwise_identical(tiny_root, tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    ok(cli(*TRAIN, "--setting", "three_stage", "--method", "arf_v2", "--data_dir", tiny_root,
           "--run_dir", first, "--batch_size", "32", "--lr", "0.02", "--loss_opt", "support=[40,30,20]",
           "--device", "cpu", "--no_progress"))
    ok(cli(*TRAIN, "--config", first / "config.json", "--run_dir", again, "--no_progress"))
    a, b = _towers(first), _towers(again)
    for sa, sb in zip(a["models"], b["models"]):
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(a["loss"][k], b["loss"][k]) for k in a["loss"])
    for run in (first, again):
        ok(cli(*EVALUATE, "--setting", "three_stage", "--run_dir", run, "--device", "cpu"))
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (first, again))
    assert ma["joint_recall"] == mb["joint_recall"] and ma["stages"] == mb["stages"]
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (first, again))
    assert ca["lr"] == cb["lr"] == 0.02 and ca["loss_options"] == cb["loss_options"]
    assert ca["run_key"] != cb["run_key"]                          # another training of it


@pytest.mark.parametrize("content,needle", [
    ('methd = "lcron"\n', "unknown key 'methd' (did you mean 'method'?)"),
    ('batch_size = "big"\n', "batch_size = 'big': expected int"),
    ('[grid]\ntaus = [1, 2]\n', "grid: unknown key 'taus' (did you mean 'tau'?)"),
    ('lr = [0.1\n', "not a valid TOML file"),
])
def test_a_bad_experiment_file_is_one_line(tiny_root, tmp_path, content, needle):
    f = tmp_path / "exp.toml"
    f.write_text(content)
    one_error(cli(*TRAIN, "--config", f, "--data_dir", tiny_root, "--run_dir", tmp_path / "r"),
              str(f), needle)
    assert not (tmp_path / "r").exists()


def test_an_unreadable_experiment_file_is_one_line(tiny_root, tmp_path):
    one_error(cli(*TRAIN, "--config", tmp_path / "nowhere.toml", "--data_dir", tiny_root),
              "nowhere.toml: cannot read the experiment file")


def test_the_command_line_overrides_the_file(tiny_root, tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text('method = "bce"\nbatch_size = 64\nmax_steps = 2\ndevice = "cpu"\n'
                 '[loss_options]\nbce_slots = [40, 20]\n')
    run = tmp_path / "r"
    ok(cli(*TRAIN, "--config", f, "--data_dir", tiny_root, "--run_dir", run, "--batch_size", "32",
           "--no_progress"))
    saved = json.loads((run / "config.json").read_text())
    assert (saved["method"], saved["batch_size"], saved["max_steps"]) == ("bce", 32, 2)
    assert saved["loss_options"] == {"bce_slots": [40, 20]}


def test_a_grid_of_two_by_two_runs_four_tagged_runs_and_one_table(tiny_root, tmp_path):
    f = tmp_path / "grid.toml"
    f.write_text('method = "lcron"\nbatch_size = 64\nmax_steps = 4\ndevice = "cpu"\n'
                 '[grid]\ntau = [20.0, 50.0]\nlr = [0.01, 0.02]\n')
    r = ok(cli(*TRAIN, "--config", f, "--data_dir", tiny_root, "--runs_root", tmp_path / "runs",
               "--no_progress"))
    tags = sorted(p.name for p in (tmp_path / "runs" / "two_stage" / "lcron").iterdir())
    assert tags == ["run-30-tau20.0_lr0.01", "run-30-tau20.0_lr0.02", "run-30-tau50.0_lr0.01",
                    "run-30-tau50.0_lr0.02"]
    for t in tags:
        saved = json.loads((tmp_path / "runs" / "two_stage" / "lcron" / t / "config.json").read_text())
        assert f"tau{saved['tau']}_lr{saved['lr']}" == saved["tag"]
        assert (tmp_path / "runs" / "two_stage" / "lcron" / t / "metrics.json").is_file()
    rows = [x for x in r.stdout.splitlines() if x.startswith("| LCRON [")]
    assert len(rows) == 4 and r.stdout.count("| method | joint |") == 1


# ------------------------------------------------------------------------- watching a run
def _scalars(folder: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_files_hold_the_runs_scalars(tiny_root, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    ok(cli(*TRAIN, "--method", "lcron", "--data_dir", tiny_root, "--run_dir", run, "--batch_size",
           "32", "--print_freq", "10", "--device", "cpu", "--no_progress"))
    ok(cli(*EVALUATE, "--run_dir", run, "--device", "cpu"))
    s = _scalars(run / "tensorboard_events")
    log = [json.loads(x) for x in (run / "loss_log.jsonl").read_text().splitlines()]
    assert [v for _, v in s["loss/total"]] == pytest.approx([r["loss"] for r in log])
    assert [st for st, _ in s["loss/total"]] == list(range(1, 28))
    for term in ("loss/e2e", "loss/single/retrieval", "loss/single/prerank"):
        assert len(s[term]) == 27
    assert s["weights/retrieval"][-1][1] == pytest.approx(log[-1]["weight/retrieval"])
    assert all(v == pytest.approx(0.01) for _, v in s["train/lr"]) and s["train/requests_per_s"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert s["eval/joint_recall"] == [(27, pytest.approx(metrics["joint_recall"]))]
    assert s["eval/prerank/ndcg"][0][1] == pytest.approx(metrics["stages"]["prerank"]["ndcg"])
    assert (run / "curves.png").stat().st_size > 10_000


def test_no_event_files_when_asked(tiny_root, tmp_path):
    run = tmp_path / "run"
    ok(cli(*TRAIN, "--data_dir", tiny_root, "--run_dir", run, "--batch_size", "64", "--max_steps",
           "2", "--device", "cpu", "--no_progress", "--no_tensorboard"))
    assert not (run / "tensorboard_events").exists() and (run / "curves.png").is_file()


def test_streaming_writes_one_point_per_test_day(tiny_root, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    ok(cli("-m", "deep_components.streaming", "--setting", "two_stage", "--data_dir", tiny_root,
           "--methods", "bce", "--first_test_day", "2024-01-15", "--batch_size", "64",
           "--device", "cpu", "--no_progress", "--out_dir", out))
    s = _scalars(out / "two_stage_streaming_tensorboard" / "bce-run30")
    assert [st for st, _ in s["eval/joint_recall"]] == [2, 3]       # trained on 2, then 3 days


def test_a_resumed_run_rewrites_its_events_from_the_checkpoint(tiny_root, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    common = ("--data_dir", tiny_root, "--run_dir", run, "--batch_size", "32", "--device", "cpu",
              "--no_progress")
    ok(cli(*TRAIN, *common, "--max_steps", "5"))
    ok(cli(*TRAIN, *common, "--resume"))
    steps = [st for st, _ in _scalars(run / "tensorboard_events")["loss/total"]]
    assert steps == list(range(1, 28))                               # each step once


# ------------------------------------------------------------------------ the installed package
COMMANDS = ("train", "evaluate", "serve", "stream", "collect", "data", "synthetic", "selfcheck",
            "methods", "sweep", "export")


def test_pip_install_gives_the_package_and_its_commands(tmp_path):
    """In a fresh virtual environment (the machine's torch and friends visible to it, so nothing
    is downloaded but the build backend): pip install ., every command's help, and a tiny run
    trained and evaluated from outside the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    src = tmp_path / "src"
    def skip(folder, names):              # a clone's files: no datasets, runs or build output
        top = Path(folder) == REPO
        return [n for n in names if n in (".git", "__pycache__") or n.endswith(".egg-info")
                or (top and n in ("data", "runs", "build"))]

    shutil.copytree(REPO, src, ignore=skip)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    bin_ = venv / "bin"
    for c in COMMANDS:
        h = subprocess.run([str(bin_ / f"lcron-{c}"), "--help"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
        assert h.returncode == 0 and "usage:" in h.stdout, (c, h.stderr[-500:])
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args):
        p = subprocess.run([str(bin_ / args[0]), *map(str, args[1:])], capture_output=True,
                           text=True, cwd=work, timeout=600)
        assert p.returncode == 0, (args, p.stderr[-1500:])
        return p

    run("lcron-synthetic", "--out", "tiny", "--preset", "tiny", "--quiet")
    run("lcron-train", "--data_dir", "tiny", "--batch_size", "64", "--max_steps", "3",
        "--device", "cpu", "--no_progress")
    e = run("lcron-evaluate", "--data_dir", "tiny", "--device", "cpu")
    assert "joint recall" in e.stdout
    assert (work / "runs" / "two_stage" / "lcron" / "run-30" / "metrics.json").is_file()
    where = subprocess.run([str(bin_ / "python"), "-c", "import deep_components; "
                            "print(deep_components.__file__)"], capture_output=True, text=True,
                           cwd=work).stdout
    assert str(venv) in where


def test_the_plotted_table_links_each_methods_curves(tiny_root, tmp_path):
    root = tmp_path / "runs"
    for method in ("bce", "lcron"):
        ok(cli(*TRAIN, "--method", method, "--data_dir", tiny_root, "--runs_root", root,
               "--batch_size", "64", "--max_steps", "2", "--device", "cpu", "--no_progress"))
        ok(cli(*EVALUATE, "--method", method, "--runs_root", root, "--device", "cpu"))
    r = ok(cli("-m", "deep_components.collect", "--runs_root", root, "--setting", "two_stage",
               "--plot"))
    assert "| runs | joint 95% CI | vs best other (Δ, p) | curves |" in r.stdout
    for method, name in (("bce", "BCE"), ("lcron", "LCRON")):
        row = next(x for x in r.stdout.splitlines() if x.startswith(f"| {name} |"))
        link = f"two_stage/{method}/run-30/curves.png"
        assert row.endswith(f"| 1 | – | – | [curves]({link}) |") and (root / link).is_file()
    plain = ok(cli("-m", "deep_components.collect", "--runs_root", root, "--setting", "two_stage"))
    assert "curves" not in plain.stdout                     # the launchers' table is unchanged
