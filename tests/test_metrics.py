"""Metrics: methods.md §11 values and brute-force references (with ties and padded slots)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deep_components import metrics as M
from deep_components.specs import THREE_STAGE, TWO_STAGE

from deep_components.selfcheck import selfcheck_inputs

from deep_components.selfcheck_reference import JOINT, METRICS as EXPECTED  # noqa: E402  (methods.md §11)

SPECS = {"two": TWO_STAGE, "three": THREE_STAGE}


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}")
def test_selfcheck_values(key):
    spec = SPECS[key[0]]
    logits, labels, mask = selfcheck_inputs(spec)
    s = logits[key[1]].detach()
    nd, rec, tau = EXPECTED[key]
    q = spec.stages[key[1]].quota
    assert M.ndcg_at_k(s, labels, mask).mean() == pytest.approx(nd, abs=1e-6)
    assert M.recall_at_k(s, labels, mask, m=q).mean() == pytest.approx(rec, abs=1e-12)
    assert M.kendall_tau(s, labels, mask).mean() == pytest.approx(tau, abs=1e-6)
    if key[1] == 0:
        joint = M.cascade_recall([x.detach() for x in logits], labels, mask, spec.quotas)
        assert joint.mean() == pytest.approx(JOINT[key[0]], abs=1e-12)


# ------------------------------------------------------------------- brute-force references

def _order(scores, valid):
    """Descending, ties by column position, invalid slots last."""
    idx = [i for i in range(len(scores)) if valid[i]]
    rest = [i for i in range(len(scores)) if not valid[i]]
    return sorted(idx, key=lambda i: (-scores[i], i)) + rest


def _gt(labels, valid, k):
    return set(sorted([i for i in range(len(labels)) if valid[i]], key=lambda i: (-labels[i], i))[:k])


def bf_recall(s, lab, valid, k, m):
    return len(_gt(lab, valid, k) & set(_order(s, valid)[:m])) / k


def bf_ndcg(s, lab, valid, k):
    gains = [lab[i] if valid[i] else 0.0 for i in range(len(s))]
    x = [s[i] if valid[i] else -math.inf for i in range(len(s))]
    disc = [1 / math.log2(p + 2) if p < k else 0.0 for p in range(len(s))]
    dcg, pos = 0.0, 0
    for v in sorted(set(x), reverse=True):
        cls = [i for i in range(len(x)) if x[i] == v]
        mean = sum(gains[i] for i in cls) / len(cls)
        dcg += mean * sum(disc[pos:pos + len(cls)])
        pos += len(cls)
    idcg = sum(g * d for g, d in zip(sorted(gains, reverse=True), disc))
    return dcg / idcg if idcg > 0 else 0.0


def bf_kendall(s, lab, valid):
    idx = [i for i in range(len(s)) if valid[i]]
    S = n0 = ts = tl = 0
    for a in range(len(idx)):
        for b in range(a + 1, len(idx)):
            i, j = idx[a], idx[b]
            ds, dl = np.sign(s[i] - s[j]), np.sign(lab[i] - lab[j])
            S += ds * dl
            n0 += 1
            ts += ds == 0
            tl += dl == 0
    den = math.sqrt((n0 - ts) * (n0 - tl))
    return S / den if den > 0 else math.nan


def bf_cascade(stage_scores, lab, valid, quotas, k):
    alive = [i for i in range(len(lab)) if valid[i]]
    for s, q in zip(stage_scores, quotas):
        alive = sorted(alive, key=lambda i: (-s[i], i))[:q]
    return len(_gt(lab, valid, k) & set(alive)) / k


def _random_case(seed, R=40, N=20):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 6, size=(R, N)).astype(float)        # many ties
    s[: R // 2] += rng.normal(size=(R // 2, N))               # and some tie-free rows
    lab = rng.integers(0, 5, size=(R, N)).astype(float)
    mask = rng.random((R, N)) > 0.2
    mask[0] = True
    mask[1, 2:] = False                                       # almost empty request
    return s, lab, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force(seed):
    s, lab, mask = _random_case(seed)
    s2 = s[:, ::-1].copy()
    for r in range(s.shape[0]):
        assert M.recall_at_k(s[r:r + 1], lab[r:r + 1], mask[r:r + 1], 5, m=8)[0] == \
            pytest.approx(bf_recall(s[r], lab[r], mask[r], 5, 8))
        assert M.ndcg_at_k(s[r:r + 1], lab[r:r + 1], mask[r:r + 1], 5)[0] == \
            pytest.approx(bf_ndcg(s[r], lab[r], mask[r], 5))
        kt = M.kendall_tau(s[r:r + 1], lab[r:r + 1], mask[r:r + 1])[0]
        bf = bf_kendall(s[r], lab[r], mask[r])
        assert (math.isnan(kt) and math.isnan(bf)) or kt == pytest.approx(bf)
        assert M.cascade_recall([s[r:r + 1], s2[r:r + 1]], lab[r:r + 1], mask[r:r + 1], (12, 6), 5)[0] \
            == pytest.approx(bf_cascade([s[r], s2[r]], lab[r], mask[r], (12, 6), 5))
    # vectorised over requests = row by row
    v = M.ndcg_at_k(s, lab, mask, 5)
    assert np.allclose(v, [bf_ndcg(s[r], lab[r], mask[r], 5) for r in range(len(s))])


def test_permutation_breaks_ties_by_permuted_position():
    s = np.zeros((1, 4))                         # all tied
    lab = np.array([[3.0, 0, 0, 0]])
    mask = np.ones((1, 4), bool)
    assert M.recall_at_k(s, lab, mask, 1, m=1)[0] == 1.0            # slot 0 first
    assert M.recall_at_k(s, lab, mask, 1, m=1, perm=[2, 0, 1, 3])[0] == 0.0
    assert M.recall_at_k(s, lab, mask, 1, m=2, perm=[2, 0, 1, 3])[0] == 1.0
    # tie-free scores and labels: every metric is permutation invariant
    rng = np.random.default_rng(0)
    s, mask = rng.normal(size=(8, 10)), np.ones((8, 10), bool)
    lab = np.argsort(rng.random((8, 10)), axis=1)           # distinct labels: no ties anywhere
    p = rng.permutation(10)
    assert np.array_equal(M.recall_at_k(s, lab, mask, 3, m=5), M.recall_at_k(s, lab, mask, 3, m=5, perm=p))
    assert np.allclose(M.ndcg_at_k(s, lab, mask, 3), M.ndcg_at_k(s, lab, mask, 3, perm=p))


def test_padded_slots_never_selected_nor_ground_truth():
    s = np.array([[9.0, 1, 2, 3]])
    lab = np.array([[30.0, 5, 6, 7]])
    mask = np.array([[False, True, True, True]])   # the highest-scored, top-label slot is padding
    assert M.recall_at_k(s, lab, mask, 2, m=2)[0] == 1.0             # GT = slots 3, 2
    assert M.ndcg_at_k(s, lab, mask, 2)[0] == pytest.approx(1.0)


def test_torch_inputs_and_undefined_kendall():
    s = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    lab = torch.tensor([[1, 1, 1]])
    mask = torch.tensor([[1, 1, 1]])
    assert math.isnan(M.kendall_tau(s, lab, mask)[0])
    assert M.recall_at_k(s.float(), torch.tensor([[1, 2, 3]]), mask.bool(), 1, m=1)[0] == 1.0
    with pytest.raises(ValueError, match="one quota per stage"):
        M.cascade_recall([s, s], lab, mask, (2,))


def test_cascade_survivors_and_group_counts_by_hand():
    # 2 groups of 3 slots; stage 1 keeps 4 of the valid slots, stage 2 keeps 2 of those
    s1 = np.array([[6.0, 1, 5, 4, 3, 2], [1.0, 2, 3, 4, 5, 6]])
    s2 = np.array([[1.0, 9, 2, 3, 8, 7], [6.0, 5, 4, 3, 2, 1]])
    mask = np.array([[True] * 6, [True, True, True, True, True, False]])   # one padded slot
    a1, a2 = M.cascade_survivors([s1, s2], mask, (4, 2))
    assert a1.tolist() == [[1, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 0]]      # padding never survives
    assert a2.tolist() == [[0, 0, 0, 1, 1, 0], [0, 1, 1, 0, 0, 0]]      # row 0: slot 1 (9) cut by stage 1
    counts = M.group_counts([a1, a2], mask, 3)
    assert counts.tolist() == [[6, 5], [4, 4], [2, 2]]                  # before, after 1, after 2
    lab = np.array([[30.0, 29, 28, 7, 7, 7]] * 2)
    assert M.survivor_recall(a2, lab, mask, 3).tolist() == [0.0, 2 / 3]
    assert np.array_equal(M.survivor_recall(a2, lab, mask, 3), M.cascade_recall([s1, s2], lab, mask, (4, 2), 3))
    with pytest.raises(ValueError, match="not whole groups"):
        M.group_counts([a1], mask, 4)


@pytest.mark.parametrize("seed", [0, 1])
def test_group_flow_of_a_scored_day_matches_its_joint_recall(seed):
    """Ties (rounded scores) and the evaluator's permutations: the positive group's survival after
    the last stage is the joint recall when every request has a full positive group, the shares sum
    to one, and survival only falls along the cascade."""
    from deep_components.scoring import cascade_metrics

    rng = np.random.default_rng(seed)
    spec = THREE_STAGE
    R, N = 700, spec.num_slots
    scores = [np.round(rng.normal(size=(R, N)), 1).astype(np.float32) for _ in spec.stages]
    lab = np.repeat(np.array([30 - np.arange(10)] + [[30 - spec.negative_index[g]] * 10
                                                      for g in spec.groups[1:]]).reshape(1, N), R, 0)
    mask = np.ones((R, N), bool)
    mask[:50, -4:] = False                           # a short last (negative) group
    m = cascade_metrics(scores, lab.astype(np.int16), mask, spec, batch_size=256)
    flows = [m["stages"][st.name]["groups"] for st in spec.stages]
    assert flows[-1][spec.positive_group]["survival"] == pytest.approx(m["joint_recall"], abs=1e-12)
    for st, flow in zip(spec.stages, flows):
        assert sum(g["share"] for g in flow.values()) == pytest.approx(1.0)
        n_alive = R * st.quota
        assert flow[spec.groups[-1]]["survival"] * (R * 10 - 200) == pytest.approx(
            flow[spec.groups[-1]]["share"] * n_alive)
    for g in spec.groups:
        surv = [f[g]["survival"] for f in flows]
        assert all(a >= b for a, b in zip(surv, surv[1:]))
