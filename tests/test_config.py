"""RunConfig: every flag declared once, the paper's names as aliases (deep_components.config)."""
from __future__ import annotations

import dataclasses
import pytest
from deep_components.cli import main
from deep_components.config import RunConfig, add_run_flags, config_from_args
from deep_components.parsing import OneLineParser


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
