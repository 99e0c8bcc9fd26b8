"""Statistics of a table's rows over runs: a confidence interval of the mean and a paired test.

Runs of two methods are paired by run id (the run id is the seed, so run 31 of one method and
run 31 of another start from the same draws of everything the seed decides).
"""
from __future__ import annotations

import math

import numpy as np

#: the tables' confidence level and significance threshold
LEVEL = 0.95
ALPHA = 0.05


def confidence_interval(values, level: float = LEVEL) -> tuple[float, float]:
    """Student's t interval of the mean: mean ± t(1 - (1-level)/2, n-1) · s / √n (s: the sample
    std); (nan, nan) for fewer than two runs."""
    from scipy.stats import t

    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return math.nan, math.nan
    half = t.ppf(1 - (1 - level) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def paired_test(a: dict, b: dict) -> dict | None:
    """Two-sided paired t-test of ``a`` against ``b`` ({run id: value}) on their common run ids:
    {"n", "diff" (mean of a - b), "t", "p"}; None with fewer than two common runs.  Differences
    that are all equal give t = ±inf and p = 0 when they are not zero, t = 0 and p = 1 when they
    are."""
    from scipy.stats import t as student

    ids = sorted(set(a) & set(b))
    if len(ids) < 2:
        return None
    d = np.array([a[i] - b[i] for i in ids], dtype=float)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        stat, p = (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    else:
        stat = mean / (sd / math.sqrt(d.size))
        p = float(2 * student.sf(abs(stat), d.size - 1))
    return {"n": len(ids), "diff": mean, "t": float(stat), "p": p}


def method_note() -> str:
    """The line under a table that says how its intervals and tests are made."""
    return (f"{LEVEL:.0%} CI: mean ± t(n−1) · s/√n over the runs. vs best other: the row with "
            "the highest mean joint recall among the others; Δ and p of a two-sided paired t-test "
            f"on the per-run differences of joint recall, runs paired by run id (the seed); "
            f"† p < {ALPHA}.")
