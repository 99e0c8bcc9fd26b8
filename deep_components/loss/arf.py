"""ARF: per stage, a relaxed top-m recall term plus an uncertainty-weighted global permutation
cross-entropy (docs/methods.md §4.6).

With P̃_t = NeuralSort(s_t, 200) ⊙ S, m_t the stage's quota, Λ the soft label matrix and
y = Top_10(Λ):

    L_relax,t  = mean_b 1[c_b > m_t] (1/N) Σ_i -ln((1/m_t) Top_{m_t}(P̃_t)_i + ε) y_i v_i
    L_global,t = mean_b 1[c_b >= N] (1/N²) Σ_{p,i} -ln(P̃_t[p, i] + ε) Λ[p, i]
    loss       = Σ_t 0.5/w_t² L_global,t + L_relax,t + ln w_t
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import SortMasks, UncertaintyWeights, component, top_tail
from .registry import register
from .sorting_base import SortingLoss


@register("arf", display="ARF", paper_rank=6)
class ARFLoss(SortingLoss):
    """Options: tau 200, support (per-stage m_t; default the quotas), sort, label_tau, eps."""

    OPTIONS = {**SortingLoss.SORT_OPTIONS, "tau": 200.0, "support": None}
    STAGE_OPTIONS = {"support": 0}
    CUTOFF_OPTIONS = ("support",)

    def __init__(self, spec, mask_mode: str = "per_slot", **options):
        super().__init__(spec, mask_mode, **options)
        self.support = list(self.opts["support"] or spec.quotas)
        self.weights = UncertaintyWeights(spec.num_stages)

    def relax(self, P: Tensor, m: int, y: Tensor, y_bar: Tensor, sm: SortMasks) -> Tensor:
        """Per-request relaxed recall term r_b [B] (before the 1[c_b > m] filter)."""
        eps, n = self.opts["eps"], P.shape[-1]
        h = top_tail(P, m)[0] / m
        return (-torch.log(h + eps) * y * sm.slot).sum(-1) / n

    def compute(self, logits: list[Tensor], labels: Tensor, mask: Tensor) -> dict:
        eps = self.opts["eps"]
        n = labels.shape[-1]
        sm, lam, y, y_bar = self.prepare(labels, mask)
        full = (sm.count >= n).to(labels.dtype)                              # [B] all slots valid
        w = self.weights()
        out: dict = {}
        total = 0.0
        for t, s in enumerate(logits):
            m = self.support[t]
            P = self.permutation(s, sm)
            relax = ((sm.count > m).to(labels.dtype) * self.relax(P, m, y, y_bar, sm)).mean()
            glob = (full * (-torch.log(P + eps) * lam).sum((1, 2)) / n ** 2).mean()
            total = total + 0.5 / w[t] ** 2 * glob + relax + torch.log(w[t])
            out[self.stage_key("global", t)] = component(glob)
            out[self.stage_key("relax", t)] = component(relax)
            out[self.stage_key("weight", t)] = component(w[t])
        out["loss"] = total
        return out
