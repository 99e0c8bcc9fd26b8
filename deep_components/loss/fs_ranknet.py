"""FS-RankNet: per stage, every group's slots (anchors) against every slot of the later groups
(opponents) with a pairwise logistic loss (docs/methods.md §4.4).

    L_a    = Σ_b Σ_{i∈A_a} Σ_{j∈O_a} w_i sp(s_j - s_i) / (n_a · Z_a),   n_a = |O_a| = 10 (G-1-a)
    stage  = Σ_{a=0}^{G-2} L_a,    loss = Σ_t stage(s_t)

Two-stage: anchors weighted by their mask, Z_a = number of valid anchors of group a in the batch.
Three-stage: no mask at all, Z_a = 10 B.  (``anchor_mask`` is the per-setting switch.)
mask_mode "per_slot" also zeroes pairs with a padded opponent (and, in three-stage, padded anchors),
keeps the fixed normalisers, and skips a group with no valid anchor in the batch.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import CascadeLoss, component
from .registry import register


@register("fs_ranknet", display="FS-RankNet", paper_rank=4)
class FSRankNetLoss(CascadeLoss):
    #: anchor_groups: how many groups anchor pairs (the first ones; None: every group but the
    #: last, the method as published; 1: the ground truth against every negative only, an ablation)
    OPTIONS = {"anchor_mask": True, "anchor_groups": None}
    SETTING_OPTIONS = ("anchor_mask",)

    def __init__(self, spec, mask_mode: str = "per_slot", **options):
        super().__init__(spec, mask_mode, **options)
        n = self.opts["anchor_groups"]
        if n is not None and (isinstance(n, bool) or not isinstance(n, int)
                              or not 1 <= n <= spec.num_groups - 1):
            raise ValueError(f"{self.name}: option anchor_groups must be a whole number in "
                             f"[1, {spec.num_groups - 1}] for cascade spec {spec.name!r}, got {n!r}")

    def compute(self, logits: list[Tensor], labels: Tensor, mask: Tensor) -> dict:
        spec, per_slot = self.spec, self.per_slot
        g, G = spec.group_size, spec.num_groups
        anchor_groups = self.opts["anchor_groups"] or G - 1
        m = mask.to(labels.dtype)
        B = labels.shape[0]
        out: dict = {}
        total = 0.0
        for t, s in enumerate(logits):
            stage = 0.0
            for a in range(anchor_groups):
                anchors, opp = s[:, a * g:(a + 1) * g], s[:, (a + 1) * g:]
                pair = F.softplus(opp.unsqueeze(1) - anchors.unsqueeze(2))     # [B, g, n_a]
                w_anchor = m[:, a * g:(a + 1) * g]
                if self.opts["anchor_mask"]:
                    weight, norm = w_anchor, w_anchor.sum()
                    if per_slot:          # an empty group adds exactly 0 (§6.2.5): its weights are
                        norm = norm.clamp(min=1)      # all 0, and a count >= 1 is kept as it is
                else:
                    weight = w_anchor if per_slot else None
                    norm = g * B
                pair = pair * weight.unsqueeze(-1) if weight is not None else pair
                if per_slot:
                    pair = pair * m[:, (a + 1) * g:].unsqueeze(1)
                stage = stage + pair.sum() / (opp.shape[1] * norm)
            out[self.stage_key("ranknet", t)] = component(stage)
            total = total + stage
        out["loss"] = total
        return out
