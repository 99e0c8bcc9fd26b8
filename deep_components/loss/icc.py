"""ICC: a joint cascade score built from soft survival indicators, trained with a pairwise
logistic loss over the slot order (docs/methods.md §4.2).

    κ_t   = the k_t-th largest score of stage t (not detached: its gradient reaches that slot)
    I_t   = σ((s_t - κ_t) / σ_ind)
    E     = Σ_{t<T} c_t (Π_{u<t} I_u)(1 - I_t) s_t + c_T (Π_{u<T} I_u) I_T s_T
    loss  = (1 / (B N²)) Σ_b Σ_{i<j} BCE(E_i - E_j, 1[ℓ_i > ℓ_j])

Cut-offs k_t and multipliers c_t are per-stage, per-setting options (30, 30 / 40, 30, 30 and
1, 1 / 1, 2, 4).  mask_mode "per_slot" gives zero weight to pairs with a padded slot and uses ℓ·m.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CascadeLoss, component
from .registry import register


@register("icc", display="ICC", paper_rank=2)
class ICCLoss(CascadeLoss):
    """Options: sigma_ind 1e-3; cutoffs and multipliers (per stage, given by the setting)."""

    OPTIONS = {"sigma_ind": 1e-3, "cutoffs": None, "multipliers": None}
    SETTING_OPTIONS = ("cutoffs", "multipliers")
    STAGE_OPTIONS = {"cutoffs": 0, "multipliers": 0}
    CUTOFF_OPTIONS = ("cutoffs",)

    def compute(self, logits: list[Tensor], labels: Tensor, mask: Tensor) -> dict:
        cut, mult = self.opts["cutoffs"], self.opts["multipliers"]
        B, N = labels.shape
        T = len(logits)
        survive = 1.0                                    # Π_{u<t} I_u
        ensemble = 0.0
        for t, s in enumerate(logits):
            kappa = s.topk(cut[t], dim=-1).values[:, -1:]                     # [B, 1]
            ind = torch.sigmoid((s - kappa) / self.opts["sigma_ind"])
            keep = ind if t == T - 1 else 1.0 - ind
            ensemble = ensemble + mult[t] * survive * keep * s
            survive = survive * ind
        lab = labels * mask.to(labels.dtype) if self.per_slot else labels
        diff = ensemble.unsqueeze(-1) - ensemble.unsqueeze(-2)                # [B, i, j] E_i - E_j
        target = (lab.unsqueeze(-1) > lab.unsqueeze(-2)).to(labels.dtype)
        weight = torch.ones(N, N, dtype=labels.dtype, device=labels.device).triu(1)
        if self.per_slot:
            m = mask.to(labels.dtype)
            weight = weight * m.unsqueeze(-1) * m.unsqueeze(-2)
        terms = F.binary_cross_entropy_with_logits(diff, target, reduction="none") * weight
        loss = terms.sum() / (B * N * N)
        return {"icc": component(loss), "loss": loss}
