"""The one atomic-publish routine (files, folders) and evaluation leaving towers as it found them."""
from __future__ import annotations

import pytest

from deep_components.atomic import staged


def test_staged_file_replaces_only_on_success(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")
    with staged(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-") and tmp != path
        tmp.write_text("new")
        assert path.read_text() == "old"          # readers still see the old content
    assert path.read_text() == "new"
    with pytest.raises(RuntimeError, match="boom"):
        with staged(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_staged_folder_first_writer_wins(tmp_path):
    key = tmp_path / "entry"
    with staged(key, directory=True, replace=False) as a:
        (a / "x.txt").write_text("first")
        with staged(key, directory=True, replace=False) as b:   # a second writer finishes first
            (b / "x.txt").write_text("second")
    assert (key / "x.txt").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]    # the loser is removed


