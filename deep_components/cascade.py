"""Cascade settings as data.

A :class:`CascadeSpec` says which candidate groups make up a request (in slot order), which
stages the cascade has (in cascade order, first stage first), how many items each stage keeps and
where the graded labels come from.  Every other module takes a spec; nothing else hard-codes
group names, ``N = 40/50`` or the quotas.  A new cascade (say four stages) is one new spec.

Per-method constants that do not follow a closed formula (docs/methods.md §0.2, §10) live in
the spec: per-stage ones as :class:`Stage` fields, per-setting switches in
``loss_defaults``; loss code reads them instead of branching on the number of stages.  A spec is
checked when it is made: its shape (groups, quotas that shrink along the cascade, distinct
stage names, known towers) and every loss option it sets (known method, known option, one value
per stage where an option is per stage), with errors that name the spec.  ``register_spec``
makes it selectable by name (``--setting NAME``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

#: Constant graded-label indices of the negative groups (label = 30 - index); data/README.md.
NEGATIVE_GROUP_INDEX: Mapping[str, int] = {
    "rerank_neg": 22,
    "rank_neg": 23,
    "coarse_neg": 24,
    "prerank_neg": 25,
}
#: Graded label = LABEL_BASE - index.
LABEL_BASE = 30


@dataclass(frozen=True)
class Stage:
    """One stage of the cascade.

    name: the stage's name (metric and loss-component keys), e.g. "retrieval", "prerank";
    tower: a registered tower ("dssm", "mlp", "din"; models.TOWERS);
    quota: how many items the stage keeps (Recall@10@quota, joint-recall cascade, ARF support).
    bce_slots: how many leading slots the stage's pointwise BCE sees (docs/methods.md §4.1).
    icc_cutoff / icc_multiplier: ICC's survival cut-off and ensemble multiplier (methods.md §4.2).
    """

    name: str
    tower: str
    quota: int
    bce_slots: int
    icc_cutoff: int
    icc_multiplier: float


@dataclass(frozen=True)
class CascadeSpec:
    """A cascade setting: candidate groups (slot order) and stages (cascade order)."""

    name: str
    groups: tuple[str, ...]
    stages: tuple[Stage, ...]
    group_size: int = 10
    gt_num: int = 10
    #: all_stage column holding the positive group's index (rank_index / rerank_index).
    index_column: str = "rank_index"
    #: Per-method option values of this setting (docs/methods.md §10), e.g.
    #: LCRON's hard label matrix in three-stage.  A method's SETTING_OPTIONS must all be given
    #: here; user options override them.
    loss_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    negative_index: Mapping[str, int] = field(default_factory=lambda: dict(NEGATIVE_GROUP_INDEX))

    def __post_init__(self) -> None:
        where = f"cascade spec {self.name!r}"
        if len(set(self.groups)) != len(self.groups):
            raise ValueError(f"{where}: duplicated group names {self.groups}")
        for g in self.groups[1:]:
            if g not in self.negative_index:
                raise ValueError(f"{where}: negative group {g!r} has no constant label index")
        if not self.stages:
            raise ValueError(f"{where}: needs at least one stage")
        names = [st.name for st in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: duplicated stage names {names}")
        n = self.num_slots
        prev = n
        for st in self.stages:
            if not (self.gt_num <= st.quota <= prev):
                raise ValueError(
                    f"{where}: stage {st.name!r} quota {st.quota} must lie in "
                    f"[gt_num={self.gt_num}, {prev}] (quotas shrink along the cascade)")
            if not (1 <= st.bce_slots <= n and self.gt_num <= st.icc_cutoff <= n):
                raise ValueError(f"{where}: stage {st.name!r}: bce_slots {st.bce_slots} must lie in "
                                 f"[1, N={n}] and icc_cutoff {st.icc_cutoff} in [{self.gt_num}, {n}]")
            prev = st.quota
        from .models import TOWERS               # late: models and losses do not import specs
        from .loss.registry import check_spec_options

        for st in self.stages:
            if st.tower not in TOWERS:
                raise ValueError(f"{where}: stage {st.name!r} has unknown tower {st.tower!r}; "
                                 f"registered: {', '.join(sorted(TOWERS))}")
        check_spec_options(self)

    # ----------------------------------------------------------------------------------------
    @property
    def positive_group(self) -> str:
        """The ground-truth group (group 0)."""
        return self.groups[0]

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def num_slots(self) -> int:
        """N, the number of candidate slots per request."""
        return self.group_size * len(self.groups)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def quotas(self) -> tuple[int, ...]:
        return tuple(st.quota for st in self.stages)

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(st.name for st in self.stages)

    @property
    def towers(self) -> tuple[str, ...]:
        return tuple(st.tower for st in self.stages)

    def group_slice(self, group: str) -> slice:
        g = self.groups.index(group)
        return slice(g * self.group_size, (g + 1) * self.group_size)

    def negative_labels(self) -> tuple[int, ...]:
        """Graded labels of the negative groups in slot order, e.g. (7, 6, 5) for two-stage."""
        return tuple(LABEL_BASE - self.negative_index[g] for g in self.groups[1:])

    def fingerprint(self) -> dict:
        """Everything about the spec that shapes the data arrays (used in cache keys)."""
        return {
            "name": self.name,
            "groups": list(self.groups),
            "group_size": self.group_size,
            "index_column": self.index_column,
            "negative_index": {g: int(self.negative_index[g]) for g in self.groups[1:]},
        }


SPECS: dict[str, CascadeSpec] = {}


def register_spec(spec: CascadeSpec) -> CascadeSpec:
    """Make ``spec`` selectable by name (``--setting NAME``, launchers, collector)."""
    if spec.name in SPECS and SPECS[spec.name] != spec:
        raise ValueError(f"cascade spec {spec.name!r} registered twice with different values")
    SPECS[spec.name] = spec
    return spec


#: The paper's two-stage cascade: retrieval (DSSM) -> prerank (DIN) on RecFlow's rank groups.
TWO_STAGE = register_spec(CascadeSpec(
    name="two_stage",
    groups=("rank_pos", "rank_neg", "coarse_neg", "prerank_neg"),
    stages=(
        Stage("retrieval", "dssm", quota=30, bce_slots=40, icc_cutoff=30, icc_multiplier=1.0),
        Stage("prerank", "din", quota=20, bce_slots=20, icc_cutoff=30, icc_multiplier=1.0),
    ),
    index_column="rank_index",
    loss_defaults={
        "lcron": {"hard_labels": False},           # soft label matrix (threshold discarded)
        "fs_ranknet": {"anchor_mask": True},       # anchors weighted by their mask
        "rankflow": {"splits": (10,), "mse_weight": 1.0, "pair_weight": 0.0},  # alpha = 0
    },
))

#: The paper's three-stage cascade: retrieval (DSSM) -> prerank (MLP) -> rank (DIN).
THREE_STAGE = register_spec(CascadeSpec(
    name="three_stage",
    groups=("rerank_pos", "rerank_neg", "rank_neg", "coarse_neg", "prerank_neg"),
    stages=(
        Stage("retrieval", "dssm", quota=40, bce_slots=50, icc_cutoff=40, icc_multiplier=1.0),
        Stage("prerank", "mlp", quota=30, bce_slots=40, icc_cutoff=30, icc_multiplier=2.0),
        Stage("rank", "din", quota=20, bce_slots=20, icc_cutoff=30, icc_multiplier=4.0),
    ),
    index_column="rerank_index",
    loss_defaults={
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
    stages=THREE_STAGE.stages[:2] + (
        Stage("coarse", "mlp", quota=20, bce_slots=30, icc_cutoff=20, icc_multiplier=4.0),
        Stage("rank", "din", quota=10, bce_slots=20, icc_cutoff=10, icc_multiplier=8.0),
    ),
    loss_defaults={**THREE_STAGE.loss_defaults,
                   "rankflow": {"splits": (30, 20, 10), "mse_weight": 1.0, "pair_weight": 1.0}},
))


def get_spec(name: str) -> CascadeSpec:
    """Look up a registered spec by name ("two_stage", "three_stage", "four_stage", ...)."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown cascade setting {name!r}; registered: "
                         f"{', '.join(sorted(SPECS))}") from None
