"""Confidence intervals and the paired test (deep_components.stats), against values computed
by hand, and as the collected tables show them."""
from __future__ import annotations

import json
import math

import pytest

from deep_components.stats import confidence_interval, paired_test


def test_the_interval_is_students_t_by_hand():
    # mean 0.91, s = 0.01, n = 3: t(0.975, 2) = 4.302652729911275 (tables), half 0.024841
    lo, hi = confidence_interval([0.90, 0.91, 0.92])
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert (lo, hi) == (pytest.approx(0.91 - half, abs=1e-12), pytest.approx(0.91 + half, abs=1e-12))
    assert half == pytest.approx(0.0248414, abs=1e-7)
    # n = 2: t(0.975, 1) = tan(0.475·π) = 12.7062047361747
    lo, hi = confidence_interval([0.5, 0.7])
    assert hi - 0.6 == pytest.approx(math.tan(0.475 * math.pi) * math.sqrt(0.02) / math.sqrt(2))
    assert all(math.isnan(x) for x in confidence_interval([0.5]))


def test_the_paired_test_by_hand():
    # differences 0.01, 0.005, 0.02: mean 0.011667, s = 0.0076376, t = √7 exactly; with 2
    # degrees of freedom the t distribution's CDF is 1/2 + t / (2√(t² + 2)), so the two-sided
    # p = 1 - √7 / 3 = 0.1180829
    a = {30: 0.90, 31: 0.91, 32: 0.92, 33: 0.5}              # run 33 has no partner
    b = {30: 0.89, 31: 0.905, 32: 0.90, 40: 0.1}
    r = paired_test(a, b)
    assert r["n"] == 3 and r["diff"] == pytest.approx(0.035 / 3)
    assert r["t"] == pytest.approx(math.sqrt(7)) and r["p"] == pytest.approx(1 - math.sqrt(7) / 3)
    assert paired_test(b, a)["t"] == pytest.approx(-math.sqrt(7))
    assert paired_test({1: 0.5}, {1: 0.4}) is None
    assert paired_test({1: 0.5, 2: 0.6}, {1: 0.5, 2: 0.6})["p"] == 1.0
    assert paired_test({1: 0.5, 2: 0.6}, {1: 0.4, 2: 0.5})["p"] == 0.0


def test_the_table_shows_the_interval_and_the_paired_comparison(tmp_path):
    from deep_components.collect import collect

    stages = {s: {"recall": 0.5, "ndcg": 0.5} for s in ("retrieval", "prerank")}
    runs = {"lcron": [0.90, 0.91, 0.92], "arf_v2": [0.89, 0.905, 0.90], "bce": [0.80, 0.70, 0.75]}
    for method, values in runs.items():
        for run_id, v in zip((30, 31, 32), values):
            run = tmp_path / "two_stage" / method / f"run-{run_id}"
            run.mkdir(parents=True)
            key = f"{method}{run_id}"
            (run / "config.json").write_text(json.dumps({"run_key": key}))
            (run / "metrics.json").write_text(json.dumps(
                {"method": method, "run_id": run_id, "joint_recall": v, "stages": stages,
                 "run_key": key, "test_day": "2024-02-04", "data_dir": "d"}))
    df, md = collect(tmp_path, "two_stage", out_dir=tmp_path / "out")
    rows = {r.method: r for r in df.itertuples()}
    assert rows["LCRON"].vs == "ARF-v2" and rows["ARF-v2"].vs == "LCRON" and rows["BCE"].vs == "LCRON"
    lcron = df[df.method == "LCRON"].iloc[0]
    assert lcron["vs p"] == pytest.approx(1 - math.sqrt(7) / 3)
    assert lcron["joint ci_high"] == pytest.approx(0.91 + 0.0248414, abs=1e-7)
    line = next(x for x in md.splitlines() if x.startswith("| LCRON |"))
    assert "[0.8852, 0.9348]" in line and "ARF-v2: +0.0117, p = 0.118 (3 pairs) |" in line
    bce = next(x for x in md.splitlines() if x.startswith("| BCE |"))
    # BCE - LCRON: -0.10, -0.21, -0.17: t = -0.16 / (0.05568 / √3) = -4.977, p = 0.0381 < 0.05
    assert "LCRON: -0.1600, p = 0.0381 (3 pairs) †" in bce
    assert "paired t-test" in md and "runs paired by run id" in md
    csv = (tmp_path / "out" / "two_stage_results.csv").read_text().splitlines()[0]
    assert "joint ci_low" in csv and "vs p" in csv and "_joint" not in csv
