"""Check a RecFlow-layout folder before converting it (``python -m deep_components.data --check``).

Downloads of RecFlow are often incomplete (0-byte placeholder files, a mirror without a day);
converting finds that out only when it reaches the day.  :func:`check_folder` looks at every file
a run needs without converting anything, in seconds: per day, the all_stage table (its Arrow or
Parquet footer parses, it has rows) and both pickles (non-empty, a pickle header, the first item
batch parses); realshow tables are reported, not required; ``others/id_cnt.pkl`` (present,
parses, every id field a positive count); and whether the days cover the run's split — the
paper's 22 training days 2024-01-13 … 2024-02-03 and test day 2024-02-04 when a real (not
synthetic) folder holds any day of that range, every day found otherwise, or the days asked for.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import layout
from .errors import DataError

#: a pickle starts with PROTO (0x80) and its protocol number
PICKLE_PROTOCOLS = range(2, 6)


@dataclass
class Report:
    """What :func:`check_folder` found: problems (the run cannot use the folder as it is) and
    notes (worth knowing, not fatal)."""

    root: Path
    days: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        out = [f"{self.root}: {len(self.days)} days"
               + (f" ({self.days[0]} … {self.days[-1]})" if self.days else "")]
        out += [f"problem: {p}" for p in self.problems]
        out += [f"note: {n}" for n in self.notes]
        out.append("ok: every file the run needs is there and parses" if self.ok
                   else f"{len(self.problems)} problem(s): fix them before converting")
        return out


def paper_split() -> tuple[list[str], str]:
    first = _dt.date.fromisoformat(layout.PAPER_TRAIN_FIRST)
    last = _dt.date.fromisoformat(layout.PAPER_TRAIN_LAST)
    train = [(first + _dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    return train, layout.PAPER_TEST_DAY


def _empty(path: Path) -> bool:
    return path.stat().st_size == 0


def _check_table(path: Path) -> str | None:
    """None, or why the table's footer does not parse / it holds no rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if _empty(path):
        return f"{path}: 0 bytes (a placeholder, not the day's table)"
    try:
        if path.suffix == ".parquet":
            rows = pq.ParquetFile(str(path)).metadata.num_rows
        else:
            try:                                   # Feather v2 = Arrow IPC: footer, one batch
                with pa.memory_map(str(path)) as src:
                    reader = pa.ipc.open_file(src)
                    rows = reader.get_batch(0).num_rows if reader.num_record_batches else 0
            except pa.ArrowInvalid:                # Feather v1
                import pyarrow.feather as feather

                rows = feather.read_table(str(path), columns=[], memory_map=True).num_rows
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        return f"{path}: not a readable {path.suffix[1:]} table ({str(e).splitlines()[0][:120]})"
    if not rows:
        return f"{path}: the table holds no rows"
    return None


def _check_pickle(path: Path) -> str | None:
    """None, or why the pickle is empty, has no pickle header or its first items do not parse."""
    from .pickle_stream import iter_pickled_items

    if _empty(path):
        return f"{path}: 0 bytes (a placeholder, not the day's pickle)"
    with open(path, "rb") as f:
        head = f.read(2)
    if len(head) < 2 or head[0] != 0x80 or head[1] not in PICKLE_PROTOCOLS:
        return f"{path}: not a pickle (it starts with {head!r}, not a pickle protocol header)"
    try:
        next(iter(iter_pickled_items(path)), None)
    except (DataError, ValueError, EOFError, OSError) as e:
        return f"{path}: its first items do not parse ({str(e).splitlines()[0][:160]})"
    return None


def _check_id_counts(root: Path) -> str | None:
    from .id_counts import read_id_counts

    path = root / layout.ID_COUNT_FILE
    if not path.is_file():
        return f"{path}: missing (every table's size comes from it)"
    if _empty(path):
        return f"{path}: 0 bytes (a placeholder)"
    try:
        counts = read_id_counts(root)
    except DataError as e:
        return str(e)
    bad = sorted(k for k, v in counts.items() if v <= 0)
    return f"{path}: non-positive id counts for {bad}" if bad else None


def _day_files(root: Path, date: str) -> list[tuple[str, Path | None]]:
    """(kind, path or None when absent) of the files a day needs."""
    out: list[tuple[str, Path | None]] = []
    tables = [root / layout.ALL_STAGE / f"{date}{ext}" for ext in layout.TABLE_EXTS]
    out.append((layout.ALL_STAGE, next((p for p in tables if p.is_file()), None)))
    for sub in (layout.REQUEST_DICT_DIR, layout.HISTORY_DIR):
        p = root / sub / f"{date}.pkl"
        out.append((sub, p if p.is_file() else None))
    return out


def _dated_files(root: Path) -> set[str]:
    """Every date that has any file of any kind (a day missing its all_stage table counts)."""
    dates = set()
    for sub in (layout.ALL_STAGE, layout.REQUEST_DICT_DIR, layout.HISTORY_DIR, layout.REALSHOW):
        d = root / sub
        if d.is_dir():
            for name in os.listdir(d):
                stem = name.split(".")[0]
                if layout.is_date(stem):
                    dates.add(stem)
    return dates


def check_folder(root: str | os.PathLike, days: list[str] | None = None) -> Report:
    """Check ``root`` for the run's ``days`` (default: the paper's split when a real folder holds
    a day of it, else every day found, of which at least two)."""
    root = layout.check_root(root)
    rep = Report(root)
    found = sorted(_dated_files(root))
    if days:
        wanted = sorted(days)
    else:
        train, test = paper_split()
        if layout.synthetic_info(root) is None and any(d in found for d in train + [test]):
            wanted = train + [test]
        else:
            wanted = found
            if len(found) < 2:
                rep.problems.append(f"{root}: {len(found)} day(s) found; a run needs at least two "
                                    "(training days and a test day)")
    rep.days = wanted
    for date in wanted:
        files = _day_files(root, date)
        absent = [kind for kind, path in files if path is None]
        if absent:
            rep.problems.append(f"{root}: day {date} missing from {', '.join(k + '/' for k in absent)}")
        for kind, path in files:
            if path is not None:
                why = _check_table(path) if kind == layout.ALL_STAGE else _check_pickle(path)
                if why:
                    rep.problems.append(why)
    missing_realshow = [d for d in wanted if not any(
        (root / layout.REALSHOW / f"{d}{ext}").is_file() for ext in layout.TABLE_EXTS)]
    if missing_realshow:
        rep.notes.append(f"{root / layout.REALSHOW}: no table for {len(missing_realshow)} day(s) "
                         "(not read by training or evaluation)")
    extra = sorted(set(found) - set(wanted))
    if extra:
        rep.notes.append(f"{len(extra)} other day(s) present, not checked: {extra[0]} … {extra[-1]}")
    why = _check_id_counts(root)
    if why:
        rep.problems.append(why)
    return rep
