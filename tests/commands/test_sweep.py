"""The validation day and the sweep: the choice is made on the validation day alone."""
from __future__ import annotations

import json
import pickle
import shutil

import pytest

from deep_components import sweep
from deep_components.data.pickle_writer import DictPickleWriter
from deep_components.errors import UsageError

GRID = ["--grid", "tau=20,50", "--grid", "lr=0.01,0.05"]
FLAGS = ["--batch_size", "100", "--no_progress", "--device", "cpu", "--no_tensorboard",
         "--threads", "1"]


def _sweep(data, runs, *extra):
    assert sweep.main(["--data_dir", str(data), "--runs_root", str(runs), *GRID, *FLAGS,
                       *extra]) == 0
    return json.loads((runs / "two_stage" / "lcron" / "sweep.json").read_text())


def _swap_final_labels(root, day):
    """The day's request_id_dict with every request's two-stage positives (rank_pos) and
    negatives (rank_neg) swapped: the same candidates (so the same ids and vocabulary), other
    labels."""
    path = root / "request_id_dict" / f"{day}.pkl"
    with open(path, "rb") as f:
        d = pickle.load(f)
    with open(path, "wb") as f, DictPickleWriter(f) as w:
        for rid, groups in d.items():
            g = dict(groups)
            if "rank_pos" in g:
                g["rank_pos"], g["rank_neg"] = groups["rank_neg"], groups["rank_pos"]
            w.add(rid, g)


def test_the_sweep_chooses_on_the_validation_day_and_ignores_the_test_days_labels(tiny_copy, tmp_path,
                                                                                  monkeypatch):
    first = _sweep(tiny_copy, tmp_path / "runs")
    assert (first["valid_day"], first["test_day"]) == ("2024-01-15", "2024-01-16")
    points = first["points"]
    assert [p["values"] for p in points] == [{"tau": 20.0, "lr": 0.01}, {"tau": 20.0, "lr": 0.05},
                                             {"tau": 50.0, "lr": 0.01}, {"tau": 50.0, "lr": 0.05}]
    best = max(range(4), key=lambda i: (points[i]["valid"][0], -i))
    assert first["chosen"] == points[best]["values"]
    run = json.loads((tmp_path / "runs" / "two_stage" / "lcron" / f"run-30-{first['chosen_tag']}"
                      / "config.json").read_text())
    assert run["train_days"] == ["2024-01-13", "2024-01-14"] and run["valid_day"] == "2024-01-15"
    # the same data but the test day's labels: the choice and the validation numbers stand
    other = tmp_path / "other"
    shutil.copytree(tiny_copy, other, ignore=shutil.ignore_patterns(".lcron_cache"))
    _swap_final_labels(other, "2024-01-16")
    second = _sweep(other, tmp_path / "runs2")
    assert second["chosen"] == first["chosen"]
    assert [p["valid"] for p in second["points"]] == [p["valid"] for p in points]
    assert all(a["test"] != b["test"] for a, b in zip(second["points"], points))
    md = (tmp_path / "runs2" / "two_stage" / "lcron" / "sweep.md").read_text()
    assert "chosen on the validation day 2024-01-15" in md and md.count("**chosen**") == 1
    # a sweep run again uses its finished runs
    again = _sweep(other, tmp_path / "runs2")
    assert again["points"] == second["points"]
    # evaluated with --test_day on its validation day, a run scores that day once
    from deep_components import cli, evaluation

    calls = []
    real = evaluation._evaluate_day
    monkeypatch.setattr(evaluation, "_evaluate_day", lambda run, day, *a: calls.append(day) or real(run, day, *a))
    run_dir = tmp_path / "runs2" / "two_stage" / "lcron" / f"run-30-{second['chosen_tag']}"
    assert cli.main(None, "evaluate", ["--setting", "two_stage", "--method", "lcron", "--run_dir",
                                       str(run_dir), "--data_dir", str(other), "--test_day",
                                       "2024-01-15", "--device", "cpu", "--no_progress",
                                       "--no_tensorboard"]) == 0
    assert calls == ["2024-01-15"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    valid = json.loads((run_dir / "valid_metrics.json").read_text())
    assert metrics["joint_recall"] == valid["joint_recall"] == metrics["valid_joint_recall"]
    chosen = next(p for p in second["points"] if p["values"] == second["chosen"])
    assert metrics["joint_recall"] == chosen["valid"][0]          # one run: its own recall


def test_grid_values_are_typed_and_checked():
    assert sweep.parse_grid(["tau=20,50", "lr=0.01", "emb_optimizer=adam,lazy_adam"]) == \
        {"tau": [20.0, 50.0], "lr": [0.01], "emb_optimizer": ["adam", "lazy_adam"]}
    for bad, needle in [("tau", "NAME=V1,V2"), ("taus=1", "did you mean 'tau'"),
                        ("tau=1,1", "given twice"), ("batch_size=big", "expected int")]:
        with pytest.raises(UsageError, match=needle):
            sweep.parse_grid([bad])


def test_the_choice_is_the_best_mean_validation_recall_and_the_first_of_equals():
    rows = [{"valid": [0.5, 0.7]}, {"valid": [0.65, 0.6]}, {"valid": [0.7, 0.5]}]
    assert sweep.choose(rows) == 1                     # 0.625 beats 0.6 and 0.6
    assert sweep.choose([{"valid": [0.6]}, {"valid": [0.6]}]) == 0
    assert sweep.summarise([0.5, 0.7]) == {"mean": 0.6, "std": pytest.approx(0.1414213562), "runs": 2}


def test_a_validation_day_is_held_out_of_training_and_evaluated(tiny_root, tmp_path):
    from deep_components.config import RunConfig
    from deep_components.training import resolve_split

    days = ["2024-01-13", "2024-01-14", "2024-01-15", "2024-01-16"]
    cfg = RunConfig(data_dir=str(tiny_root), valid_day="auto")
    assert resolve_split(cfg, days) == (days[:2], days[2], days[3])
    cfg = RunConfig(data_dir=str(tiny_root), valid_day=days[0])
    assert resolve_split(cfg, days) == (days[1:3], days[0], days[3])
    assert resolve_split(RunConfig(data_dir=str(tiny_root)), days) == (days[:3], None, days[3])
    with pytest.raises(UsageError, match="also one of --train_days"):
        resolve_split(RunConfig(data_dir=str(tiny_root), valid_day=days[0], train_days=days[:2]),
                      days)
    with pytest.raises(UsageError, match="no day before the test day 2024-01-13"):
        resolve_split(RunConfig(data_dir=str(tiny_root), valid_day="auto", test_day=days[0],
                                train_days=days[1:]), days)
