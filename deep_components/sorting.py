"""Differentiable sorting operators (docs/methods.md §3.1-3.3).

All return a row-stochastic matrix ``P [B, N, N]`` with **row p = sorted position p (descending,
row 0 is the largest), column i = slot i**.
"""
from __future__ import annotations

import torch
from torch import Tensor


def neural_sort(scores: Tensor, tau: float) -> Tensor:
    """NeuralSort relaxation of the descending sort.

    scores [B, N] -> P [B, N, N] with
    ``P[p, i] = softmax_i(((N + 1 - 2p) s_i - sum_j |s_i - s_j|) / tau)``, p = 1..N.
    """
    n = scores.shape[-1]
    abs_diff_sum = (scores.unsqueeze(-1) - scores.unsqueeze(-2)).abs().sum(-1)  # [B, N]
    scale = n + 1 - 2 * torch.arange(1, n + 1, device=scores.device, dtype=scores.dtype)  # [N]
    z = scale[:, None] * scores.unsqueeze(-2) - abs_diff_sum.unsqueeze(-2)       # [B, N, N]
    return torch.softmax(z / tau, dim=-1)


def soft_sort(scores: Tensor, tau: float) -> Tensor:
    """SoftSort: ``P[p, i] = softmax_i(-|s_i - s_(p)| / tau)``, s_(p) the p-th largest score.

    scores [B, N] -> P [B, N, N]; gradient flows through the sorted values too.
    """
    sorted_scores = scores.sort(dim=-1, descending=True).values               # [B, N]
    return torch.softmax(-(sorted_scores.unsqueeze(-1) - scores.unsqueeze(-2)).abs() / tau, dim=-1)


SORTERS = {"neural": neural_sort, "soft": soft_sort}


def get_sorter(name: str):
    try:
        return SORTERS[name]
    except KeyError:
        raise ValueError(f"unknown sort operator {name!r}; valid: {sorted(SORTERS)}") from None


def label_permutation_matrix(labels: Tensor) -> Tensor:
    """Exact ``NeuralSort(labels, tau=1e-4)`` for integer-valued labels (methods.md §3.3).

    labels [B, N] -> L0 [B, N, N] with ``L0[p, i] = 1/|g(i)|`` when position p lies in the block
    of sorted positions that the tie class g(i) of slot i occupies, else 0.  Every column sums
    to 1.  No gradient.
    """
    lab = labels.detach()
    above = (lab.unsqueeze(-2) > lab.unsqueeze(-1)).sum(-1)    # [B, N] labels strictly above i
    ties = (lab.unsqueeze(-2) == lab.unsqueeze(-1)).sum(-1)    # [B, N] size of i's tie class
    pos = torch.arange(lab.shape[-1], device=lab.device)[None, :, None]  # 0-based row p
    inside = (pos >= above.unsqueeze(-2)) & (pos < (above + ties).unsqueeze(-2))
    return inside.to(labels.dtype) / ties.unsqueeze(-2).to(labels.dtype)
