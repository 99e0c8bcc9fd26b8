"""LCRON: end-to-end survival lower bound plus uncertainty-weighted per-stage losses
(docs/methods.md §4.8, §3.3-3.6).

With P̃_t = sort(s_t, τ) ⊙ S, U_t/D_t its column-normalised top-k / tail mass (detached column
sums), y / ȳ the top-10 / tail mass of the label matrix Λ:

    L_single,t = mean_b 1[c_b > k] · (1/N) Σ_i [-ln(U_t,i + ε) y_i v_i - ln(D_t,i + ε) ȳ_i v_i]
    L_e2e      = mean_b (1/N) Σ_i [-ln(Π_t U_t,i + ε) y_i - ln(1 - Π_t (1 - D_t,i) + ε) clip(1 - y_i, 0, 1)]
    loss       = Σ_t 0.5/w_t² · L_single,t + L_e2e + ln Π_t w_t

Λ is the soft label matrix in two-stage and thresholded (> 0.001, hard) in three-stage, as the
spec says.  In mask_mode "per_slot" both L_e2e terms are also multiplied by the slot mask.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import UncertaintyWeights, component, column_normalised
from .registry import register
from .sorting_base import SortingLoss

TERMS = ("both", "single", "e2e")


@register("lcron", display="LCRON", paper_rank=8)
class LCRONLoss(SortingLoss):
    """Options (defaults reproduce the reference):

    tau 50 (score sort temperature); sort "neural" | "soft"; k (L_single cut-off, model and
    label; default gt_num); e2e_k: int, "gt" (= gt_num, default) or "quota" (per-stage quotas);
    hard_labels (per setting: soft in two-stage, hard in three-stage); threshold 0.001; label_tau None = exact label matrix
    (= NeuralSort at 1e-4), else NeuralSort(ℓ, label_tau); eps 1e-6; terms "both" | "single" |
    "e2e"; fixed_weights None = learned uncertainty weights, else a float or one per stage
    (loss = Σ λ_t L_single,t + L_e2e, no log term).
    """

    OPTIONS = {**SortingLoss.SORT_OPTIONS, "tau": 50.0, "k": None, "e2e_k": "gt", "terms": "both",
               "fixed_weights": None}
    SETTING_OPTIONS = ("hard_labels",)
    STAGE_OPTIONS = {"fixed_weights": 0}
    CUTOFF_OPTIONS = ("k", "e2e_k")

    def __init__(self, spec, mask_mode: str = "per_slot", **options):
        super().__init__(spec, mask_mode, **options)
        o = self.opts
        if o["terms"] not in TERMS:
            raise ValueError(f"lcron: terms must be one of {TERMS}, got {o['terms']!r}")
        T = spec.num_stages
        self.k = int(o["k"] or spec.gt_num)
        e2e_k = o["e2e_k"]
        if e2e_k in (None, "gt"):
            self.e2e_k = [spec.gt_num] * T
        elif e2e_k == "quota":
            self.e2e_k = list(spec.quotas)
        elif isinstance(e2e_k, int):
            self.e2e_k = [e2e_k] * T
        else:
            raise ValueError(f"lcron: e2e_k must be an int, 'gt' or 'quota', got {e2e_k!r}")
        fw = o["fixed_weights"]
        if fw is None:
            self.weights = UncertaintyWeights(T) if o["terms"] != "e2e" else None
            self.fixed = None
        else:
            fw = [float(fw)] * T if isinstance(fw, (int, float)) else [float(x) for x in fw]
            self.weights, self.fixed = None, fw

    def compute(self, logits: list[Tensor], labels: Tensor, mask: Tensor) -> dict:
        o, eps = self.opts, self.opts["eps"]
        n = labels.shape[-1]
        sm, _, y, y_bar = self.prepare(labels, mask)                          # y, ȳ: [B, N]
        keep = (sm.count > self.k).to(labels.dtype)                           # [B]
        out: dict = {}
        singles, joint_in, joint_out = [], 1.0, 1.0
        for t, s in enumerate(logits):
            P = self.permutation(s, sm)                                       # [B, N, N]
            if o["terms"] != "e2e":
                U, D = column_normalised(P, self.k, eps)
                per_slot = -torch.log(U + eps) * y * sm.slot - torch.log(D + eps) * y_bar * sm.slot
                ls = (keep * per_slot.sum(-1) / n).mean()
                singles.append(ls)
                out[self.stage_key("single", t)] = component(ls)
            if o["terms"] != "single":
                U, D = column_normalised(P, self.e2e_k[t], eps)
                joint_in = joint_in * U
                joint_out = joint_out * (1.0 - D)
        total = 0.0
        if o["terms"] != "single":
            neg_w = (1.0 - y).clamp(0.0, 1.0)
            per_slot = -torch.log(joint_in + eps) * y - torch.log(1.0 - joint_out + eps) * neg_w
            if self.per_slot:
                per_slot = per_slot * mask.to(labels.dtype)
            le2e = (per_slot.sum(-1) / n).mean()
            out["e2e"] = component(le2e)
            total = total + le2e
        if singles:
            if self.fixed is not None:
                total = total + sum(lam_t * ls for lam_t, ls in zip(self.fixed, singles))
            else:
                w = self.weights()
                total = total + sum(0.5 / w[t] ** 2 * ls for t, ls in enumerate(singles)) \
                    + torch.log(torch.prod(w))
                for t in range(len(singles)):
                    out[self.stage_key("weight", t)] = component(w[t])
        out["loss"] = total
        return out
