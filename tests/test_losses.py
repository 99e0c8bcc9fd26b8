"""Losses: METHODS §11 self-check values, gradient checks, mask modes (§6.2), registry."""
from __future__ import annotations

import math

import pytest
import torch

from deep_components.cascade import THREE_STAGE, TWO_STAGE
from deep_components.loss import LOSSES, build_loss
from deep_components.sorting import label_permutation_matrix, neural_sort, soft_sort

from selfcheck_inputs import selfcheck_inputs

SPECS = {"two": TWO_STAGE, "three": THREE_STAGE}

# (loss, [(|g_t|, g_t[0,0]) per stage], [dL/dw_t] or None, {component: value})  -- METHODS §11
EXPECTED = {
    ("two", "bce"): (1.9249246, [(6.685802e-02, -4.083524e-03), (9.101927e-02, -5.152582e-03)],
                     None, {}),
    ("two", "lcron"): (1.5084666, [(5.447333e-02, -8.234977e-03), (5.640509e-02, -4.697532e-03)],
                       [0.3643119, 0.3583734],
                       {"e2e": 0.8698093, "single/retrieval": 0.6356881,
                        "single/prerank": 0.6416266}),
    ("three", "bce"): (2.8852341, [(5.730108e-02, -3.266819e-03), (6.488471e-02, -2.576291e-03),
                                   (9.606576e-02, -3.572538e-03)], None, {}),
    ("three", "lcron"): (4.8572917, [(9.944291e-02, -1.749372e-02), (9.778570e-02, -1.969155e-02),
                                     (9.550937e-02, -2.119623e-02)],
                         [-1.287171, -1.387451, -1.539276],
                         {"e2e": 1.2503424, "single/retrieval": 2.2871716,
                          "single/prerank": 2.3874516, "single/rank": 2.5392754}),
}


def _close(a, b, rel=2e-6, abs_=1e-8):
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}")
@pytest.mark.parametrize("mask_mode", ["true", "reference"])
def test_selfcheck_values(key, mask_mode):
    setting, name = key
    loss_v, grads, wgrads, comps = EXPECTED[key]
    spec = SPECS[setting]
    logits, labels, mask = selfcheck_inputs(spec)
    loss = build_loss(name, spec, mask_mode=mask_mode)
    out = loss(logits, labels, mask)
    out["loss"].backward()
    assert _close(out["loss"].item(), loss_v)
    for s, (norm, g00) in zip(logits, grads):
        assert _close(s.grad.norm().item(), norm, rel=1e-5)
        assert _close(s.grad[0, 0].item(), g00, rel=1e-5)
    if wgrads is None:
        assert len(list(loss.parameters())) == 0
    else:
        w = loss.weights.w
        assert w.shape == (spec.num_stages,) and torch.equal(w.detach(), torch.ones_like(w))
        for g, e in zip(w.grad.tolist(), wgrads):
            assert _close(g, e, rel=1e-5)
    for k, v in comps.items():
        assert _close(out[k], v, rel=1e-6)
    assert all(isinstance(v, float) for k, v in out.items() if k != "loss")


def test_bce_components_by_hand():
    spec = TWO_STAGE
    B, N = 1, 40
    s = [torch.zeros(B, N), torch.full((B, N), 2.0)]
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, 15] = False                              # one padded slot in prerank's 20
    out = build_loss("bce", spec)(s, torch.zeros(B, N), mask)
    assert _close(out["bce/retrieval"], 39 * math.log(2) / 40)  # 39 valid terms of ln 2, over 40
    sp = lambda x: math.log1p(math.exp(x))
    exp_pre = (10 * (sp(2.0) - 2.0) + 9 * sp(2.0)) / 20  # denominator still counts the padded slot
    assert _close(out["bce/prerank"], exp_pre)
    assert _close(out["loss"].item(), 39 * math.log(2) / 40 + exp_pre)


def test_neural_sort_properties_and_gradcheck():
    x = torch.tensor([[0.3, -1.2, 2.0, 0.7, 0.1]], dtype=torch.float64, requires_grad=True)
    P = neural_sort(x, 1e-3)
    assert torch.allclose(P.sum(-1), torch.ones(1, 5, dtype=torch.float64))
    hard = torch.zeros(5, 5, dtype=torch.float64)
    hard[torch.arange(5), torch.argsort(x.detach()[0], descending=True)] = 1
    assert torch.allclose(P[0], hard, atol=1e-6)     # tau -> 0: the hard permutation
    assert torch.autograd.gradcheck(lambda v: neural_sort(v, 0.7), (x,))
    assert torch.autograd.gradcheck(lambda v: soft_sort(v, 0.7), (x,))


def test_label_matrix_equals_neuralsort_at_small_tau():
    torch.manual_seed(0)
    lab = torch.randint(0, 6, (4, 12)).double()
    exact = label_permutation_matrix(lab)
    assert torch.allclose(exact, neural_sort(lab, 1e-4), atol=1e-12)
    assert torch.allclose(exact.sum(1), torch.ones(4, 12, dtype=torch.float64))


@pytest.mark.parametrize("setting", ["two", "three"])
@pytest.mark.parametrize("name", ["bce", "lcron"])
def test_loss_gradcheck(setting, name, monkeypatch):
    """Analytical gradients equal finite differences (float64).  LCRON's column sums are
    stop-gradient by design (§3.5), so they are held at their values at the checked point:
    the gradient must be the derivative of the loss with those quantities constant."""
    import deep_components.loss.lcron as lcron_mod
    from deep_components.loss.base import top_tail

    spec = SPECS[setting]
    logits, labels, mask = selfcheck_inputs(spec, torch.float64)
    logits = [s.detach().clone().requires_grad_() for s in logits]
    mask[1, 25] = False
    loss = build_loss(name, spec).double()
    frozen: list[torch.Tensor] = []
    calls = {"n": 0, "record": True}

    def column_normalised(P, k, eps):
        top, tail = top_tail(P, k)
        if calls["record"]:
            frozen.append(P.sum(1).detach())
        denom = frozen[calls["n"] % len(frozen)] + eps
        calls["n"] += 1
        return top / denom, tail / denom

    monkeypatch.setattr(lcron_mod, "column_normalised", column_normalised)
    loss(logits, labels, mask)                      # record the detached sums at the point
    calls["record"] = False
    assert torch.autograd.gradcheck(lambda *s: loss(list(s), labels, mask)["loss"], tuple(logits),
                                    eps=1e-6, atol=1e-6, rtol=1e-4)


def _padded_inputs(spec):
    logits, labels, mask = selfcheck_inputs(spec)
    mask[0, 5] = False           # a padded positive slot in the middle of group 0
    mask[1, 19] = False          # a padded negative slot at the tail of group 1
    labels = labels.clone()
    labels[~mask] = 0.0
    return logits, labels, mask


@pytest.mark.parametrize("setting", ["two", "three"])
def test_true_mask_mode_ignores_padded_slots(setting):
    """§6.2: true mode uses ℓ·m and the slot mask on columns, so a padded slot's label and its
    own column never enter; reference mode (count prefix) does depend on them."""
    spec = SPECS[setting]
    logits, labels, mask = _padded_inputs(spec)
    relabel = labels.clone()
    relabel[0, 5] = 30.0         # what the reference's loader would give a padded positive slot
    for mode, invariant in (("true", True), ("reference", False)):
        loss = build_loss("lcron", spec, mask_mode=mode)
        a = loss(logits, labels, mask)["loss"].item()
        b = loss(logits, relabel, mask)["loss"].item()
        assert (a == b) is invariant, mode


def test_true_mode_e2e_has_no_constant_for_masked_columns():
    """§6.2.3: the reference adds -ln(ε)/N per masked slot to L_e2e; true mode does not."""
    spec = TWO_STAGE
    logits, labels, mask = _padded_inputs(spec)
    # with only the last slot padded, the count prefix equals the true mask
    mask = torch.ones_like(mask)
    mask[:, -1] = False
    labels = labels.clone()
    labels[:, -1] = 0.0
    ref = build_loss("lcron", spec, mask_mode="reference")(logits, labels, mask)
    true = build_loss("lcron", spec, mask_mode="true")(logits, labels, mask)
    const = -math.log(1e-6) / spec.num_slots     # one masked slot per request, mean over B
    assert math.isclose(ref["e2e"] - true["e2e"], const, rel_tol=1e-5)
    for k in ("single/retrieval", "single/prerank"):
        assert math.isclose(ref[k], true[k], rel_tol=1e-6)


def test_modes_agree_when_all_valid():
    spec = THREE_STAGE
    outs = []
    for mode in ("true", "reference"):
        logits, labels, mask = selfcheck_inputs(spec)
        out = build_loss("lcron", spec, mask_mode=mode)(logits, labels, mask)
        out["loss"].backward()
        outs.append((out["loss"].item(), [s.grad.clone() for s in logits]))
    assert outs[0][0] == outs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]))


def test_registry_errors():
    assert {"bce", "lcron"} <= set(LOSSES)
    with pytest.raises(ValueError, match=r"unknown loss 'lcorn' \(did you mean 'lcron'\?\); valid: "):
        build_loss("lcorn", TWO_STAGE)
    with pytest.raises(ValueError, match=r"no option 'taus' \(did you mean 'tau'\?\)"):
        build_loss("lcron", TWO_STAGE, taus=3)
    with pytest.raises(ValueError, match="mask_mode"):
        build_loss("bce", TWO_STAGE, mask_mode="prefix")
    logits, labels, mask = selfcheck_inputs(TWO_STAGE)
    with pytest.raises(ValueError, match="expected 2 logit tensors"):
        build_loss("bce", TWO_STAGE)(logits[:1], labels, mask)
