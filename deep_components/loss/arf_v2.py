"""ARF-v2: ARF with L_relax replaced by a column-normalised two-sided term (docs/methods.md §4.7).

    L_relax,t = mean_b 1[c_b > m_t] (1/N) Σ_i [-ln(U_i + ε) y_i v_i - ln(D_i + ε) ȳ_i v_i]

with U / D the top-m_t / tail mass of P̃_t over its detached column sums (§3.5) and y / ȳ the
top-10 / tail mass of the (soft) label matrix.  Everything else is ARF.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .arf import ARFLoss
from .base import SortMasks, column_normalised
from .registry import register


@register("arf_v2", display="ARF-v2", paper_rank=7)
class ARFv2Loss(ARFLoss):
    def relax(self, P: Tensor, m: int, y: Tensor, y_bar: Tensor, sm: SortMasks) -> Tensor:
        eps, n = self.opts["eps"], P.shape[-1]
        U, D = column_normalised(P, m, eps)
        return ((-torch.log(U + eps) * y - torch.log(D + eps) * y_bar) * sm.slot).sum(-1) / n
