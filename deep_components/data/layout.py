"""Where things live in a RecFlow-layout folder, and which days it holds.

    all_stage/DATE.{feather,parquet}     realshow/DATE.{feather,parquet}
    seq_effective_50_dict/DATE.pkl       request_id_dict/DATE.pkl
    others/id_cnt.pkl
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from .errors import DataError

#: the time zone of RecFlow's timestamps (UTC+8), in which calendar features are computed
DEFAULT_TZ = "Asia/Shanghai"

TABLE_EXTS = (".feather", ".parquet")
ALL_STAGE = "all_stage"
REALSHOW = "realshow"
HISTORY_DIR = "seq_effective_50_dict"
REQUEST_DICT_DIR = "request_id_dict"
ID_COUNT_FILE = os.path.join("others", "id_cnt.pkl")
SYNTHETIC_MARKER = "SYNTHETIC.json"

#: The paper's split (train 2024-01-13 ... 2024-02-03, test 2024-02-04).
PAPER_TRAIN_FIRST = "2024-01-13"
PAPER_TRAIN_LAST = "2024-02-03"
PAPER_TEST_DAY = "2024-02-04"


def check_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (expected a RecFlow-layout folder with "
                        f"{ALL_STAGE}/, {REQUEST_DICT_DIR}/, {HISTORY_DIR}/ and {ID_COUNT_FILE})")
    return root


def table_path(root: Path, sub: str, date: str) -> Path:
    """The Feather or Parquet file of ``date`` under ``root/sub`` (Feather preferred)."""
    for ext in TABLE_EXTS:
        p = root / sub / f"{date}{ext}"
        if p.is_file():
            return p
    raise DataError(f"{root / sub / (date + '.feather')}: day {date} not found "
                    f"(neither .feather nor .parquet); available days: {_days_hint(root)}")


def pickle_path(root: Path, sub: str, date: str) -> Path:
    p = root / sub / f"{date}.pkl"
    if not p.is_file():
        raise DataError(f"{p}: file not found (every day of {ALL_STAGE}/ needs its {sub}/ pickle)")
    return p


def list_days(root: str | os.PathLike) -> list[str]:
    """Dates (YYYY-MM-DD, ascending) that have an all_stage table under ``root``."""
    root = check_root(root)
    d = root / ALL_STAGE
    if not d.is_dir():
        return []
    days = set()
    for name in os.listdir(d):
        stem, ext = os.path.splitext(name)
        if ext in TABLE_EXTS and is_date(stem):
            days.add(stem)
    return sorted(days)


def is_date(s: str) -> bool:
    try:
        _dt.date.fromisoformat(s)
        return len(s) == 10
    except ValueError:
        return False


def _days_hint(root: Path) -> str:
    try:
        days = list_days(root)
    except DataError:
        return "none"
    if not days:
        return "none"
    return f"{days[0]} ... {days[-1]} ({len(days)} days)" if len(days) > 3 else ", ".join(days)


def default_split(days: list[str]) -> tuple[list[str], str]:
    """(train days, test day).

    The paper's split (train 2024-01-13 ... 2024-02-03, test 2024-02-04) when all of those days
    exist; otherwise every day but the last for training and the last for testing.
    """
    if len(days) < 2:
        raise DataError(f"need at least two days (train + test), found {len(days)}: {days}")
    paper_train = [d for d in days if PAPER_TRAIN_FIRST <= d <= PAPER_TRAIN_LAST]
    if PAPER_TEST_DAY in days and len(paper_train) == 22:
        return paper_train, PAPER_TEST_DAY
    return days[:-1], days[-1]


def synthetic_info(root: str | os.PathLike) -> dict | None:
    """The generator's marker (preset, seed, parameters) if ``root`` holds synthetic data."""
    p = Path(root) / SYNTHETIC_MARKER
    if not p.is_file():
        return None
    with open(p) as f:
        return json.load(f)
