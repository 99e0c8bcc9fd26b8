"""Cascades as data: spec validation, a four-stage cascade end to end from the command line for
every method, the method registry's reach (launchers, run_all, collector), flags declared once."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from deep_components.spec import CascadeSpec, Stage
from deep_components.specs import FOUR_STAGE, SPECS, THREE_STAGE, check_spec, get_spec
from deep_components.loss import LOSSES, METHODS, build_loss



def _stages(n=3):
    return tuple(dataclasses.replace(st) for st in THREE_STAGE.stages[:n])


def _spec(**kw):
    base = dict(name="my_spec", groups=THREE_STAGE.groups, stages=_stages(),
                index_column="rerank_index", method_options=dict(THREE_STAGE.method_options))
    return CascadeSpec(**(base | kw))


# ------------------------------------------------------------------------------ validation
def test_a_copy_of_a_shipped_spec_is_valid():
    """A copy under another name passes the registry's checks and has what its groups imply."""
    spec = _spec()
    check_spec(spec)
    assert spec.num_slots == 50 and spec.num_groups == 5 and spec.positive_group == "rerank_pos"
    assert spec.negative_labels() == (8, 7, 6, 5)                # 30 - 22, 23, 24, 25
    assert spec.group_slice("rank_neg") == slice(20, 30)
    assert all(build_loss(name, spec).spec is spec for name in LOSSES)


@pytest.mark.parametrize("change, message", [
    ({"method_options": {**THREE_STAGE.method_options, "lcron": {"hard_labels": True, "hard_label": 1}}},
     "cascade spec 'my_spec' method_options: loss 'lcron' has no option 'hard_label' (did you mean 'hard_labels'?)"),
    ({"method_options": {**THREE_STAGE.method_options, "lcorn": {}}},
     "cascade spec 'my_spec': method_options names unknown method 'lcorn' (did you mean 'lcron'?)"),
    ({"method_options": {**THREE_STAGE.method_options,
                        "rankflow": {"splits": (30,), "mse_weight": 1.0, "pair_weight": 1.0}}},
     "rankflow: option splits needs 2 values for cascade spec 'my_spec' (3 stages), got [30]"),
    ({"method_options": {k: v for k, v in THREE_STAGE.method_options.items() if k != "fs_ranknet"}},
     "cascade spec 'my_spec': method_options['fs_ranknet'] must set anchor_mask"),
    ({"method_options": {**THREE_STAGE.method_options,
                        "rankflow": {"splits": (30, 35), "mse_weight": 1.0, "pair_weight": 1.0}}},
     "rankflow: splits [30, 35] must shrink from top=40 (whole numbers >= 1) for cascade spec 'my_spec'"),
    ({"stages": _stages()[:2] + (Stage("prerank", "din", 20),)},
     "cascade spec 'my_spec': duplicated stage names"),
    ({"stages": _stages()[:2] + (Stage("rank", "transformer", 20),)},
     "cascade spec 'my_spec': stage 'rank' has unknown tower 'transformer'"),
    ({"stages": _stages()[:2] + (Stage("rank", "din", 35),)},
     "cascade spec 'my_spec': stage 'rank' quota 35 must lie in [gt_num=10, 30]"),
    ({"method_options": {**THREE_STAGE.method_options, "bce": {"bce_slots": (50, 40, 80)}}},
     "bce: option bce_slots: slot counts must be whole numbers in [1, N=50] for cascade spec "
     "'my_spec', got 80"),
    ({"method_options": {**THREE_STAGE.method_options, "icc": {"cutoffs": (40, 30, 5),
                                                              "multipliers": (1.0, 2.0, 4.0)}}},
     "icc: option cutoffs: cut-offs must be whole numbers in [gt_num=10, N=50] for cascade spec "
     "'my_spec', got 5"),
    ({"stages": ()}, "cascade spec 'my_spec': needs at least one stage"),
])
def test_a_bad_spec_is_refused_when_registered_naming_it(change, message):
    """Its own shape when it is made, against the towers and methods when it is registered."""
    with pytest.raises(ValueError) as e:
        check_spec(_spec(**change))
    assert message in str(e.value)


def test_a_method_registered_later_is_checked_against_the_specs():
    from deep_components.loss import LOSSES, register
    from deep_components.loss.bce import BCELoss

    class NeedsSwitch(BCELoss):
        OPTIONS = {**BCELoss.OPTIONS, "switch": None}
        SETTING_OPTIONS = BCELoss.SETTING_OPTIONS + ("switch",)

    with pytest.raises(ValueError, match=r"cascade spec '(two|three|four)_stage': "
                                         r"method_options\['late'\] must set .*switch"):
        register("late")(NeedsSwitch)
    assert "late" not in LOSSES and "late" not in METHODS


def test_a_user_option_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match=r"bce: option bce_slots needs 4 values for cascade spec "
                                         r"'four_stage' \(4 stages\), got \[50, 40, 20\]"):
        build_loss("bce", FOUR_STAGE, bce_slots=[50, 40, 20])
    with pytest.raises(ValueError, match="icc: option cutoffs needs 2 values"):
        build_loss("icc", get_spec("two_stage"), cutoffs=[30, 30, 30])


def test_every_registered_spec_builds_every_method():
    for spec in SPECS.values():
        for name in LOSSES:
            assert build_loss(name, spec).spec is spec


def test_four_stage_losses_run_and_name_their_stages():
    spec = FOUR_STAGE
    torch.manual_seed(0)
    B, N = 6, spec.num_slots
    labels = torch.tensor(list(range(30, 20, -1)) + [8] * 10 + [7] * 10 + [6] * 10 + [5] * 10,
                          dtype=torch.float32).repeat(B, 1)
    mask = torch.ones(B, N, dtype=torch.bool)
    for name in LOSSES:
        logits = [torch.randn(B, N, requires_grad=True) for _ in spec.stages]
        out = build_loss(name, spec)(logits, labels, mask)
        out["loss"].backward()
        assert torch.isfinite(out["loss"]), name
        assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in logits), name
        if name not in ("icc",):              # ICC has one joint component
            assert any(k.endswith("/rank") for k in out) and any(k.endswith("/coarse") for k in out), (name, out)
    rf = build_loss("rankflow", spec)(logits, labels, mask)
    assert {"pair/retrieval", "pair/prerank", "pair/coarse", "mse/coarse", "bce/rank"} <= set(rf)


# ------------------------------------------------------------- four stages, command line


# ----------------------------------------------------------------------- method registry


# ------------------------------------------------------------------------- flags, once


