"""A cascade setting as a plain value (no torch, no towers, no losses).

A :class:`CascadeSpec` says which candidate groups make up a request (in slot order), which
stages the cascade has (in cascade order, first stage first: name, tower name, quota), where the
graded labels come from, and every method's per-setting option values (``method_options``;
docs/methods.md §10).  Every other module takes a spec; nothing else hard-codes group names,
``N = 40/50`` or the quotas.  A spec checks its own shape when it is made (groups, quotas that
shrink along the cascade, distinct stage names); the checks against the registered towers and
methods, and the shipped specs, are deep_components.specs's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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
    tower: the name of a registered tower ("dssm", "mlp", "din"; models.TOWERS);
    quota: how many items the stage keeps (Recall@10@quota, joint-recall cascade, ARF support).
    """

    name: str
    tower: str
    quota: int


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
    #: Per-method option values of this setting (docs/methods.md §10), e.g. BCE's slots per
    #: stage or LCRON's hard label matrix in three-stage.  A method's SETTING_OPTIONS must all be
    #: given here; user options override them.
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
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
        prev = self.num_slots
        for st in self.stages:
            if not (self.gt_num <= st.quota <= prev):
                raise ValueError(
                    f"{where}: stage {st.name!r} quota {st.quota} must lie in "
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

    def to_dict(self) -> dict:
        """The spec as plain data (JSON, TOML): :meth:`from_dict` makes it again."""
        return {"name": self.name, "groups": list(self.groups),
                "stages": [{"name": st.name, "tower": st.tower, "quota": st.quota}
                           for st in self.stages],
                "group_size": self.group_size, "gt_num": self.gt_num,
                "index_column": self.index_column,
                "method_options": {m: {k: list(v) if isinstance(v, tuple) else v
                                       for k, v in o.items()}
                                   for m, o in self.method_options.items()},
                "negative_index": {g: int(i) for g, i in self.negative_index.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "spec") -> "CascadeSpec":
        """A spec from plain data (an experiment file's ``[spec]``, a run's config.json); a
        ValueError naming ``where`` and the key for anything missing or malformed."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected a table of the spec's fields, got {type(d).__name__}")
        known = {"name", "groups", "stages", "group_size", "gt_num", "index_column",
                 "method_options", "negative_index"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r} (valid: {', '.join(sorted(known))})")
        for k in ("name", "groups", "stages"):
            if k not in d:
                raise ValueError(f"{where}: missing {k!r}")
        try:
            stages = tuple(Stage(str(st["name"]), str(st["tower"]), int(st["quota"]))
                           for st in d["stages"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: each stage needs name, tower and quota ({e})") from None
        kw = {k: d[k] for k in ("group_size", "gt_num", "index_column") if k in d}
        options = {m: {k: tuple(v) if isinstance(v, list) else v for k, v in o.items()}
                   for m, o in dict(d.get("method_options", {})).items()}
        negative = dict(d.get("negative_index", NEGATIVE_GROUP_INDEX))
        return cls(name=str(d["name"]), groups=tuple(d["groups"]), stages=stages,
                   method_options=options, negative_index=negative, **kw)

    def fingerprint(self) -> dict:
        """Everything about the spec that shapes the data arrays (used in cache keys)."""
        return {
            "name": self.name,
            "groups": list(self.groups),
            "group_size": self.group_size,
            "index_column": self.index_column,
            "negative_index": {g: int(self.negative_index[g]) for g in self.groups[1:]},
        }


