"""Cascades as data: spec validation, a four-stage cascade end to end from the command line for
every method, the method registry's reach (launchers, run_all, collector), flags declared once."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deep_components.spec import CascadeSpec, Stage
from deep_components.specs import FOUR_STAGE, SPECS, THREE_STAGE, check_spec, get_spec
from deep_components.cli import main
from deep_components.collect import build_table
from deep_components.config import RunConfig, add_run_flags, config_from_args
from deep_components.loss import LOSSES, METHODS, build_loss, method_order
from deep_components.parsing import OneLineParser

REPO = Path(__file__).resolve().parent.parent


def _stages(n=3):
    return tuple(dataclasses.replace(st) for st in THREE_STAGE.stages[:n])


def _spec(**kw):
    base = dict(name="my_spec", groups=THREE_STAGE.groups, stages=_stages(),
                index_column="rerank_index", method_options=dict(THREE_STAGE.method_options))
    return CascadeSpec(**(base | kw))


# ------------------------------------------------------------------------------ validation
def test_a_copy_of_a_shipped_spec_is_valid():
    spec = _spec()
    assert spec.num_stages == 3 and spec.quotas == (40, 30, 20)


@pytest.mark.parametrize("change, message", [
    ({"method_options": {**THREE_STAGE.method_options, "lcron": {"hard_labels": True, "hard_label": 1}}},
     "cascade spec 'my_spec' method_options: loss 'lcron' has no option 'hard_label' (did you mean 'hard_labels'?)"),
    ({"method_options": {**THREE_STAGE.method_options, "lcorn": {}}},
     "cascade spec 'my_spec': method_options names unknown method 'lcorn' (did you mean 'lcron'?)"),
    ({"method_options": {**THREE_STAGE.method_options,
                        "rankflow": {"splits": (30,), "mse_weight": 1.0, "pair_weight": 1.0}}},
     "rankflow: option splits needs 2 values for cascade spec 'my_spec' (3 stages), got [30]"),
    ({"method_options": {k: v for k, v in THREE_STAGE.method_options.items() if k != "fs_ranknet"}},
     "cascade spec 'my_spec': method_options['fs_ranknet'] must set anchor_mask"),
    ({"method_options": {**THREE_STAGE.method_options,
                        "rankflow": {"splits": (30, 35), "mse_weight": 1.0, "pair_weight": 1.0}}},
     "rankflow: splits [30, 35] must shrink from top=40 (whole numbers >= 1) for cascade spec 'my_spec'"),
    ({"stages": _stages()[:2] + (Stage("prerank", "din", 20),)},
     "cascade spec 'my_spec': duplicated stage names"),
    ({"stages": _stages()[:2] + (Stage("rank", "transformer", 20),)},
     "cascade spec 'my_spec': stage 'rank' has unknown tower 'transformer'"),
    ({"stages": _stages()[:2] + (Stage("rank", "din", 35),)},
     "cascade spec 'my_spec': stage 'rank' quota 35 must lie in [gt_num=10, 30]"),
    ({"method_options": {**THREE_STAGE.method_options, "bce": {"bce_slots": (50, 40, 80)}}},
     "bce: option bce_slots: slot counts must be whole numbers in [1, N=50] for cascade spec "
     "'my_spec', got 80"),
    ({"method_options": {**THREE_STAGE.method_options, "icc": {"cutoffs": (40, 30, 5),
                                                              "multipliers": (1.0, 2.0, 4.0)}}},
     "icc: option cutoffs: cut-offs must be whole numbers in [gt_num=10, N=50] for cascade spec "
     "'my_spec', got 5"),
    ({"stages": ()}, "cascade spec 'my_spec': needs at least one stage"),
])
def test_a_bad_spec_is_refused_when_registered_naming_it(change, message):
    """Its own shape when it is made, against the towers and methods when it is registered."""
    with pytest.raises(ValueError) as e:
        check_spec(_spec(**change))
    assert message in str(e.value)


def test_a_method_registered_later_is_checked_against_the_specs():
    from deep_components.loss import LOSSES, METHODS, register
    from deep_components.loss.bce import BCELoss

    class NeedsSwitch(BCELoss):
        OPTIONS = {**BCELoss.OPTIONS, "switch": None}
        SETTING_OPTIONS = BCELoss.SETTING_OPTIONS + ("switch",)

    with pytest.raises(ValueError, match=r"cascade spec '(two|three|four)_stage': "
                                         r"method_options\['late'\] must set .*switch"):
        register("late")(NeedsSwitch)
    assert "late" not in LOSSES and "late" not in METHODS


def test_a_user_option_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match=r"bce: option bce_slots needs 4 values for cascade spec "
                                         r"'four_stage' \(4 stages\), got \[50, 40, 20\]"):
        build_loss("bce", FOUR_STAGE, bce_slots=[50, 40, 20])
    with pytest.raises(ValueError, match="icc: option cutoffs needs 2 values"):
        build_loss("icc", get_spec("two_stage"), cutoffs=[30, 30, 30])


def test_every_registered_spec_builds_every_method():
    for spec in SPECS.values():
        for name in LOSSES:
            assert build_loss(name, spec).spec is spec


def test_four_stage_losses_run_and_name_their_stages():
    spec = FOUR_STAGE
    torch.manual_seed(0)
    B, N = 6, spec.num_slots
    labels = torch.tensor(list(range(30, 20, -1)) + [8] * 10 + [7] * 10 + [6] * 10 + [5] * 10,
                          dtype=torch.float32).repeat(B, 1)
    mask = torch.ones(B, N, dtype=torch.bool)
    for name in LOSSES:
        logits = [torch.randn(B, N, requires_grad=True) for _ in spec.stages]
        out = build_loss(name, spec)(logits, labels, mask)
        out["loss"].backward()
        assert torch.isfinite(out["loss"]), name
        assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in logits), name
        if name not in ("icc",):              # ICC has one joint component
            assert any(k.endswith("/rank") for k in out) and any(k.endswith("/coarse") for k in out), (name, out)
    rf = build_loss("rankflow", spec)(logits, labels, mask)
    assert {"pair/retrieval", "pair/prerank", "pair/coarse", "mse/coarse", "bce/rank"} <= set(rf)


# ------------------------------------------------------------- four stages, command line
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
    assert "argument --setting: invalid choice: 'five_stage'" in bad.stderr


# ----------------------------------------------------------------------- method registry
def test_registry_holds_the_papers_methods_in_table_order():
    assert method_order() == ["bce", "icc", "rankflow", "fs_ranknet", "fs_lambdaloss", "arf",
                              "arf_v2", "lcron"]
    assert [METHODS[m].display for m in method_order()] == [
        "BCE", "ICC", "RankFlow", "FS-RankNet", "FS-LambdaLoss", "ARF", "ARF-v2", "LCRON"]
    assert {m: METHODS[m].default_tau for m in METHODS if METHODS[m].default_tau} == {
        "arf": 200.0, "arf_v2": 200.0, "lcron": 50.0}
    assert {m: build_loss(m, SPECS["two_stage"]).opts.get("tau") for m in ("arf", "lcron")} == {
        "arf": 200.0, "lcron": 50.0}


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


def test_a_new_method_is_one_class(monkeypatch):
    """Registered from outside the package: it builds, gets its display name and is ordered
    after the paper's methods."""
    from deep_components.loss import CascadeLoss, register, registry

    monkeypatch.setattr(registry, "LOSSES", dict(registry.LOSSES))
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))

    @register("listwise_demo", display="Listwise")
    class Demo(CascadeLoss):
        OPTIONS = {"tau": 3.0}

        def compute(self, logits, labels, mask):
            loss = sum(torch.logsumexp(s, -1).mean() for s in logits)
            return {"loss": loss}

    assert registry.method_order()[-1] == "listwise_demo"
    assert registry.METHODS["listwise_demo"].default_tau == 3.0
    loss = registry.build_loss("listwise_demo", FOUR_STAGE)
    assert float(loss([torch.zeros(2, 50)] * 4, torch.zeros(2, 50), torch.ones(2, 50, dtype=torch.bool))["loss"]) > 0


# ------------------------------------------------------------------------- flags, once
def _parse(argv, with_setting=True):
    ap = OneLineParser(prog="t")
    add_run_flags(ap, with_setting=with_setting)
    return config_from_args(ap.parse_args(argv), None if with_setting else "three_stage")


def test_every_config_field_is_a_flag_and_the_papers_names_are_aliases(tmp_path):
    ours = _parse(["--method", "bce", "--run_id", "7", "--eval_batch_size", "64",
                   "--data_dir", str(tmp_path), "--setting", "four_stage"])
    paper = _parse(["--loss_type", "bce", "--epochs", "7", "--infer_recall_batch_size", "64",
                    "--root_path", str(tmp_path), "--setting", "four_stage",
                    "--infer_realshow_batch_size", "9"])
    assert ours == paper
    assert (ours.method, ours.run_id, ours.eval_batch_size, ours.data_dir, ours.setting) == (
        "bce", 7, 64, str(tmp_path), "four_stage")
    flagged = {f.name for f in dataclasses.fields(RunConfig) if "flags" in f.metadata}
    assert flagged == {f.name for f in dataclasses.fields(RunConfig)}
    fixed = _parse(["--no_progress", "--loss_opt", "terms=e2e", "--loss_opt", "k=12", "--cuda", "1",
                    "--train_days", "2024-01-13", "2024-01-14", "--resume"], with_setting=False)
    assert fixed.setting == "three_stage" and fixed.progress is False and fixed.resume is True
    assert fixed.loss_options == {"terms": "e2e", "k": 12} and fixed.device == "auto:1"
    assert fixed.train_days == ["2024-01-13", "2024-01-14"]
    defaults = _parse([])
    expect = RunConfig()
    for f in dataclasses.fields(RunConfig):
        if f.name != "data_dir":          # the flag's default is $DATA_DIR or ./data
            assert getattr(defaults, f.name) == getattr(expect, f.name), f.name


def test_the_fixed_setting_wrappers_have_no_setting_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main("two_stage", "train", ["--setting", "three_stage"])
    assert e.value.code == 2
    assert "unrecognized arguments: --setting three_stage" in capsys.readouterr().err
