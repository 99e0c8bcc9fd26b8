"""RankFlow: joint training with BCE, distillation from the next stage and a top-k pairwise
term (docs/methods.md §4.3), written once for any number of stages.

With y = 1[slot in group 0] and S_1 = top q_1 slots of s_1:

    bce/<stage 1>      mean over all N slots of BCE(s_1, y)
    for t = 1 .. T-1, on the set S_t (|S_t| per request):
      bce/<stage t+1>  mean over S_t of BCE(s_{t+1}, y)
      mse/<stage t>    mean over S_t of (s_t - sg(s_{t+1}))²       (the later stage teaches)
      pair/<stage t>   -mean_b ln σ(mean_{A_t} s_t - mean_{Z_t} s_t), A_t = top ``splits[t]`` of
                       s_{t+1} within S_t, Z_t = the rest of S_t;   S_{t+1} = A_t
    loss = Σ bce + mse_weight Σ mse + pair_weight Σ pair

Two-stage: splits (10,), mse 1, pair 0 (α = 0; the pair term is not computed).  Three-stage:
splits (30, 20), all weights 1.  mask_mode "per_slot": padded slots are -inf for every selection,
terms on padded slots weigh 0 (fixed normalisers kept), pair means over valid slots only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import CascadeLoss, component
from .registry import register


def _select(x: Tensor, allowed: Tensor, k: int) -> Tensor:
    """[B, N] bool: the k largest entries of x among ``allowed`` slots (index set, no gradient)."""
    idx = x.detach().masked_fill(~allowed, float("-inf")).topk(k, dim=-1).indices
    return torch.zeros_like(allowed).scatter(-1, idx, True)


@register("rankflow", display="RankFlow", paper_rank=3)
class RankFlowLoss(CascadeLoss):
    OPTIONS = {"top": None, "splits": (10,), "mse_weight": 1.0, "pair_weight": 0.0}
    SETTING_OPTIONS = ("splits", "mse_weight", "pair_weight")
    STAGE_OPTIONS = {"splits": -1}
    CUTOFF_OPTIONS = ("top", "splits")

    def __init__(self, spec, mask_mode: str = "per_slot", **options):
        super().__init__(spec, mask_mode, **options)
        splits = self.opts["splits"]
        if not isinstance(splits, (list, tuple)):
            raise ValueError(f"rankflow: splits must be a list of {spec.num_stages - 1} sizes, "
                             f"got {splits!r}")
        top = size = int(self.opts["top"] or spec.quotas[0])
        for k in splits:                     # each set is a subset of the previous one
            if not (isinstance(k, int) and 1 <= k <= size):
                raise ValueError(f"rankflow: splits {list(splits)} must shrink from top={top} "
                                 f"(whole numbers >= 1) for cascade spec {spec.name!r}")
            size = k

    def compute(self, logits: list[Tensor], labels: Tensor, mask: Tensor) -> dict:
        spec, o = self.spec, self.opts
        B, N = labels.shape
        dt = labels.dtype
        y = torch.zeros_like(labels)
        y[:, :spec.group_size] = 1.0
        valid = mask if self.per_slot else torch.ones_like(mask)
        w = valid.to(dt)
        out: dict = {}

        def mean_on(values: Tensor, sel: Tensor, per_request: int) -> Tensor:
            return (values * sel.to(dt) * w).sum() / (B * per_request)

        s1 = logits[0]
        total = F.binary_cross_entropy_with_logits(s1, y, weight=w, reduction="sum") / (B * N)
        out[self.stage_key("bce", 0)] = component(total)
        size = int(o["top"] or spec.quotas[0])
        current = _select(s1, valid, size)
        for t in range(len(logits) - 1):
            s, nxt = logits[t], logits[t + 1]
            bce = mean_on(F.binary_cross_entropy_with_logits(nxt, y, reduction="none"), current, size)
            mse = mean_on((s - nxt.detach()) ** 2, current, size)
            out[self.stage_key("bce", t + 1)] = component(bce)
            out[self.stage_key("mse", t)] = component(mse)
            total = total + bce + o["mse_weight"] * mse
            split = int(o["splits"][t])
            top = _select(nxt, current & valid, split)
            if o["pair_weight"]:
                rest = current & ~top & valid
                top_v = top & valid
                mean_top = (s * top_v).sum(-1) / top_v.sum(-1).clamp(min=1)
                mean_rest = (s * rest).sum(-1) / rest.sum(-1).clamp(min=1)
                pair = -F.logsigmoid(mean_top - mean_rest).mean()
                out[self.stage_key("pair", t)] = component(pair)
                total = total + o["pair_weight"] * pair
            current, size = top, split
        out["loss"] = total
        return out
