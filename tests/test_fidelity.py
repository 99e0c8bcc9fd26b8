"""bench/fidelity.py: the curve's steps, its crossings, and a grid that stops and resumes on the
tiny dataset (two methods) to the same results as one uninterrupted run."""
from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest

from helpers import REPO

spec = importlib.util.spec_from_file_location("fidelity", REPO / "bench" / "fidelity.py")
fidelity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fidelity)


def test_checkpoints_end_at_the_pass_and_are_evenly_spaced():
    assert fidelity.checkpoints(1012, 10) == [101, 202, 304, 405, 506, 607, 708, 810, 911, 1012]
    assert fidelity.checkpoints(8, 2) == [4, 8]
    assert fidelity.checkpoints(3, 10) == [1, 2, 3]          # never a step twice, never step 0


def test_crossings_name_the_step_after_the_order_changes():
    t = pd.DataFrame({"a": [0.5, 0.6, 0.7], "b": [0.6, 0.62, 0.65], "c": [0.1, 0.2, 0.3]},
                     index=[10, 20, 30])
    assert fidelity.crossings(t) == ["- a over b after step 30"]
    t2 = pd.DataFrame({"a": [0.5, 0.7, 0.5], "b": [0.6, 0.6, 0.6]}, index=[1, 2, 3])
    assert fidelity.crossings(t2) == ["- b over a after step 3 (order changed at steps 2, 3)"]
    assert fidelity.crossings(t[["a", "c"]]) == ["- none: every pair keeps its order at every point"]


def test_a_pass_without_the_synthetic_marker_counts_the_loaders_requests(tiny_root, tiny_copy):
    """Real data has no SYNTHETIC.json: the pass is counted from the days as training opens them,
    and comes to the steps the marker states."""
    days = sorted(p.stem for p in (tiny_root / "realshow").iterdir())[:-2]
    per_day = json.loads((tiny_root / "SYNTHETIC.json").read_text())["params"]["requests_per_day"]
    (tiny_copy / "SYNTHETIC.json").unlink()
    for bs in (64, 100):
        want = len(days) * (per_day // bs)
        assert fidelity.pass_steps(tiny_root, days, bs, "two_stage") == want
        assert fidelity.pass_steps(tiny_copy, days, bs, "three_stage") == want
    assert (tiny_copy / ".lcron_cache").is_dir()               # converted where training looks
    with pytest.raises(SystemExit, match="leaves no training step"):
        fidelity.pass_steps(tiny_copy, days, per_day + 1, "two_stage")


def _args(data, out, *extra):
    return ["--data_dir", str(data), "--settings", "two_stage", "--methods", "bce", "lcron",
            "--run_ids", "1", "--points", "2", "--batch_size", "64", "--out", str(out), *extra]


def test_the_grid_stops_resumes_and_matches_an_uninterrupted_run(tiny_root, tmp_path, capsys):
    run = fidelity.Runner(in_process=True)
    out = tmp_path / "fid"
    assert fidelity.main(_args(tiny_root, out, "--max_segments", "1"), run) == 3
    state = out / "curves" / "two_stage"
    first = json.loads((state / "bce" / "run-1.json").read_text())
    assert [p["step"] for p in first["points"]] == [4] and not first["done"]
    assert not (state / "lcron" / "run-1.json").exists()

    assert fidelity.main(_args(tiny_root, out), run) == 0
    bce = json.loads((state / "bce" / "run-1.json").read_text())
    lcron = json.loads((state / "lcron" / "run-1.json").read_text())
    assert bce["points"][0] == first["points"][0]             # the first segment was not redone
    assert [p["step"] for p in bce["points"]] == [4, 8] and bce["done"] and lcron["done"]
    for st in (bce, lcron):
        assert set(st["points"][0]["stage_recall"]) == {"retrieval", "prerank"}
        flow = st["points"][-1]["groups"]["prerank"]             # where the cuts fell, per point
        assert flow["rank_pos"]["survival"] == pytest.approx(st["points"][-1]["valid_joint_recall"], abs=5e-3)
        assert 0 < st["points"][-1]["valid_joint_recall"] <= 1

    # the stopped-and-resumed run gives the bits of one pass trained in one go
    plain = tmp_path / "plain"
    common = ["--setting", "two_stage", "--method", "bce", "--run_id", "1", "--data_dir",
              str(tiny_root), "--runs_root", str(plain), "--device", "cpu"]
    days = sorted(p.stem for p in (tiny_root / "realshow").iterdir())
    assert run("train", common + ["--train_days", *days[:-2], "--valid_day", days[-2],
                                  "--test_day", days[-1], "--batch_size", "64", "--no_progress"])[0] == 0
    assert run("evaluate", common)[0] == 0
    m = json.loads((plain / "two_stage" / "bce" / "run-1" / "metrics.json").read_text())
    assert m["joint_recall"] == bce["test_joint_recall"]
    assert m["valid_joint_recall"] == bce["points"][-1]["valid_joint_recall"]

    report = (out / "fidelity.md").read_text()
    assert "| BCE |" in report and "| LCRON |" in report and "2 of 2 runs finished" in report
    assert "Spearman ρ vs paper" in report
    curves = pd.read_csv(out / "curves.csv")
    assert len(curves) == 4 and set(curves["step"]) == {4, 8}
    assert (out / "curves_two_stage.png").stat().st_size > 10_000

    capsys.readouterr()
    assert fidelity.main(_args(tiny_root, out), run) == 0      # a third sitting trains nothing
    text = capsys.readouterr().out
    assert text.count("finished earlier, skipped") == 2
    assert "validation joint recall" not in text.split("# Fidelity")[0]     # no segment ran


def test_a_report_of_nothing_yet_says_so(tiny_root, tmp_path):
    out = tmp_path / "not" / "there"
    assert fidelity.main(_args(tiny_root, out, "--report"), fidelity.Runner(in_process=True)) == 0
    assert "(0 of 2 runs finished)" in (out / "fidelity.md").read_text()


def test_a_state_made_with_other_settings_is_refused(tiny_root, tmp_path):
    out = tmp_path / "fid"
    st = out / "curves" / "two_stage" / "bce"
    st.mkdir(parents=True)
    (st / "run-1.json").write_text(json.dumps({"data_dir": "elsewhere", "points": [], "done": False}))
    with pytest.raises(SystemExit, match="run-1.json was made with other settings"):
        fidelity.main(_args(tiny_root, out, "--report"), fidelity.Runner(in_process=True))


def test_the_report_counts_finished_runs_only_and_shows_where_the_cuts_fall(tiny_root, tmp_path):
    """Run 2 stops after its first segment: its folder then holds the validation day's metrics,
    which neither the tables nor the group flow may count."""
    out = tmp_path / "fid"
    args = ["--data_dir", str(tiny_root), "--settings", "two_stage", "--methods", "bce",
            "--run_ids", "1", "2", "--points", "2", "--batch_size", "64", "--out", str(out)]
    assert fidelity.main(args + ["--max_segments", "3"], fidelity.Runner(in_process=True)) == 3
    stopped = json.loads((out / "two_stage" / "bce" / "run-2" / "metrics.json").read_text())
    assert stopped["test_day"] == "2024-01-15"                     # the validation day's scores
    report = (out / "fidelity.md").read_text()
    assert "1 of 2 runs finished" in report
    lines = report.splitlines()
    row = next(x for x in lines if x.startswith("| BCE | 0."))
    head = [c.strip() for c in lines[lines.index(row) - 2].split("|")]
    done = json.loads((out / "two_stage" / "bce" / "run-1" / "metrics.json").read_text())
    cells = [c.strip() for c in row.split("|")]
    assert cells[head.index("joint")] == f"{done['joint_recall']:.4f}"      # one run: no ± shown
    assert cells[head.index("runs")] == "1"
    flow = next(x for x in report.splitlines() if x.startswith("| BCE | ") and x.count("|") == 9)
    cells = [float(c) for c in flow.split("|")[2:8]]
    groups = done["stages"]["prerank"]["groups"]
    assert cells[1] == pytest.approx(groups["rank_pos"]["survival"], abs=5e-4)
    assert cells[1] == pytest.approx(done["joint_recall"], abs=5e-4)       # full positive groups
    assert sum(cells[2:6]) == pytest.approx(1.0, abs=2e-3) and cells[0] >= cells[1]
    assert flow.endswith("| 1 |")
    curves = pd.read_csv(out / "curves.csv")                        # the finished run's points only
    assert set(curves["run_id"]) == {1} and list(curves["step"]) == [4, 8]
