"""Checking a RecFlow folder before converting it (deep_components.data.check, --check)."""
from __future__ import annotations

import os

from deep_components.data.check import check_folder, paper_split
from helpers import cli, ok


def _cmd(root, *extra):
    return cli("-m", "deep_components.data", "--root", root, "--check", *extra)


def test_a_complete_folder_passes(tiny_root):
    r = ok(_cmd(tiny_root))
    assert "4 days (2024-01-13 … 2024-01-16)" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "ok: every file the run needs is there and parses"


def test_four_kinds_of_broken_download_are_all_listed(tiny_copy):
    (tiny_copy / "all_stage" / "2024-01-14.feather").write_bytes(b"")           # 0-byte day file
    os.remove(tiny_copy / "request_id_dict" / "2024-01-15.pkl")                 # a missing day
    (tiny_copy / "seq_effective_50_dict" / "2024-01-16.pkl").write_bytes(       # a garbled pickle
        b"PK\x03\x04 this is a zip, not a pickle" * 10)
    os.remove(tiny_copy / "others" / "id_cnt.pkl")                              # no id counts
    r = _cmd(tiny_copy)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    problems = [x for x in r.stderr.splitlines() if x.startswith("problem: ")]
    assert problems == [
        f"problem: {tiny_copy}/all_stage/2024-01-14.feather: 0 bytes (a placeholder, not the day's table)",
        f"problem: {tiny_copy}: day 2024-01-15 missing from request_id_dict/",
        f"problem: {tiny_copy}/seq_effective_50_dict/2024-01-16.pkl: not a pickle (it starts with "
        "b'PK', not a pickle protocol header)",
        f"problem: {tiny_copy}/others/id_cnt.pkl: missing (every table's size comes from it)"]
    assert r.stderr.strip().splitlines()[-1] == "4 problem(s): fix them before converting"


def test_unreadable_table_and_truncated_pickle(tiny_copy):
    table = tiny_copy / "all_stage" / "2024-01-13.feather"
    table.write_bytes(table.read_bytes()[:200])                # footer gone
    pkl = tiny_copy / "request_id_dict" / "2024-01-14.pkl"
    pkl.write_bytes(pkl.read_bytes()[:40])                     # header fine, items cut
    rep = check_folder(tiny_copy)
    assert [p.split(": ")[0] for p in rep.problems] == [str(table), str(pkl)]
    assert "not a readable feather table" in rep.problems[0]
    assert "first items do not parse" in rep.problems[1]


def test_a_real_folder_is_checked_against_the_papers_split(tiny_copy):
    os.remove(tiny_copy / "SYNTHETIC.json")                    # as a RecFlow download looks
    rep = check_folder(tiny_copy)
    train, test = paper_split()
    assert len(train) == 22 and train[0] == "2024-01-13" and train[-1] == "2024-02-03"
    assert test == "2024-02-04" and rep.days == train + [test]
    missing = [p for p in rep.problems if "missing from" in p]
    assert len(missing) == 23 - 4 and f"{tiny_copy}: day 2024-02-04 missing from" in missing[-1]
    # the days a run asks for instead
    asked = check_folder(tiny_copy, ["2024-01-13", "2024-01-14"])
    assert asked.ok and asked.days == ["2024-01-13", "2024-01-14"]
    assert any("2 other day(s) present" in n for n in asked.notes)


def test_id_counts_that_are_not_counts(tiny_copy):
    import pickle

    with open(tiny_copy / "others" / "id_cnt.pkl", "rb") as f:
        counts = pickle.load(f)
    counts[next(iter(counts))] = 0
    with open(tiny_copy / "others" / "id_cnt.pkl", "wb") as f:
        pickle.dump(counts, f)
    rep = check_folder(tiny_copy)
    assert len(rep.problems) == 1 and "non-positive id counts" in rep.problems[0]
