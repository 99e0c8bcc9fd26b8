"""BCE: independent pointwise training of every stage (docs/methods.md §4.1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CascadeLoss, component
from .registry import register


@register("bce", display="BCE", paper_rank=1)
class BCELoss(CascadeLoss):
    """Stage t: mean over B x n_t of mask * BCE(s_t, 1[slot in group 0]) on its first n_t slots.

    n_t is the option ``bce_slots`` (per stage, per setting: 40, 20 / 50, 40, 20); the
    denominator always counts padded slots (the mask only zeroes terms).  Components
    ``bce/<stage>``.
    """

    OPTIONS = {"bce_slots": None}
    SETTING_OPTIONS = ("bce_slots",)
    STAGE_OPTIONS = {"bce_slots": 0}
    SLOT_OPTIONS = ("bce_slots",)

    def compute(self, logits: list[Tensor], labels: Tensor, mask: Tensor) -> dict:
        slots = self.opts["bce_slots"]
        g = self.spec.group_size
        out, total = {}, 0.0
        for t, s in enumerate(logits):
            n = slots[t]
            target = torch.zeros_like(s[:, :n])
            target[:, :g] = 1.0
            terms = F.binary_cross_entropy_with_logits(s[:, :n], target, reduction="none")
            loss_t = (terms * mask[:, :n]).sum() / (s.shape[0] * n)
            out[self.stage_key("bce", t)] = component(loss_t)
            total = total + loss_t
        out["loss"] = total
        return out
