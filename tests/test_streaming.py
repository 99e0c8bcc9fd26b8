"""Streaming evaluation (deep_components.streaming)."""
from __future__ import annotations

import pytest
from deep_components.evaluation import evaluate_run
from deep_components.training import train
from deep_components.config import RunConfig


def _cfg(root, runs, setting, method, run_id=3, batch_size=32, **kw):
    return RunConfig(setting=setting, method=method, run_id=run_id, batch_size=batch_size,
                     data_dir=str(root), runs_root=str(runs), progress=False, device="cpu", **kw)



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
