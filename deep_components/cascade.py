"""Cascade settings as data.

A :class:`CascadeSpec` says which candidate groups make up a request (in slot order), which
stages the cascade has (in cascade order, first stage first), how many items each stage keeps and
where the graded labels come from.  Every other module takes a spec; nothing else hard-codes
group names, ``N = 40/50`` or the quotas.  A new cascade (say four stages) is one new spec.

Per-method constants that do not follow a closed formula (METHODS.md §0.2, §10) live here as
per-stage fields so that loss code reads them instead of branching on the number of stages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

#: Constant graded-label indices of the negative groups (label = 30 - index), RECFLOW_FORMAT.md.
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

    name: "retrieval", "prerank" or "rank"; tower: "dssm", "mlp" or "din";
    quota: how many items the stage keeps (Recall@10@quota, joint-recall cascade, ARF support).
    bce_slots: how many leading slots the stage's pointwise BCE sees (METHODS §4.1).
    icc_cutoff / icc_multiplier: ICC's survival cut-off and ensemble multiplier (METHODS §4.2).
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
    #: Per-method option defaults that differ between settings (METHODS §10), e.g. LCRON's hard
    #: label matrix in three-stage.  User options override them.
    loss_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    negative_index: Mapping[str, int] = field(default_factory=lambda: dict(NEGATIVE_GROUP_INDEX))

    def __post_init__(self) -> None:
        if len(set(self.groups)) != len(self.groups):
            raise ValueError(f"{self.name}: duplicated group names {self.groups}")
        for g in self.groups[1:]:
            if g not in self.negative_index:
                raise ValueError(f"{self.name}: negative group {g!r} has no constant label index")
        n = self.num_slots
        prev = n
        for st in self.stages:
            if not (self.gt_num <= st.quota <= prev):
                raise ValueError(
                    f"{self.name}: stage {st.name!r} quota {st.quota} must lie in "
                    f"[gt_num={self.gt_num}, {prev}] (quotas shrink along the cascade)")
            prev = st.quota

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


TWO_STAGE = CascadeSpec(
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
)

THREE_STAGE = CascadeSpec(
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
)

SPECS: dict[str, CascadeSpec] = {TWO_STAGE.name: TWO_STAGE, THREE_STAGE.name: THREE_STAGE}


def get_spec(name: str) -> CascadeSpec:
    """Look up a spec by name ("two_stage" or "three_stage")."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown cascade setting {name!r}; valid: {sorted(SPECS)}") from None
