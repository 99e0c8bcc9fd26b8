"""The one atomic-publish routine (files, folders) and evaluation leaving towers as it found them."""
from __future__ import annotations

import pytest
import torch

from deep_components.atomic import staged
from deep_components.specs import get_spec
from deep_components.data import load_day, read_id_counts
from deep_components.scoring import score_day
from deep_components.models import build_models


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


@pytest.mark.parametrize("training", [True, False])
def test_scoring_leaves_the_towers_in_their_mode(tiny_root, training):
    spec = get_spec("two_stage")
    models = build_models(spec, read_id_counts(tiny_root))
    for m in models:
        m.train(training)
    day = load_day(tiny_root, "2024-01-16", spec)
    score_day(models, day, torch.device("cpu"))
    assert [m.training for m in models] == [training, training]
