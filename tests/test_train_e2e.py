"""End to end on tiny synthetic data: training beats untrained models, run folders, re-test,
collector, entry points and a launcher."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deep_components.specs import get_spec
from deep_components.collect import collect
from deep_components.config import RunConfig
from deep_components.data import load_day, read_id_counts
from deep_components.scoring import evaluate
from deep_components.loss import method_order
from deep_components.process import seed_everything
from deep_components.evaluation import evaluate_run
from deep_components.models import build_models
from deep_components.training import train

REPO = Path(__file__).resolve().parent.parent
TEST_DAY = "2024-01-16"


def _cfg(root, runs, setting, method, run_id=None, batch_size=32, **kw):
    run_id = RUN_ID if run_id is None else run_id
    return RunConfig(setting=setting, method=method, run_id=run_id, batch_size=batch_size,
                     data_dir=str(root), runs_root=str(runs), progress=False, device="cpu", **kw)


def _untrained(root, setting, seed):
    spec = get_spec(setting)
    seed_everything(seed)  # the trainer initialises its towers from the same seed
    models = build_models(spec, read_id_counts(root), seed=seed)  # full tables: same init rows
    return evaluate(models, load_day(root, TEST_DAY, spec), spec, torch.device("cpu"))


#: ICC learns slowest (it is also the weakest method in the paper), and float-rounding changes
#: anywhere in the towers reshuffle which run id lands where: two-stage, in the 27 steps of batch
#: 32, its gain over run ids 1..8 ranges from -0.01 to 0.07, so it trains with batch 16 there
#: (54 steps: 0.03-0.11, mean 0.08); three-stage, batch 32 gives 0.04-0.09 (mean 0.06).  Its
#: margin is checked on the mean gain of three run ids (ICC_RUN_IDS).  RankFlow's three-stage
#: distillation gains 0.12-0.19 over run ids 1..8, hence its lower margin.
#: ICC's loss barely moves in these few steps: on the same five first-day batches, the trained
#: towers' loss is 0.3416 / 0.3224 / 0.3294 against the untrained 0.3378 / 0.3385 / 0.3373 (run ids
#: 3, 4, 5, two-stage) and 0.3369 / 0.3434 / 0.3468 against 0.3383 / 0.3409 / 0.3429 three-stage,
#: so the log's first-five-against-last-five comparison only measures which batches came last
#: (and flips with the CPU's rounding); its loss is not checked, its metric gain is.
MARGIN = {"icc": 0.04, "rankflow": 0.10}
BATCH = {("icc", "two_stage"): 16}
RUN_ID = 3
ICC_RUN_IDS = (3, 4, 5)
METHODS = method_order()            # every registered method


@pytest.mark.parametrize("setting", ["two_stage", "three_stage"])
@pytest.mark.parametrize("method", METHODS)
def test_training_beats_untrained(tiny_root, tmp_path, setting, method):
    cfg = _cfg(tiny_root, tmp_path, setting, method, batch_size=BATCH.get((method, setting), 32))
    run_dir = train(cfg)
    for f in ("config.json", "env.json", "loss_log.jsonl", "towers.pt", "train_summary.json"):
        assert (run_dir / f).is_file(), f
    m = evaluate_run(cfg)
    gains = [m["joint_recall"] - _untrained(tiny_root, setting, cfg.resolved_seed())["joint_recall"]]
    if method == "icc":
        for rid in ICC_RUN_IDS[1:]:
            other = _cfg(tiny_root, tmp_path, setting, method, run_id=rid, batch_size=cfg.batch_size)
            train(other)
            gains.append(evaluate_run(other)["joint_recall"]
                         - _untrained(tiny_root, setting, other.resolved_seed())["joint_recall"])
    assert sum(gains) / len(gains) >= MARGIN.get(method, 0.15), gains
    assert m["joint_recall"] < 0.99
    spec = get_spec(setting)
    assert list(m["stages"]) == list(spec.stage_names) and m["requests"] == 300
    for st in spec.stages:
        s = m["stages"][st.name]
        assert s["quota"] == st.quota and 0 < s["ndcg"] < 1 and -1 <= s["kendall"] <= 1
    log = [json.loads(line) for line in open(run_dir / "loss_log.jsonl")]
    assert len(log) == 3 * (300 // cfg.batch_size) and log[-1]["step"] == len(log)
    first, last = sum(r["loss"] for r in log[:5]), sum(r["loss"] for r in log[-5:])
    if method != "icc":      # ICC: see the note above MARGIN; its gain is checked above
        assert last < first
    if method == "lcron":
        assert {"e2e", f"single/{spec.stage_names[0]}"} <= set(log[0])
    cfg_saved = json.loads((run_dir / "config.json").read_text())
    assert cfg_saved["train_days"] == ["2024-01-13", "2024-01-14", "2024-01-15"]
    assert cfg_saved["synthetic"]["preset"] == "tiny"


def test_seeded_runs_repeat_and_retest_is_exact(tiny_root, tmp_path):
    results = {}
    for name, run_id in (("a", 7), ("b", 7), ("c", 8)):
        cfg = _cfg(tiny_root, tmp_path / name, "two_stage", "lcron", run_id=run_id)
        train(cfg)
        results[name] = evaluate_run(cfg)
    a, b, c = results["a"], results["b"], results["c"]
    assert a["joint_recall"] == b["joint_recall"] and a["stages"] == b["stages"]
    again = evaluate_run(_cfg(tiny_root, tmp_path / "a", "two_stage", "lcron", run_id=7))  # no retraining
    assert again["joint_recall"] == a["joint_recall"] and again["stages"] == a["stages"]
    assert c["joint_recall"] != a["joint_recall"]          # another run id is another seed


def test_streaming_equals_training_on_earlier_days(tiny_root, tmp_path):
    from deep_components.streaming import stream, summarise, to_markdown

    cfg = _cfg(tiny_root, tmp_path, "two_stage", "lcron")
    df = stream(cfg, ["lcron", "bce"], [7], "2024-01-15")
    assert list(df["test_day"]) == ["2024-01-15", "2024-01-16"] * 2
    assert list(df["train_days"]) == [2, 3, 2, 3]
    # the streaming model for 2024-01-15 is the one trained on 01-13 and 01-14 only
    # (its compact vocabulary covers fewer days: other row numbers, the same rows)
    solo = _cfg(tiny_root, tmp_path / "solo", "two_stage", "lcron", run_id=7,
                train_days=["2024-01-13", "2024-01-14"], test_day="2024-01-15")
    train(solo)
    assert evaluate_run(solo)["joint_recall"] == df["joint"][0]
    md = to_markdown(summarise(df), "streaming")
    assert "| 2024-01-16 |" in md and "| mean |" in md and "LCRON" in md
    from deep_components.errors import UsageError

    with pytest.raises(UsageError, match="at least one earlier training day"):
        stream(cfg, ["bce"], [7], "2024-01-13")


def test_collector_table(tiny_root, tmp_path):
    for run_id in (1, 2):
        cfg = _cfg(tiny_root, tmp_path, "two_stage", "bce", run_id=run_id)
        train(cfg)
        evaluate_run(cfg)
    df, md = collect(tmp_path, "two_stage")
    assert "SYNTHETIC" in md and "| BCE |" in md
    assert list(df["runs"]) == [2]
    vals = [json.loads((tmp_path / "two_stage" / "bce" / f"run-{i}" / "metrics.json").read_text())
            ["joint_recall"] for i in (1, 2)]
    assert df["joint mean"][0] == pytest.approx(sum(vals) / 2)
    assert (tmp_path / "two_stage_results.csv").is_file()
    collect(tmp_path, "two_stage", plot=True)
    png = tmp_path / "two_stage_results.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = md.splitlines()[2]
    assert header.startswith("| method | joint | prerank R@10@20 | prerank NDCG@10 | retrieval R@10@30")


def _run(args, cwd=REPO, env=None):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_entry_point_errors(tiny_root, tmp_path):
    r = _run([sys.executable, "deep_components/run_train2.py", "--data_dir", str(tiny_root),
              "--loss_type", "lcorn", "--runs_root", str(tmp_path)])
    assert r.returncode == 2 and "unknown loss 'lcorn' (did you mean 'lcron'?)" in r.stderr
    assert "valid: arf, arf_v2, bce, fs_lambdaloss, fs_ranknet, icc, lcron, rankflow" in r.stderr
    assert "Traceback" not in r.stderr
    if not torch.cuda.is_available():
        r = _run([sys.executable, "deep_components/run_train3.py", "--data_dir", str(tiny_root),
                  "--device", "cuda", "--runs_root", str(tmp_path)])
        assert r.returncode == 2 and "CUDA is not available" in r.stderr
    r = _run([sys.executable, "deep_components/run_test2.py", "--data_dir", str(tiny_root),
              "--runs_root", str(tmp_path), "--epochs", "99"])
    assert r.returncode == 2 and "not a run folder" in r.stderr


def test_launcher_from_another_directory(tiny_root, tmp_path):
    r = _run(["bash", str(REPO / "two_stage" / "bce.sh"), "--batch_size", "32", "--no_progress"],
             cwd=tmp_path, env={"DATA_DIR": str(tiny_root), "RUNS_ROOT": str(tmp_path / "runs"),
                                "RUN_IDS": "3 4", "DEVICE": "cpu"})
    assert r.returncode == 0, r.stderr
    assert "| BCE |" in r.stdout and "SYNTHETIC" in r.stdout and "| 2 |" in r.stdout
    assert (tmp_path / "runs" / "two_stage" / "bce" / "run-4" / "metrics.json").is_file()
