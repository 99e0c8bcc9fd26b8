"""The paper's reported numbers (docs/methods.md §0) and how a table's method ordering compares
with them."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

#: joint recall on RecFlow's test day, mean over five runs, as the paper reports it
PAPER_JOINT_RECALL: dict[str, dict[str, float]] = {
    "two_stage": {"bce": 0.8539, "icc": 0.8132, "rankflow": 0.8647, "fs_ranknet": 0.7881,
                  "fs_lambdaloss": 0.8666, "arf": 0.8608, "arf_v2": 0.8678, "lcron": 0.8732},
    "three_stage": {"bce": 0.7191, "icc": 0.6386, "rankflow": 0.7308, "fs_ranknet": 0.6200,
                    "fs_lambdaloss": 0.7319, "arf": 0.7256, "arf_v2": 0.7332, "lcron": 0.7390},
}


def spearman(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[float, int]:
    """(Spearman rank correlation, n) of two {name: value} over their common names; ties get
    their average rank.  NaN when fewer than 3 names are shared."""
    names = sorted(set(a) & set(b))
    if len(names) < 3:
        return float("nan"), len(names)
    ra = pd.Series([a[n] for n in names]).rank().to_numpy()
    rb = pd.Series([b[n] for n in names]).rank().to_numpy()
    return float(np.corrcoef(ra, rb)[0, 1]), len(names)


def rho_vs_paper(joint: Mapping[str, float], setting: str) -> tuple[float, int] | None:
    """Spearman ρ of {method: joint recall} with the paper's ordering in ``setting`` (None when
    the paper has no numbers for it)."""
    if setting not in PAPER_JOINT_RECALL:
        return None
    return spearman(joint, PAPER_JOINT_RECALL[setting])
