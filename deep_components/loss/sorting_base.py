"""Shared machinery of the sorting-based losses (ARF, ARF-v2, LCRON): docs/methods.md §3."""
from __future__ import annotations

from typing import Any

from torch import Tensor

from ..sorting import get_sorter, label_permutation_matrix, neural_sort
from .base import CascadeLoss, SortMasks, sort_masks, top_tail


class SortingLoss(CascadeLoss):
    """Base for losses built on soft permutation matrices.

    Options shared by every subclass: ``tau`` (score sort temperature), ``sort`` ("neural" or
    "soft"), ``label_tau`` (None = the exact label matrix, which equals NeuralSort(ℓ, 1e-4);
    else NeuralSort(ℓ, label_tau)), ``hard_labels`` and ``threshold`` (Λ = 1[Λ⁰ > threshold]),
    ``eps``.
    """

    SORT_OPTIONS: dict[str, Any] = {"sort": "neural", "label_tau": None, "hard_labels": False,
                                    "threshold": 1e-3, "eps": 1e-6}

    def __init__(self, spec, mask_mode: str = "per_slot", **options):
        super().__init__(spec, mask_mode, **options)
        tau = self.opts["tau"]
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
            raise ValueError(f"{self.name}: tau must be > 0, got {tau!r}")
        self.sorter = get_sorter(self.opts["sort"])

    def label_matrix(self, sort_labels: Tensor) -> Tensor:
        """Λ [B, N, N] (no gradient): soft, or thresholded when ``hard_labels``."""
        o = self.opts
        lam = (label_permutation_matrix(sort_labels) if o["label_tau"] is None
               else neural_sort(sort_labels, o["label_tau"]).detach())
        if o["hard_labels"]:
            lam = (lam > o["threshold"]).to(sort_labels.dtype)
        return lam

    def prepare(self, labels: Tensor, mask: Tensor) -> tuple[SortMasks, Tensor, Tensor, Tensor]:
        """(masks, masked Λ, y = Top_K(Λ), ȳ = Tail_K(Λ)) with K = gt_num."""
        sm = sort_masks(labels, mask, self.mask_mode)
        lam = self.label_matrix(sm.sort_labels) * sm.pair
        y, y_bar = top_tail(lam, self.spec.gt_num)
        return sm, lam, y, y_bar

    def permutation(self, scores: Tensor, sm: SortMasks) -> Tensor:
        """P̃ = sort(scores, tau) ⊙ S: [B, N] -> [B, N, N]."""
        return self.sorter(scores, self.opts["tau"]) * sm.pair
