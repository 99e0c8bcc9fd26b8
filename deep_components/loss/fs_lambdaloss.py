"""FS-LambdaLoss: LambdaLoss with a smoothed pair discount, per stage (docs/methods.md §4.5).

Per request, with ranks r (1 = highest score), linear gains ĝ = ℓ / IDCG (IDCG over the full
list, natural-log discount), and for slots i, j with d = |r_i - r_j|:

    u_ij = |1/ln(1+d) - 1/ln(2+d)|  if d > 0 and (r_i ≤ n* or r_j ≤ n*), else 0
    v_ij = |ρ_i - ρ_j|,  ρ_i = 1/ln(1 + r_i) if r_i ≤ n* else 0
    W_ij = sg(|ĝ_i - ĝ_j| ((1 - μ) u_ij + μ v_ij))
    stage = (1/B) Σ_b Σ_{i,j} W_ij BCE(s_i - s_j, 1[ℓ_i > ℓ_j])         (all ordered pairs)

n* = 30, μ = 0.8.  mask_mode "per_slot": labels ℓ·m, padded slots ranked last, pairs with a padded
slot weighted 0, normaliser unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CascadeLoss, component
from .registry import register


def pair_weights(s: Tensor, lab: Tensor, top_n: int, mu: float) -> Tensor:
    """Detached LambdaLoss weights W [B, N, N] for scores s and gains lab [B, N]."""
    s, lab = s.detach(), lab.detach()
    n = s.shape[-1]
    order = s.argsort(dim=-1, descending=True)
    ranks = order.argsort(dim=-1).to(s.dtype) + 1.0                          # [B, N] 1..N
    pos = torch.arange(1, n + 1, device=s.device, dtype=s.dtype)
    idcg = (lab.sort(dim=-1, descending=True).values / torch.log1p(pos)).sum(-1, keepdim=True)
    gain = torch.where(idcg > 0, lab / idcg.clamp(min=1e-30), torch.zeros_like(lab))
    d = (ranks.unsqueeze(-1) - ranks.unsqueeze(-2)).abs()
    in_top = (ranks.unsqueeze(-1) <= top_n) | (ranks.unsqueeze(-2) <= top_n)
    safe = d.clamp(min=1.0)
    u = torch.where((d > 0) & in_top, (1.0 / torch.log1p(safe) - 1.0 / torch.log(2.0 + safe)).abs(),
                    torch.zeros_like(d))
    rho = torch.where(ranks <= top_n, 1.0 / torch.log1p(ranks), torch.zeros_like(ranks))
    v = (rho.unsqueeze(-1) - rho.unsqueeze(-2)).abs()
    return (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs() * ((1.0 - mu) * u + mu * v)


@register("fs_lambdaloss", display="FS-LambdaLoss", paper_rank=5)
class FSLambdaLoss(CascadeLoss):
    OPTIONS = {"top_n": 30, "mu": 0.8}
    SLOT_OPTIONS = ("top_n",)

    def compute(self, logits: list[Tensor], labels: Tensor, mask: Tensor) -> dict:
        m = mask.to(labels.dtype)
        lab = labels * m if self.per_slot else labels
        target = (lab.unsqueeze(-1) > lab.unsqueeze(-2)).to(labels.dtype)
        out: dict = {}
        total = 0.0
        for t, s in enumerate(logits):
            ranked = s.masked_fill(~mask, float("-inf")) if self.per_slot else s
            W = pair_weights(ranked, lab, self.opts["top_n"], self.opts["mu"])
            if self.per_slot:
                W = W * m.unsqueeze(-1) * m.unsqueeze(-2)
            diff = s.unsqueeze(-1) - s.unsqueeze(-2)
            stage = (W * F.binary_cross_entropy_with_logits(diff, target, reduction="none")).sum() / s.shape[0]
            out[self.stage_key("lambda", t)] = component(stage)
            total = total + stage
        out["loss"] = total
        return out
