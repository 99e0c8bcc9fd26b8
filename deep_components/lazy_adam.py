"""Lazy Adam for embedding tables with sparse gradients (``--emb_optimizer lazy_adam``).

For the rows a step's gradient touches, the update is exactly ``torch.optim.Adam``'s (same
operations, same bias correction from the global step count, eps added after the corrected
square root).  Rows the step does not touch are left alone: their value and both moments stay
as they are, where dense Adam would decay the moments and keep moving the row with its
momentum.  So the cost of a step follows the batch (the touched rows), not the table.

How it differs from the paper's recipe (dense Adam over every row): a row's moments are only
updated when its id occurs in a batch, so an id seen once keeps a "frozen" momentum until it is
seen again, and never drifts in between.  On the first step both are identical
(tests/test_vocab.py).  ``torch.optim.SparseAdam`` is not used because it places eps before
the bias correction (``m / (sqrt(v) + eps) * sqrt(bc2) / bc1``), which changes the update of
every small gradient, not only of untouched rows.
"""
from __future__ import annotations

import math

import torch


class LazyAdam(torch.optim.Optimizer):
    """Adam on the rows of sparse gradients; dense gradients are refused."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("LazyAdam expects sparse gradients (nn.Embedding(sparse=True))")
                grad = p.grad.coalesce()
                rows, values = grad._indices()[0], grad._values()
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                m = state["exp_avg"][rows].lerp_(values, 1 - beta1)
                v = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
                state["exp_avg"][rows] = m
                state["exp_avg_sq"][rows] = v
                step_size = group["lr"] / (1 - beta1 ** t)
                denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
                p[rows] = p[rows].addcdiv_(m, denom, value=-step_size)
        return None
