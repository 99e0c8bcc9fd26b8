"""Evaluation metrics, per request and vectorised (docs/methods.md §7, API of §0.1).

Each function takes ``[R, N]`` numpy arrays or torch tensors (any device) and returns a numpy
array ``[R]`` of per-request values; callers average.  Corrections of §7.7 for padded slots are
applied: invalid slots are excluded from every ranking and selection (score -inf) and from the
ground truth (gain 0).  With all slots valid they are no-ops.

Ties: pass ``perm`` (a permutation of the N columns, e.g. the evaluator's seeded per-batch
permutation) and they are resolved by permuted position through a stable descending sort
(§7.6).  On tie-free scores every metric is permutation-invariant.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

_CHUNK = 1024  # requests per block in the O(N^2) Kendall computation (int8 [R, N, N])


def _np(x, dtype=None) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    x = np.asarray(x)
    return x.astype(dtype, copy=False) if dtype is not None else x


def _prepare(scores, labels, mask, perm=None):
    s = _np(scores, np.float64)
    lab = _np(labels, np.float64)
    m = _np(mask).astype(bool, copy=False)
    if not (s.shape == lab.shape == m.shape) or s.ndim != 2:
        raise ValueError(f"scores, labels and mask must share one [R, N] shape, got "
                         f"{s.shape}, {lab.shape}, {m.shape}")
    if perm is not None:
        perm = np.asarray(perm)
        s, lab, m = s[:, perm], lab[:, perm], m[:, perm]
    return s, lab, m


def _desc_order(x: np.ndarray) -> np.ndarray:
    """Stable descending argsort along the last axis (ties keep column order)."""
    return np.argsort(-x, axis=-1, kind="stable")


def _top_set(x: np.ndarray, k: int) -> np.ndarray:
    """[R, N] bool: the k largest entries of each row (stable tie-break)."""
    sel = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(sel, _desc_order(x)[:, :k], True, axis=1)
    return sel


def _ground_truth(lab: np.ndarray, m: np.ndarray, k: int) -> np.ndarray:
    """The k largest labels among valid slots (ℓ·mask with invalid slots excluded)."""
    return _top_set(np.where(m, lab, -np.inf), k) & m


def recall_at_k(scores, labels, mask, k: int = 10, *, m: int, perm=None) -> np.ndarray:
    """|top-k labels ∩ top-m scores| / k per request (methods.md §7.2)."""
    s, lab, msk = _prepare(scores, labels, mask, perm)
    gt = _ground_truth(lab, msk, k)
    sel = _top_set(np.where(msk, s, -np.inf), m)
    return (gt & sel).sum(axis=1) / k


def ndcg_at_k(scores, labels, mask, k: int = 10, *, perm=None) -> np.ndarray:
    """Tie-averaged NDCG@k with linear gains ℓ·mask and log2 discount (sklearn semantics, §7.3)."""
    s, lab, msk = _prepare(scores, labels, mask, perm)
    gains = np.where(msk, lab, 0.0)
    x = np.where(msk, s, -np.inf)
    R, N = x.shape
    order = _desc_order(x)
    xs = np.take_along_axis(x, order, axis=1)
    gs = np.take_along_axis(gains, order, axis=1)
    # tie classes of equal score: start/end (exclusive) of each position's class
    new = np.ones((R, N), dtype=bool)
    new[:, 1:] = xs[:, 1:] != xs[:, :-1]
    idx = np.broadcast_to(np.arange(N), (R, N))
    start = np.maximum.accumulate(np.where(new, idx, 0), axis=1)
    last = np.ones((R, N), dtype=bool)
    last[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(last, idx + 1, N)[:, ::-1], axis=1)[:, ::-1]
    csum = np.zeros((R, N + 1))
    csum[:, 1:] = np.cumsum(gs, axis=1)
    mean_gain = (np.take_along_axis(csum, end, 1) - np.take_along_axis(csum, start, 1)) / (end - start)
    disc = np.zeros(N)
    kk = min(k, N)
    disc[:kk] = 1.0 / np.log2(np.arange(2, kk + 2))
    dcg = mean_gain @ disc
    idcg = -np.sort(-gains, axis=1) @ disc
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)


def kendall_tau(scores, labels, mask) -> np.ndarray:
    """Kendall's τ-b (tie-corrected, as scipy) between scores and labels over valid slots.

    NaN where undefined (fewer than two valid slots, or constant scores or labels).
    """
    s, lab, msk = _prepare(scores, labels, mask)
    from .kernels import kendall_tau_rows, native_library

    lib = native_library()
    if lib is not None:
        return kendall_tau_rows(lib, s, lab, msk)
    raw = _np(scores)
    if raw.dtype == np.float32:            # same order, half the bytes to compare
        s = raw
    small = lab.astype(np.int8)
    if np.array_equal(small, lab):          # integer grades (always, for RecFlow's groups)
        lab = small
    out = np.empty(s.shape[0])
    for a in range(0, s.shape[0], _CHUNK):
        sl = slice(a, a + _CHUNK)
        out[sl] = _kendall_block(s[sl], lab[sl], msk[sl])
    return out


def _signs(x: np.ndarray) -> np.ndarray:
    """[R, N] -> int8 [R, N, N]: sign(x_i - x_j) (0 for ties; NaN compares as a tie)."""
    xi, xj = x[:, :, None], x[:, None, :]
    return (xi > xj).view(np.int8) - (xi < xj).view(np.int8)


def _kendall_block(s: np.ndarray, lab: np.ndarray, m: np.ndarray) -> np.ndarray:
    """τ-b of each row.  sign(ds)·sign(dl) and the tie indicators are symmetric in (i, j), so
    the sums over pairs i < j are half the sums over all ordered pairs of valid slots (the
    diagonal, always a tie, taken out): int8 signs and integer counts, exact."""
    ds, dl = _signs(s), _signs(lab)
    pair = m[:, :, None] & m[:, None, :]                             # [R, N, N] both valid
    nv = m.sum(1).astype(np.int64)
    S = ((ds * dl) * pair).sum((1, 2), dtype=np.int64) // 2
    n0 = nv * (nv - 1) // 2
    tie_s = (((ds == 0) & pair).sum((1, 2), dtype=np.int64) - nv) // 2
    tie_l = (((dl == 0) & pair).sum((1, 2), dtype=np.int64) - nv) // 2
    denom = np.sqrt(((n0 - tie_s) * (n0 - tie_l)).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(denom > 0, S / np.where(denom > 0, denom, 1.0), np.nan)
    out[np.isnan(np.where(m, s, 0.0)).any(1)] = np.nan               # a NaN score: undefined
    return out


def cascade_survivors(stage_scores: Sequence, mask, quotas: Sequence[int], *,
                      perm=None) -> list[np.ndarray]:
    """The slots alive after each stage: list of T bool [R, N] (columns in ``perm`` order when
    given).  Stage t keeps its top ``quotas[t]`` among the survivors of stage t-1 (§7.5)."""
    if len(stage_scores) != len(quotas):
        raise ValueError(f"need one quota per stage, got {len(stage_scores)} stages and "
                         f"{len(quotas)} quotas")
    m = _np(mask).astype(bool, copy=False)
    if perm is not None:
        m = m[:, np.asarray(perm)]
    alive, out = m.copy(), []
    for sc, q in zip(stage_scores, quotas):
        s = _np(sc, np.float64)
        if s.shape != m.shape:
            raise ValueError(f"stage scores of shape {s.shape} do not match the mask's {m.shape}")
        if perm is not None:
            s = s[:, np.asarray(perm)]
        alive = _top_set(np.where(alive, s, -np.inf), q) & alive
        out.append(alive)
    return out


def cascade_recall(stage_scores: Sequence, labels, mask, quotas: Sequence[int], k: int = 10,
                   *, perm=None) -> np.ndarray:
    """Joint recall of the cascade (methods.md §7.5): stage t keeps its top ``quotas[t]`` among the
    survivors of stage t-1; recall = |survivors of the last stage ∩ top-k labels| / k."""
    if len(stage_scores) != len(quotas):
        raise ValueError(f"need one quota per stage, got {len(stage_scores)} stages and "
                         f"{len(quotas)} quotas")
    return survivor_recall(cascade_survivors(stage_scores, mask, quotas, perm=perm)[-1], labels,
                           mask, k, perm=perm)


def survivor_recall(alive, labels, mask, k: int = 10, *, perm=None) -> np.ndarray:
    """|alive ∩ top-k labels| / k per request; ``alive`` [R, N] bool in ``perm``'s column order
    (the last stage's ``cascade_survivors``: the joint recall)."""
    _, lab, msk = _prepare(alive, labels, mask, perm)
    return (_ground_truth(lab, msk, k) & np.asarray(alive, dtype=bool)).sum(axis=1) / k


def group_counts(survivors: Sequence[np.ndarray], mask, group_size: int) -> np.ndarray:
    """How many of each logged group's slots are alive after each stage: int64 [T + 1, G] summed
    over requests (row 0: the valid slots before the first stage).  Slots are grouped in
    ``group_size`` blocks in the spec's group order, as the reader lays them out; the survivors'
    columns must be in that order (``cascade_survivors`` without ``perm``)."""
    m = _np(mask).astype(bool, copy=False)
    R, N = m.shape
    if N % group_size:
        raise ValueError(f"{N} slots are not whole groups of {group_size}")
    rows = [m] + list(survivors)
    return np.stack([a.reshape(R, N // group_size, group_size).sum(axis=(0, 2)) for a in rows])
