"""The surfaces around train/evaluate, as guarded as they are: serve, resume, streaming,
collect --compare, evaluate's flags, the data command, selfcheck, the kernels and the docs.
Each case goes through the real entry point and ends in exit status 2 with one ``error:`` line
naming the flag or file, or in the correct result (the numbers are those of the issue's list)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from deep_components.config import RunConfig
from deep_components.data.synthetic import generate, preset_params
from deep_components.run_folder import RunFolder, RunLock
from deep_components.training import train

pytest.importorskip("faiss")
from helpers import cli, ok, one_error


def _cfg(root, run_dir, setting="two_stage", **kw):
    return RunConfig(**({"setting": setting, "method": "lcron", "batch_size": 64,
                         "data_dir": str(root), "run_dir": str(run_dir), "progress": False,
                         "device": "cpu"} | kw))


SERVE = ("-m", "deep_components.serve")
EVAL = ("deep_components/run_test2.py",)
TRAIN = ("deep_components/run_train2.py",)
STREAM = ("-m", "deep_components.streaming")
KEEP2 = ("--keep", "60", "10")


@pytest.fixture(scope="module")
def other_root(tmp_path_factory):
    """Another tiny world with the same id counts and other content."""
    root = tmp_path_factory.mktemp("other")
    generate(root, preset_params("tiny"), seed=1, preset="tiny", verbose=False)
    return root


@pytest.fixture(scope="module")
def runs(tiny_root, tmp_path_factory):
    """Trained run folders (a runs root): two-stage LCRON runs 30 and 31 and its tagged
    ablation, a three-stage LCRON run."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, setting, extra in (("a", "two_stage", {}), ("a31", "two_stage", {"run_id": 31}),
                                 ("e2e", "two_stage", {"tag": "e2e", "loss_options": {"terms": "e2e"}}),
                                 ("c", "three_stage", {})):
        cfg = RunConfig(**{"setting": setting, "method": "lcron", "batch_size": 64,
                           "data_dir": str(tiny_root), "runs_root": str(root), "progress": False,
                           "device": "cpu", "max_steps": 6} | extra)
        out[name] = train(cfg)
    out["root"] = root
    return out


def _copy(run, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns(".lock", "*metrics.json"))
    return dst


# ---------------------------------------------------------------------------- serve (1-11)
def test_s1_two_settings_are_two_tables(runs):
    r = ok(cli(*SERVE, "--run_dir", runs["a"], runs["c"], "--max_requests", "40", "--device", "cpu"))
    out = r.stdout
    assert "**two_stage, day 2024-01-16, keep [500, 10]" in out
    assert "**three_stage, day 2024-01-16, keep [500, 100, 10]" in out
    assert "| method | kept by retrieval | kept by prerank | kept by rank | runs |" in out
    assert out.count("| LCRON |") == 2 and "± 0.0000 | 1 |" in out      # one run in each table


def test_s2_the_same_folder_twice_is_refused(runs, tmp_path):
    one_error(cli(*SERVE, "--run_dir", runs["a"], Path(runs["a"]) / ".." / runs["a"].name,
                    "--device", "cpu"), "given twice")
    copy = _copy(runs["a"], tmp_path)                 # a copied folder: the same training
    one_error(cli(*SERVE, "--run_dir", runs["a"], copy, "--max_requests", "8", "--device", "cpu"),
               f"--run_dir {copy}: the same training as {runs['a']}")


def test_s3_a_tagged_ablation_is_its_own_row(runs):
    r = ok(cli(*SERVE, "--run_dir", runs["a"], runs["a31"], runs["e2e"], "--max_requests", "40",
                 "--device", "cpu", *KEEP2))
    rows = [x for x in r.stdout.splitlines() if x.startswith("| LCRON")]
    assert [x.split(" | ")[0] for x in rows] == ["| LCRON", "| LCRON [e2e]"]
    assert rows[0].endswith("| 2 |") and rows[1].endswith("| 1 |")
    m = json.loads((runs["e2e"] / "catalogue_metrics.json").read_text())
    assert m["tag"] == "e2e" and m["run_key"] == RunFolder(runs["e2e"]).run_key()


def test_s4_towers_of_another_training_are_refused(runs, tmp_path):
    copy = _copy(runs["a"], tmp_path)
    shutil.copy(runs["c"] / "towers.pt", copy / "towers.pt")
    one_error(cli(*SERVE, "--run_dir", copy, "--device", "cpu"),
               "towers.pt: comes from another training than")
    assert not (copy / "catalogue_metrics.json").exists()


def test_s5_other_data_says_so(runs, other_root, tmp_path):
    run = _copy(runs["a"], tmp_path)
    ok(cli(*SERVE, "--run_dir", run, "--max_requests", "40", "--device", "cpu", *KEEP2))
    own = json.loads((run / "catalogue_metrics.json").read_text())
    assert own["own_data"] is True
    r = ok(cli(*SERVE, "--run_dir", run, "--data_dir", other_root, "--max_requests", "40",
                 "--device", "cpu", *KEEP2))
    assert f"on {other_root}: NOT the run's own data" in r.stdout
    m = json.loads((run / "catalogue_metrics.json").read_text())
    assert m["own_data"] is False and m["data_dir"] == str(other_root)
    assert m["survival"] != own["survival"]


def test_s6_overwrite_removes_the_catalogue_metrics(runs, tiny_root, tmp_path):
    run = _copy(runs["a"], tmp_path)
    ok(cli(*SERVE, "--run_dir", run, "--max_requests", "8", "--device", "cpu", *KEEP2))
    assert (run / "catalogue_metrics.json").is_file()
    ok(cli(*TRAIN, "--data_dir", tiny_root, "--run_dir", run, "--batch_size", "64", "--max_steps",
             "2", "--no_progress", "--device", "cpu", "--overwrite"))
    assert not (run / "catalogue_metrics.json").exists()
    assert sorted(RunFolder(run).holds()) == sorted(
        ["config.json", "env.json", "loss_log.jsonl", "checkpoint.pt", "towers.pt",
         "train_summary.json", "curves.png", "tensorboard_events"])


def test_s7_a_folder_in_use_is_not_served(runs, tmp_path):
    run = _copy(runs["a"], tmp_path)
    with RunLock(run):                                   # as a training process holds it
        one_error(cli(*SERVE, "--run_dir", run, "--device", "cpu"),
                   f"{run}: in use by another process (pid {os.getpid()})")
        with pytest.raises(Exception, match="in use by another process"):
            from deep_components.serve import Cascade

            Cascade.from_run(run, device="cpu")
    assert not (run / "catalogue_metrics.json").exists()


@pytest.mark.parametrize("flags,needle", [
    (["--batch_size", "-4"], "--batch_size must be >= 1, got -4"),              # 8
    (["--batch_size", "0"], "--batch_size must be >= 1, got 0"),                # 9
    (["--max_requests", "-5"], "--max_requests must be >= 1, got -5"),          # 9
    (["--max_requests", "0"], "--max_requests must be >= 1, got 0"),
    (["--keep", "10", "60"], "--keep must be positive and strictly decreasing"),
    (["--device", "cuda:7"], "--device cuda:7"),
])
def test_s8_s9_serve_flags_are_checked_first(runs, flags, needle):
    if flags[0] == "--device" and torch.cuda.is_available():
        pytest.skip("a CUDA machine")
    one_error(cli(*SERVE, "--run_dir", runs["a"], *flags), needle)


def test_s10_a_config_without_data_dir_is_one_line(runs, tmp_path):
    run = _copy(runs["a"], tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    del cfg["data_dir"]
    (run / "config.json").write_text(json.dumps(cfg))
    one_error(cli(*SERVE, "--run_dir", run, "--device", "cpu"), "config.json: not a run "
               "configuration of this program (missing ['data_dir'])")
    one_error(cli(*EVAL, "--run_dir", run, "--device", "cpu"), "missing ['data_dir']")


def test_s11_a_training_day_needs_the_opt_in(runs, tmp_path):
    run = _copy(runs["a"], tmp_path)
    one_error(cli(*SERVE, "--run_dir", run, "--day", "2024-01-14", "--device", "cpu"),
               "--day 2024-01-14 is one of the run's training days", "--allow_train_day")
    assert not (run / "catalogue_metrics.json").exists()
    ok(cli(*SERVE, "--run_dir", run, "--day", "2024-01-14", "--allow_train_day",
             "--max_requests", "8", "--device", "cpu", *KEEP2))
    assert json.loads((run / "catalogue_metrics.json").read_text())["day"] == "2024-01-14"


# --------------------------------------------------------------------------- resume (12-16)
def _train_cli(root, run, *extra):
    return cli(*TRAIN, "--data_dir", root, "--run_dir", run, "--batch_size", "64", "--no_progress",
                "--device", "cpu", *extra)


def test_r12_resume_invalidates_the_earlier_models_results(tiny_root, tmp_path):
    root = tmp_path / "runs"
    run = root / "two_stage" / "lcron" / "run-30"
    ok(_train_cli(tiny_root, run, "--max_steps", "5"))
    ok(cli(*EVAL, "--run_dir", run, "--device", "cpu"))
    ok(cli(*SERVE, "--run_dir", run, "--max_requests", "8", "--device", "cpu", *KEEP2))
    assert {"metrics.json", "catalogue_metrics.json"} <= set(RunFolder(run).holds())
    ok(_train_cli(tiny_root, run, "--max_steps", "8", "--resume"))
    assert not {"metrics.json", "catalogue_metrics.json"} & set(RunFolder(run).holds())
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 8
    r = cli("-m", "deep_components.collect", "--runs_root", root, "--setting", "two_stage")
    one_error(r, "no metrics.json under")                  # nothing stale is reported


def test_r13_resume_and_overwrite_contradict(runs, tiny_root, tmp_path):
    run = _copy(runs["a"], tmp_path)
    before = (run / "config.json").read_text()
    one_error(_train_cli(tiny_root, run, "--resume", "--overwrite"), "--resume", "--overwrite",
               "pass one of them")
    assert (run / "config.json").read_text() == before


def test_r14_resume_with_another_test_day_is_refused(tiny_root, tmp_path):
    run = tmp_path / "run"
    days = ("--train_days", "2024-01-13", "2024-01-14")
    ok(_train_cli(tiny_root, run, "--max_steps", "3", *days, "--test_day", "2024-01-16"))
    one_error(_train_cli(tiny_root, run, "--resume", *days, "--test_day", "2024-01-15"),
               "this command differs from it: test_day: run '2024-01-16', this run '2024-01-15'")
    one_error(_train_cli(tiny_root, run, "--resume", "--test_day", "2024-01-15", "--train_days",
                          "2024-01-13", "2024-01-16"),
               "train_days: checkpoint ['2024-01-13', '2024-01-14'], this run ['2024-01-13', "
               "'2024-01-16']", "test_day: run '2024-01-16', this run '2024-01-15'")
    ok(_train_cli(tiny_root, run, "--resume", *days, "--test_day", "2024-01-16", "--max_steps", "5"))


def test_r15_resume_on_other_data_is_refused_and_the_same_data_moved_is_not(tiny_root, other_root,
                                                                            tmp_path):
    run = tmp_path / "run"
    ok(_train_cli(tiny_root, run, "--max_steps", "3"))
    before = (run / "config.json").read_text()
    line = one_error(_train_cli(other_root, run, "--resume"), f"data_dir: run {tiny_root}, this "
                      f"run {other_root}", "id_cnt.pkl differs", "the content of 4 day(s) differs")
    assert "this command differs from it" in line
    assert (run / "config.json").read_text() == before
    moved = tmp_path / "moved"
    shutil.copytree(tiny_root, moved, ignore=shutil.ignore_patterns(".lcron_cache"))
    ok(_train_cli(moved, run, "--resume", "--max_steps", "5"))
    saved = json.loads((run / "config.json").read_text())
    assert saved["data_dir"] == str(moved) and saved["run_key"] == json.loads(before)["run_key"]


def test_r16_a_run_stopped_by_max_steps_resumes_exactly(tiny_root, tmp_path):
    """--max_steps 5 (below --ckpt_every) leaves a checkpoint where it stopped; resuming it to 8
    gives the towers and loss log of a run of 8 steps; a finished run says it is finished."""
    part, whole = tmp_path / "part", tmp_path / "whole"
    ok(_train_cli(tiny_root, part, "--max_steps", "5"))
    assert RunFolder(part).load_checkpoint()["position"]["step"] == 5
    ok(_train_cli(tiny_root, part, "--max_steps", "8", "--resume"))
    ok(_train_cli(tiny_root, whole, "--max_steps", "8"))
    a, b = (torch.load(d / "towers.pt", weights_only=True) for d in (part, whole))
    for sa, sb in zip(a["models"], b["models"]):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["loss"] for r in RunFolder(part).read_loss_log()] == \
        [r["loss"] for r in RunFolder(whole).read_loss_log()]
    one_error(_train_cli(tiny_root, part, "--max_steps", "8", "--resume"),
               "--max_steps 8: the run in", "already at step 8")
    done = tmp_path / "done"
    ok(_train_cli(tiny_root, done))
    assert RunFolder(done).summary()["finished"] is True
    one_error(_train_cli(tiny_root, done, "--resume"), "its training is finished (all 3 days, 12 "
               "steps): nothing to resume")


# ------------------------------------------------------------------------ streaming (17-22)
def _stream(root, out, *extra, env=None):
    return cli(*STREAM, "--setting", "two_stage", "--data_dir", root, "--first_test_day",
                "2024-01-15", "--batch_size", "64", "--no_progress", "--device", "cpu",
                "--out_dir", out, *extra, env=env)


def test_t17_streaming_applies_threads(tiny_root, tmp_path, monkeypatch):
    from deep_components import streaming

    seen = []
    real = streaming.Trainer.train_day
    monkeypatch.setattr(streaming.Trainer, "train_day",
                        lambda self, *a, **k: seen.append(torch.get_num_threads()) or real(self, *a, **k))
    assert streaming.main(["--setting", "two_stage", "--data_dir", str(tiny_root), "--methods",
                           "bce", "--first_test_day", "2024-01-16", "--batch_size", "64",
                           "--no_progress", "--device", "cpu", "--max_steps", "2", "--threads", "1",
                           "--out_dir", str(tmp_path)]) == 0
    assert seen and set(seen) == {1}


def test_t18_a_misspelt_method_is_refused_before_training(tiny_root, tmp_path):
    r = _stream(tiny_root, tmp_path, "--methods", "bce", "lcorn")
    one_error(r, "unknown loss 'lcorn' (did you mean 'lcron'?)")
    assert "bce run" not in r.stderr and not list(tmp_path.iterdir())


def test_t19_an_out_dir_that_is_a_file_is_refused_first(tiny_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _stream(tiny_root, blocker, "--methods", "bce")
    one_error(r, f"{blocker}: cannot write the streaming results here")
    assert "bce run" not in r.stderr and blocker.read_text() == "x"


def test_t20_a_batch_larger_than_the_days_is_refused(tiny_root, tmp_path):
    r = _stream(tiny_root, tmp_path / "out", "--methods", "bce", "--batch_size", "5000")
    one_error(r, "--batch_size 5000 is larger than every day before the first test day 2024-01-15")


def test_t21_kernels_native_without_a_compiler_is_refused(tiny_root, tmp_path):
    env = {"PATH": str(tmp_path), "LCRON_KERNEL_DIR": str(tmp_path / "k"), "HOME": str(tmp_path)}
    r = _stream(tiny_root, tmp_path / "out", "--methods", "bce", "--kernels", "native", env=env)
    one_error(r, "--kernels native: PyTorch fallback (no C++ compiler")


def test_t22_max_steps_caps_the_whole_pass(tiny_root, tmp_path):
    out = tmp_path / "out"
    ok(_stream(tiny_root, out, "--methods", "bce", "--max_steps", "1"))
    import pandas as pd

    df = pd.read_csv(out / "two_stage_streaming_runs.csv")
    assert list(df["test_day"]) == ["2024-01-15", "2024-01-16"]
    assert list(df["steps"]) == [1, 1] and list(df["train_days"]) == [2, 3]
    meta = json.loads((out / "two_stage_streaming.json").read_text())
    assert set(df["run_key"]) == {meta["run_key"]} and meta["data_dir"] == str(tiny_root)


# ------------------------------------------------------------------ collect --compare (23-26)
def _world(root, joint: dict[str, float], data_dir="d"):
    for method, value in joint.items():
        run = root / "two_stage" / method / "run-30"
        run.mkdir(parents=True)
        key = f"{root}{method}"
        (run / "config.json").write_text(json.dumps({"run_key": key}))
        (run / "metrics.json").write_text(json.dumps({"method": method, "joint_recall": value,
                                                      "stages": {}, "run_key": key,
                                                      "data_dir": data_dir}))


COMPARE = ("-m", "deep_components.collect", "--setting", "two_stage", "--compare")


def test_c23_roots_with_one_name_are_two_columns(tmp_path):
    _world(tmp_path / "x" / "runs", {"lcron": 0.5, "bce": 0.4})
    _world(tmp_path / "y" / "runs", {"lcron": 0.3, "bce": 0.6})
    out = ok(cli(*COMPARE, tmp_path / "x" / "runs", tmp_path / "y" / "runs")).stdout
    assert "| method | paper (RecFlow) | x/runs | y/runs |" in out
    assert "| 0.5000 (1) | 0.3000 (2) |" in out
    one_error(cli(*COMPARE, tmp_path / "x" / "runs", tmp_path / "x" / "runs"), "given twice")


def test_c24_a_root_of_two_datasets_is_refused(tmp_path):
    _world(tmp_path / "w", {"lcron": 0.5})
    _world(tmp_path / "w2", {"bce": 0.4}, data_dir="other")
    shutil.move(tmp_path / "w2" / "two_stage" / "bce", tmp_path / "w" / "two_stage" / "bce")
    one_error(cli(*COMPARE, tmp_path / "w"), "come from different datasets", "other")


def test_c25_compare_dot_has_a_column_name(tmp_path):
    _world(tmp_path / "here", {"lcron": 0.5})
    out = ok(cli(*COMPARE, ".", cwd=tmp_path / "here")).stdout
    assert "| method | paper (RecFlow) | here |" in out


def test_c26_compare_takes_methods(tmp_path):
    _world(tmp_path / "w", {"lcron": 0.5, "bce": 0.4, "icc": 0.3})
    out = ok(cli(*COMPARE, tmp_path / "w", "--methods", "lcron", "bce")).stdout
    assert "| LCRON |" in out and "| BCE |" in out and "ICC" not in out


# ----------------------------------------------- evaluate, data command, selfcheck (27-29)
@pytest.mark.parametrize("flags,needle", [
    (["--tz", "Mars/Phobos"], "--tz 'Mars/Phobos': unknown time zone"),
    (["--tz", "UTC"], "--tz UTC: the run in"),
    (["--method", "bce"], "--method bce: the run in"),
    (["--train_days", "2024-01-13"], "--train_days 2024-01-13: the run in"),
    (["--lr", "0.5"], "--lr 0.5: the run in"),
    (["--overwrite"], "--overwrite is a training flag"),
])
def test_e27_evaluate_checks_the_flags_it_does_not_use(runs, tmp_path, flags, needle):
    run = _copy(runs["a"], tmp_path)
    one_error(cli(*EVAL, "--run_dir", run, "--device", "cpu", *flags), needle)
    assert not (run / "metrics.json").exists()


def test_e27_evaluate_accepts_the_runs_own_training_flags(runs, tmp_path):
    """The paper's test scripts take the training flags: with the run's own values they pass."""
    run = _copy(runs["a"], tmp_path)
    r = ok(cli(*EVAL, "--run_dir", run, "--device", "cpu", "--loss_type", "lcron", "--lr", "0.01",
                 "--batch_size", "64", "--tz", "Asia/Shanghai", "--train_days", "2024-01-14",
                 "2024-01-13", "2024-01-15"))
    assert r.stdout.startswith("lcron (two_stage, run 30, test day 2024-01-16, SYNTHETIC data): "
                               "joint recall ")
    assert json.loads((run / "metrics.json").read_text())["own_data"] is True


def test_e27_evaluate_on_other_data_says_so(runs, other_root, tmp_path):
    run = _copy(runs["a"], tmp_path)
    r = ok(cli(*EVAL, "--run_dir", run, "--device", "cpu", "--data_dir", other_root))
    assert f"on {other_root}: NOT the run's own data" in r.stdout
    assert json.loads((run / "metrics.json").read_text())["own_data"] is False


def test_d28_the_data_command_checks_tz(tiny_root):
    one_error(cli("-m", "deep_components.data", "--root", tiny_root, "--tz", "Mars/Phobos"),
               "--tz 'Mars/Phobos': unknown time zone")


def test_sc29_selfcheck_usage_error_is_one_line():
    r = cli("-m", "deep_components.selfcheck", "--setting", "bogus")
    one_error(r, "--setting: invalid choice: 'bogus'")


@pytest.mark.parametrize("setting", ["two_stage", "three_stage"])
def test_sc29_selfcheck_compares_with_the_reference(setting, capsys, monkeypatch):
    from deep_components import selfcheck_reference as ref
    from deep_components.selfcheck import main

    assert main(["--setting", setting]) == 0
    out = capsys.readouterr().out
    assert "all values agree with the reference" in out and "MISMATCH" not in out
    stages = 2 if setting == "two_stage" else 3
    assert out.count("  ok") == 8 + stages + 1          # methods, stages' metrics, joint recall
    short = ref.SHORT[setting]
    bad = dict(ref.LOSSES)
    v = bad[(short, "lcron")]
    bad[(short, "lcron")] = (v[0] * 1.001, *v[1:])
    monkeypatch.setattr(ref, "LOSSES", bad)
    monkeypatch.setattr(ref, "JOINT", {**ref.JOINT, short: 0.99})
    assert main(["--setting", setting]) == 1
    out = capsys.readouterr().out
    lcron = next(x for x in out.splitlines() if x.startswith("lcron: loss"))
    assert "MISMATCH: loss" in lcron and "(reference " in lcron
    assert "metrics joint recall" in out and "2 line(s) differ from the reference" in out


def test_sc29_selfcheck_of_a_setting_without_reference_says_so(capsys):
    from deep_components.selfcheck import main

    assert main(["--setting", "four_stage"]) == 0
    out = capsys.readouterr().out
    assert "NOT checked: the authors' code has no such setting" in out and "  ok" not in out


# ------------------------------------------------------------------------------ kernels (30, 31)
def test_k30_kernels_help_is_honest():
    r = ok(cli(*TRAIN, "--help"))
    text = " ".join(r.stdout.split())
    assert "same values either way" not in text
    assert "bit-identical" in text and "to float rounding" in text


# ------------------------------------------------------------------------------- docs (32-35)
def test_doc32_33_serve_help_and_docstring():
    import deep_components.serve as serve

    assert "--index exact|ivf|hnsw" in serve.__doc__
    text = " ".join(ok(cli(*SERVE, "--help")).stdout.split())
    assert "--index {exact,ivf,hnsw} faiss index of the retrieval stage" in text
    assert "--device DEVICE auto (cuda if available), cpu, cuda, cuda:N" in text
    assert serve.build_parser().parse_args(["--run_dir", "x"]).device == "auto"


def test_doc34_evaluate_help_describes_evaluation():
    text = " ".join(ok(cli(*EVAL, "--help")).stdout.split("options:", 1)[1].split())
    assert "--test_day TEST_DAY date (default: the run's own test day)" in text
    assert "training flags (evaluation uses the run's own values; a flag given here must equal " \
           "the run's, or it is an error)" in text
    head, training = text.split("training flags (evaluation")
    assert "--train_days" in training and "--train_days" not in head
    assert "--allow_train_day" in head
    assert "--allow_train_day" not in ok(cli(*TRAIN, "--help")).stdout


# ------------------------------------------------------------------- one owner of the folder


