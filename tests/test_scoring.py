"""Scoring a day with trained towers (deep_components.scoring)."""
from __future__ import annotations

import pytest
import torch
from deep_components.specs import get_spec
from deep_components.data import load_day, read_id_counts
from deep_components.scoring import score_day
from deep_components.models import build_models


@pytest.mark.parametrize("training", [True, False])
def test_scoring_leaves_the_towers_in_their_mode(tiny_root, training):
    spec = get_spec("two_stage")
    models = build_models(spec, read_id_counts(tiny_root))
    for m in models:
        m.train(training)
    day = load_day(tiny_root, "2024-01-16", spec)
    score_day(models, day, torch.device("cpu"))
    assert [m.training for m in models] == [training, training]
