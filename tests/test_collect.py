"""Tables of a runs root, the comparison of several, and the ordering against the paper's (deep_components.collect, deep_components.paper)."""
from __future__ import annotations

import json
import pytest
from deep_components.training import train
from deep_components.collect import collect
from deep_components.evaluation import evaluate_run
from deep_components.config import RunConfig


def test_spearman_against_the_papers_ordering():
    from deep_components.paper import PAPER_JOINT_RECALL, rho_vs_paper, spearman

    paper = PAPER_JOINT_RECALL["two_stage"]
    assert rho_vs_paper(paper, "two_stage") == (1.0, 8)
    reversed_ = {k: -v for k, v in paper.items()}
    assert rho_vs_paper(reversed_, "two_stage")[0] == pytest.approx(-1.0)
    # by hand: ranks (1, 2, 3, 4) vs (2, 1, 4, 3): d² = 4, ρ = 1 - 6·4 / (4·15) = 0.6
    assert spearman({"a": 1, "b": 2, "c": 3, "d": 4}, {"a": 2, "b": 1, "c": 4, "d": 3}) == (pytest.approx(0.6), 4)
    assert rho_vs_paper(paper, "four_stage") is None


def test_compare_tables_two_worlds_against_the_paper(tmp_path):
    from deep_components.collect import compare, main as collect_main
    from deep_components.paper import PAPER_JOINT_RECALL

    paper = PAPER_JOINT_RECALL["two_stage"]
    worlds = {"world-a": dict(paper), "world-b": {k: -v for k, v in paper.items()}}
    worlds["world-b"].pop("icc")                        # a method a world has no runs of
    for world, joint in worlds.items():
        for method, value in joint.items():
            for run_id, delta in ((30, 0.001), (31, -0.001)):
                run = tmp_path / world / "two_stage" / method / f"run-{run_id}"
                run.mkdir(parents=True)
                key = f"{world}{method}{run_id}"
                (run / "config.json").write_text(json.dumps({"run_key": key}))
                (run / "metrics.json").write_text(json.dumps(
                    {"method": method, "joint_recall": value + delta, "stages": {}, "run_key": key}))
    md = compare([tmp_path / "world-a", tmp_path / "world-b"], "two_stage")
    assert "| method | paper (RecFlow) | world-a | world-b |" in md
    assert "| LCRON | 0.8732 (1) | 0.8732 (1) | -0.8732 (7) |" in md     # last of 7 there
    assert "| ICC | 0.8132 (7) | 0.8132 (7) | – |" in md
    assert md.splitlines()[-1] == "| Spearman ρ vs paper | +1.000 | +1.000 | -1.000 |"
    assert collect_main(["--compare", str(tmp_path / "nowhere"), "--setting", "two_stage"]) == 2


def _cfg(root, runs, setting, method, run_id=3, batch_size=32, **kw):
    return RunConfig(setting=setting, method=method, run_id=run_id, batch_size=batch_size,
                     data_dir=str(root), runs_root=str(runs), progress=False, device="cpu", **kw)



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
