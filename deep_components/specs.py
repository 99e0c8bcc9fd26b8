"""The registered cascade settings: the shipped specs, ``register_spec`` / ``get_spec``, and the
checks of a spec against the registered towers and methods.

A spec is checked when it is registered (its stages' towers exist, every method builds for it
with its ``method_options``: known methods and option names, one value per stage, the
per-setting options given, values in range), and every method registered later is checked
against the registered specs (a hook of the method registry), so neither order slips through.
``--setting NAME`` selects a registered spec.
"""
from __future__ import annotations

from dataclasses import replace

from .loss import registry as methods
from .models import TOWERS
from .spec import CascadeSpec, Stage

SPECS: dict[str, CascadeSpec] = {}


def check_spec(spec: CascadeSpec) -> None:
    """The spec's towers are registered and every registered method builds for it (a ValueError
    naming the spec otherwise)."""
    for st in spec.stages:
        if st.tower not in TOWERS:
            raise ValueError(f"cascade spec {spec.name!r}: stage {st.name!r} has unknown tower "
                             f"{st.tower!r}; registered: {', '.join(sorted(TOWERS))}")
    methods.check_spec_options(spec)


def register_spec(spec: CascadeSpec) -> CascadeSpec:
    """Check ``spec`` and make it selectable by name (``--setting NAME``, launchers, collector)."""
    if spec.name in SPECS and SPECS[spec.name] != spec:
        raise ValueError(f"cascade spec {spec.name!r} registered twice with different values")
    check_spec(spec)
    SPECS[spec.name] = spec
    return spec


def get_spec(name: str) -> CascadeSpec:
    """A registered spec by name ("two_stage", "three_stage", "four_stage", ...)."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown cascade setting {name!r}; registered: "
                         f"{', '.join(sorted(SPECS))}") from None


def spec_of(setting: str, stored: dict | None = None, where: str = "spec") -> CascadeSpec:
    """The registered spec ``setting``; a spec no code registers is made from ``stored`` (its
    plain data, e.g. a run folder's config.json or an experiment file) and registered, checked
    like any other."""
    if setting in SPECS or stored is None:
        spec = get_spec(setting)
        if stored is not None and CascadeSpec.from_dict(stored, where) != spec:
            raise ValueError(f"{where}: setting {setting!r} is registered with other values")
        return spec
    spec = CascadeSpec.from_dict(stored, where)
    if spec.name != setting:
        raise ValueError(f"{where}: the spec is named {spec.name!r}, not {setting!r}")
    return register_spec(spec)


def _check_new_method(name: str) -> None:
    for spec in SPECS.values():
        methods.check_method_for_spec(name, spec)


methods.on_register(_check_new_method)


#: The paper's two-stage cascade: retrieval (DSSM) -> prerank (DIN) on RecFlow's rank groups.
TWO_STAGE = register_spec(CascadeSpec(
    name="two_stage",
    groups=("rank_pos", "rank_neg", "coarse_neg", "prerank_neg"),
    stages=(Stage("retrieval", "dssm", quota=30), Stage("prerank", "din", quota=20)),
    index_column="rank_index",
    method_options={
        "bce": {"bce_slots": (40, 20)},            # each stage's BCE sees its leading slots
        "icc": {"cutoffs": (30, 30), "multipliers": (1.0, 1.0)},
        "lcron": {"hard_labels": False},           # soft label matrix (threshold discarded)
        "fs_ranknet": {"anchor_mask": True},       # anchors weighted by their mask
        "rankflow": {"splits": (10,), "mse_weight": 1.0, "pair_weight": 0.0},  # alpha = 0
    },
))

#: The paper's three-stage cascade: retrieval (DSSM) -> prerank (MLP) -> rank (DIN).
THREE_STAGE = register_spec(CascadeSpec(
    name="three_stage",
    groups=("rerank_pos", "rerank_neg", "rank_neg", "coarse_neg", "prerank_neg"),
    stages=(Stage("retrieval", "dssm", quota=40), Stage("prerank", "mlp", quota=30),
            Stage("rank", "din", quota=20)),
    index_column="rerank_index",
    method_options={
        "bce": {"bce_slots": (50, 40, 20)},
        "icc": {"cutoffs": (40, 30, 30), "multipliers": (1.0, 2.0, 4.0)},
        "lcron": {"hard_labels": True},            # label matrix thresholded at 0.001
        "fs_ranknet": {"anchor_mask": False},      # no mask at all
        "rankflow": {"splits": (30, 20), "mse_weight": 1.0, "pair_weight": 1.0},
    },
))

#: Not in the paper: a four-stage cascade on the three-stage groups, one stage per group
#: boundary (retrieval keeps 40, prerank 30, coarse rank 20, rank the final 10).  Its constants
#: follow the three-stage ones where a rule is visible (each stage's BCE sees the slots it
#: receives, ICC cuts at the quota and doubles the multiplier per stage, RankFlow's splits are
#: the later quotas; the three-stage switches of LCRON and FS-RankNet).
FOUR_STAGE = register_spec(replace(
    THREE_STAGE, name="four_stage",
    stages=THREE_STAGE.stages[:2] + (Stage("coarse", "mlp", quota=20), Stage("rank", "din", quota=10)),
    method_options={**THREE_STAGE.method_options,
                    "bce": {"bce_slots": (50, 40, 30, 20)},
                    "icc": {"cutoffs": (40, 30, 20, 10), "multipliers": (1.0, 2.0, 4.0, 8.0)},
                    "rankflow": {"splits": (30, 20, 10), "mse_weight": 1.0, "pair_weight": 1.0}},
))
