"""Scoring a day with trained towers and its metrics (docs/methods.md §7): ``score_day``,
``cascade_metrics`` and ``evaluate`` (both).  Evaluating a run folder is deep_components.evaluation.

Scores every request of the day (no dropped batch), then computes per request: joint (cascade)
recall and, per stage, Recall@10@quota, NDCG@10 and Kendall τ; averages over all requests
(Kendall over requests where it is defined).  Beside them, per stage, where the logged groups go
in the cascade: the share of each group's slots the stage lets through, and the share of its
survivors each group makes up (``groups``).  Ties are broken as the reference does: a NumPy
legacy RNG seeded with 1024 draws one column permutation per batch of ``batch_size`` requests,
first for the joint pass, then for each stage from the last to the first (methods.md §7.1).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import metrics as M
from .spec import CascadeSpec
from .data import DayData
from .data.batches import TOWER_INPUTS, batch_to_device
from .models import forward_all

EVAL_SEED = 1024


@torch.no_grad()
def score_day(models: Sequence[nn.Module], day: DayData, device: torch.device,
              batch_size: int = 1024) -> list[np.ndarray]:
    """Scores of every stage for every request: list of T float32 arrays [R, N].

    Under torchrun, evaluation batch i is scored by rank i mod W and the scores are gathered on
    every rank; batches are the same as in one process, so the scores are bitwise identical."""
    from .distributed import context

    ctx = context()
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    R = day.num_requests
    starts = list(range(0, R, batch_size))[ctx.rank::ctx.world]
    mine = []
    arrays = {k: getattr(day, k) for k in TOWER_INPUTS}        # what the towers read
    for a in starts:
        b = batch_to_device({k: np.array(v[a:a + batch_size]) for k, v in arrays.items()}, device)
        mine.append((a, [s.float().cpu().numpy() for s in forward_all(models, b)]))
    for m, was_training in zip(models, modes):
        m.train(was_training)                        # back to the mode they came in
    out = [np.empty(day.item_mask.shape, dtype=np.float32) for _ in models]
    for part in ctx.gather_objects(mine):
        for a, scores in part:
            for t, sc in enumerate(scores):
                out[t][a:a + len(sc)] = sc
    return out


def cascade_metrics(scores: Sequence[np.ndarray], labels: np.ndarray, mask: np.ndarray,
                    spec: CascadeSpec, batch_size: int = 1024, seed: int = EVAL_SEED) -> dict:
    """Per-request metrics averaged over all requests; see module docstring."""
    R, N = labels.shape
    labels = np.asarray(labels, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    rs = np.random.RandomState(seed)
    blocks = [slice(a, min(a + batch_size, R)) for a in range(0, R, batch_size)]
    # the tie-breaking permutations are drawn in the reference's order (joint recall block by
    # block, then stage by stage from the last); the blocks are then computed in parallel
    joint_perms = [rs.permutation(N) for _ in blocks]
    stage_perms = {t: [rs.permutation(N) for _ in blocks] for t in reversed(range(spec.num_stages))}

    def joint_block(i: int) -> tuple[np.ndarray, np.ndarray]:
        sl, perm = blocks[i], joint_perms[i]
        alive = M.cascade_survivors([s[sl] for s in scores], mask[sl], spec.quotas, perm=perm)
        inverse = np.argsort(perm)                  # survivors back in slot (group) order
        return (M.survivor_recall(alive[-1], labels[sl], mask[sl], spec.gt_num, perm=perm),
                M.group_counts([a[:, inverse] for a in alive], mask[sl], spec.group_size))

    def stage_block(t: int, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sl, perm, st = blocks[i], stage_perms[t][i], spec.stages[t]
        s, lab, m = scores[t][sl], labels[sl], mask[sl]
        return (M.recall_at_k(s, lab, m, spec.gt_num, m=st.quota, perm=perm),
                M.ndcg_at_k(s, lab, m, spec.gt_num, perm=perm), M.kendall_tau(s, lab, m))

    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:  # numpy frees the GIL
        joint_parts = list(pool.map(joint_block, range(len(blocks))))
        per_stage = {t: list(pool.map(lambda i, t=t: stage_block(t, i), range(len(blocks))))
                     for t in stage_perms}
    stages = {}
    for t, parts in per_stage.items():
        st = spec.stages[t]
        rec, ndcg, tau = (np.concatenate([p[j] for p in parts]) if parts else np.empty(0)
                          for j in range(3))
        ok = ~np.isnan(tau)
        stages[st.name] = {"quota": st.quota, "recall": float(rec.mean()),
                           "ndcg": float(ndcg.mean()),
                           "kendall": float(tau[ok].mean()) if ok.any() else float("nan"),
                           "kendall_requests": int(ok.sum())}
    joint = np.concatenate([p[0] for p in joint_parts]) if blocks else np.empty(0)
    counts = (sum(p[1] for p in joint_parts) if blocks
              else np.zeros((spec.num_stages + 1, spec.num_groups), dtype=np.int64))
    ordered = {st.name: {**stages[st.name], "groups": _group_flow(counts, t, spec)}
               for t, st in enumerate(spec.stages)}
    return {"requests": int(R), "joint_recall": float(joint.mean()), "stages": ordered}


def _group_flow(counts: np.ndarray, t: int, spec: CascadeSpec) -> dict[str, dict[str, float]]:
    """Per logged group after stage t (``counts``: metrics.group_counts summed over the day):
    ``survival``, the share of the group's valid slots still alive in the cascade, and
    ``share``, the share of the stage's survivors that come from the group."""
    alive, total = counts[t + 1], counts[0]
    n_alive = int(alive.sum())
    return {g: {"survival": float(alive[i] / total[i]) if total[i] else float("nan"),
                "share": float(alive[i] / n_alive) if n_alive else float("nan")}
            for i, g in enumerate(spec.groups)}


def evaluate(models: Sequence[nn.Module], day: DayData, spec: CascadeSpec, device: torch.device,
             batch_size: int = 1024) -> dict:
    """Metrics of ``day`` (ids already mapped onto the towers' rows).  With a compact
    vocabulary, ``unknown_ids`` counts per field the ids that went to the unknown row."""
    scores = score_day(models, day, device, batch_size)
    out = cascade_metrics(scores, np.asarray(day.labels), np.asarray(day.item_mask), spec,
                          batch_size)
    if "unknown_ids" in day.stats:
        out["unknown_ids"] = dict(day.stats["unknown_ids"])
    return out
