"""The loss interface (docs/methods.md §2) and the helpers every cascade loss shares.

A loss is a ``torch.nn.Module`` built by ``build_loss(name, spec, **options)`` and called as
``loss(logits, labels, mask)`` with ``logits`` a list of T tensors [B, N] in cascade order,
``labels`` float [B, N] (graded, methods.md §1.2) and ``mask`` bool [B, N].  It returns a dict whose
``"loss"`` is the scalar to minimise (the sum over every stage's loss) and whose other keys are
detached components for logging: Python floats (read from the device in one transfer), or, with
``tensor_components = True`` (the trainer's setting), detached 0-d tensors, so that a training
step never waits for the device to log them.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:                 # losses never import the spec registry
    from ..spec import CascadeSpec

#: padded slots: "per_slot" (each slot's own mask, methods.md §6.2) or "count_prefix" (the
#: reference's prefix-from-count behaviour); "true" and "reference" are the older spellings
MASK_MODES = ("per_slot", "count_prefix")
MASK_MODE_ALIASES = {"true": "per_slot", "reference": "count_prefix"}


def canonical_mask_mode(mode: str) -> str:
    """A mask mode's name ("per_slot" or "count_prefix"), whichever spelling it was given in."""
    mode = MASK_MODE_ALIASES.get(mode, mode)
    if mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES} (or {tuple(MASK_MODE_ALIASES)}), "
                         f"got {mode!r}")
    return mode


def did_you_mean(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class CascadeLoss(nn.Module):
    """Base class: option handling, input checks and the forward contract.

    Subclasses set ``OPTIONS`` (name -> default; every constant of docs/methods.md is one) and
    implement :meth:`compute`.  ``SETTING_OPTIONS`` names the options whose value differs between
    settings: every spec must give them in ``spec.method_options[name]`` (no silent fallback to
    one setting's value).  ``STAGE_OPTIONS`` maps the per-stage options to the number of values
    they take, as an offset from the number of stages (0: one per stage, -1: one per stage
    boundary).  ``CUTOFF_OPTIONS`` take whole numbers in [gt_num, N] (cut-offs of the ranking),
    ``SLOT_OPTIONS`` whole numbers in [1, N] (numbers of slots); a symbolic value (a string such
    as "gt" or "quota") or None is the method's own to resolve.  User options override the
    spec's.  ``mask_mode`` is "per_slot" (each slot's own mask, methods.md §6.2) or
    "count_prefix" (the reference's prefix-from-count behaviour); ``per_slot`` says which.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {}
    #: components as detached tensors (True) or floats (False, one device read per call)
    tensor_components: bool = False
    SETTING_OPTIONS: ClassVar[tuple[str, ...]] = ()
    STAGE_OPTIONS: ClassVar[dict[str, int]] = {}
    CUTOFF_OPTIONS: ClassVar[tuple[str, ...]] = ()
    SLOT_OPTIONS: ClassVar[tuple[str, ...]] = ()
    name: ClassVar[str] = "?"

    def __init__(self, spec: CascadeSpec, mask_mode: str = "per_slot", **options: Any):
        super().__init__()
        mask_mode = canonical_mask_mode(mask_mode)
        given = spec.method_options.get(self.name, {})
        for source, opts in ((f"cascade spec {spec.name!r} method_options", given), ("", options)):
            unknown = [k for k in opts if k not in self.OPTIONS]
            if unknown:
                k = unknown[0]
                where = f"{source}: " if source else ""
                raise ValueError(f"{where}loss {self.name!r} has no option {k!r}"
                                 f"{did_you_mean(k, self.OPTIONS)}; valid options: "
                                 f"{sorted(self.OPTIONS) + ['mask_mode']}")
        missing = [k for k in self.SETTING_OPTIONS if k not in given]
        if missing:
            raise ValueError(f"cascade spec {spec.name!r}: method_options[{self.name!r}] must set "
                             f"{', '.join(missing)} (they differ between settings; see "
                             "docs/methods.md §10)")
        self.spec = spec
        self.mask_mode = mask_mode
        self.per_slot = mask_mode == "per_slot"
        self.opts = {**self.OPTIONS, **given, **options}
        for k, offset in self.STAGE_OPTIONS.items():
            v, want = self.opts[k], spec.num_stages + offset
            if isinstance(v, (list, tuple)) and len(v) != want:
                raise ValueError(f"{self.name}: option {k} needs {want} values for cascade spec "
                                 f"{spec.name!r} ({spec.num_stages} stages), got {list(v)}")
        N = spec.num_slots
        for names, lo, what in ((self.CUTOFF_OPTIONS, spec.gt_num, "cut-offs"),
                                (self.SLOT_OPTIONS, 1, "slot counts")):
            for k in names:
                v = self.opts[k]
                for x in (v if isinstance(v, (list, tuple)) else [v]):
                    if x is None or isinstance(x, str):
                        continue
                    if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= N:
                        bound = f"gt_num={lo}" if lo == spec.gt_num and what == "cut-offs" else lo
                        raise ValueError(f"{self.name}: option {k}: {what} must be whole numbers "
                                         f"in [{bound}, N={N}] for cascade spec {spec.name!r}, got "
                                         f"{x!r}")

    def forward(self, logits: list[Tensor], labels: Tensor, mask: Tensor) -> dict[str, Any]:
        T, N = self.spec.num_stages, self.spec.num_slots
        if len(logits) != T:
            raise ValueError(f"{self.name}: expected {T} logit tensors (one per stage, cascade "
                             f"order), got {len(logits)}")
        for s in logits:
            if s.dim() != 2 or s.shape[1] != N:
                raise ValueError(f"{self.name}: expected logits of shape [B, {N}], got {tuple(s.shape)}")
        labels = labels.to(logits[0].dtype)
        out = self.compute(list(logits), labels, mask.bool())
        keys = [k for k, v in out.items() if k != "loss" and isinstance(v, Tensor)]
        if keys and not self.tensor_components:
            out.update(zip(keys, torch.stack([out[k].double() for k in keys]).tolist()))
        return out

    def compute(self, logits: list[Tensor], labels: Tensor, mask: Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def stage_key(self, prefix: str, t: int) -> str:
        return f"{prefix}/{self.spec.stages[t].name}"

    def extra_repr(self) -> str:
        return f"spec={self.spec.name}, mask_mode={self.mask_mode}, " + \
            ", ".join(f"{k}={v}" for k, v in self.opts.items())


@dataclass
class SortMasks:
    """Masks of the sorting-based losses (methods.md §1.3, §3.4) for one batch.

    count [B] valid slots; slot [B, N] the per-slot factor v_i (true mask or count prefix);
    pair [B, N, N] S[p, i] (position prefix on rows x ``slot`` on columns);
    sort_labels [B, N] the labels the label matrix is built from (ℓ·m in true mode).
    """

    count: Tensor
    slot: Tensor
    pair: Tensor
    sort_labels: Tensor


def sort_masks(labels: Tensor, mask: Tensor, mode: str) -> SortMasks:
    n = labels.shape[-1]
    count = mask.sum(-1)                                                     # [B]
    prefix = torch.arange(n, device=mask.device)[None, :] < count[:, None]   # [B, N] 1[i < c]
    per_slot = canonical_mask_mode(mode) == "per_slot"
    slot = mask if per_slot else prefix
    pair = (prefix.unsqueeze(-1) & slot.unsqueeze(-2)).to(labels.dtype)    # rows: 1[p <= c]
    sort_labels = labels * mask.to(labels.dtype) if per_slot else labels
    return SortMasks(count, slot.to(labels.dtype), pair, sort_labels)


def top_tail(P: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Column mass in the first k rows and in the remaining rows: P [B, N, N] -> 2 x [B, N]."""
    return P[:, :k, :].sum(1), P[:, k:, :].sum(1)


def column_normalised(P: Tensor, k: int, eps: float) -> tuple[Tensor, Tensor]:
    """(U_k, D_k) of methods.md §3.5: top-k and tail mass over the *detached* column sum."""
    top, tail = top_tail(P, k)
    denom = P.sum(1).detach() + eps
    return top / denom, tail / denom


class UncertaintyWeights(nn.Module):
    """One learnable scalar per stage, initialised to 1.0, in cascade order (methods.md §2.2)."""

    def __init__(self, num_stages: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(num_stages))

    def forward(self) -> Tensor:
        return self.w


def component(x: Tensor) -> Tensor:
    """A logged component: a detached copy (a view of a parameter, such as a loss weight, would
    show the value after later optimiser steps by the time it is read); CascadeLoss.forward
    turns them into floats unless ``tensor_components``."""
    return x.detach().clone()
