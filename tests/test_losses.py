"""Losses: methods.md §11 self-check values, gradient checks, mask modes (§6.2), registry."""
from __future__ import annotations

import math

import pytest
import torch

from deep_components.specs import THREE_STAGE, TWO_STAGE
from deep_components.loss import LOSSES, build_loss
from deep_components.sorting import label_permutation_matrix, neural_sort, soft_sort

from deep_components.selfcheck import selfcheck_inputs
from deep_components.specs import FOUR_STAGE, get_spec
from deep_components.loss import METHODS as REGISTERED, method_order

SPECS = {"two": TWO_STAGE, "three": THREE_STAGE}

from deep_components.selfcheck_reference import LOSSES as EXPECTED  # noqa: E402  (methods.md §11)

METHODS = sorted({name for _, name in EXPECTED})
#: the recommended component names (methods.md §4) of each method, per setting
COMPONENTS = {
    ("two", "rankflow"): {"bce/retrieval", "bce/prerank", "mse/retrieval"},
    ("three", "rankflow"): {"bce/retrieval", "bce/prerank", "mse/retrieval", "pair/retrieval",
                            "bce/rank", "mse/prerank", "pair/prerank"},
    ("two", "icc"): {"icc"},
    ("two", "fs_ranknet"): {"ranknet/retrieval", "ranknet/prerank"},
    ("three", "fs_lambdaloss"): {"lambda/retrieval", "lambda/prerank", "lambda/rank"},
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
        assert _close(s.grad[0, 0].item(), g00, rel=1e-5, abs_=1e-9)
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
    if key in COMPONENTS:
        assert set(out) - {"loss"} == COMPONENTS[key]


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


#: ICC's 1e-3 logistic is numerically a step: check it at a softer temperature.  RankFlow's
#: distillation teacher is detached by design: its MSE is checked by hand below.
GRADCHECK_OPTIONS = {"icc": {"sigma_ind": 0.2}, "rankflow": {"mse_weight": 0.0}}


@pytest.mark.parametrize("setting", ["two", "three"])
@pytest.mark.parametrize("name", METHODS)
def test_loss_gradcheck(setting, name, monkeypatch):
    """Analytical gradients equal finite differences (float64, with padded slots).

    Stop-gradient quantities are held at their values at the checked point: LCRON's and
    ARF-v2's detached column sums (§3.5); FS-LambdaLoss's detached weights and every top-k
    selection are locally constant anyway."""
    import deep_components.loss.arf_v2 as arf_v2_mod
    import deep_components.loss.lcron as lcron_mod
    from deep_components.loss.base import top_tail

    spec = SPECS[setting]
    logits, labels, mask = selfcheck_inputs(spec, torch.float64)
    logits = [s.detach().clone().requires_grad_() for s in logits]
    mask[1, 25] = False
    labels[1, 25] = 0.0
    loss = build_loss(name, spec, **GRADCHECK_OPTIONS.get(name, {})).double()
    frozen: list[torch.Tensor] = []
    calls = {"n": 0, "record": True}

    def column_normalised(P, k, eps):
        top, tail = top_tail(P, k)
        if calls["record"]:
            frozen.append(P.sum(1).detach())
        denom = frozen[calls["n"] % len(frozen)] + eps
        calls["n"] += 1
        return top / denom, tail / denom

    for mod in (lcron_mod, arf_v2_mod):
        monkeypatch.setattr(mod, "column_normalised", column_normalised)
    loss(logits, labels, mask)                      # record the detached sums at the point
    calls["record"] = False
    assert torch.autograd.gradcheck(lambda *s: loss(list(s), labels, mask)["loss"], tuple(logits),
                                    eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_rankflow_distillation_teaches_the_earlier_stage_only():
    spec = TWO_STAGE
    logits, labels, mask = selfcheck_inputs(spec, torch.float64)
    full = build_loss("rankflow", spec)(logits, labels, mask)
    g_full = torch.autograd.grad(full["loss"], logits)
    s1, s2 = logits[0].detach(), logits[1].detach()
    top30 = torch.zeros_like(s1, dtype=torch.bool).scatter(-1, s1.topk(30).indices, True)
    expected = 2 * (s1 - s2) * top30 / (2 * 30)       # d/ds1 of mean over B x 30 of (s1 - s2)²
    inputs = [s.detach().requires_grad_() for s in logits]
    g_no = torch.autograd.grad(build_loss("rankflow", spec, mse_weight=0.0)(inputs, labels, mask)["loss"], inputs)
    assert torch.allclose(g_full[0] - g_no[0], expected, atol=1e-12)
    assert torch.allclose(g_full[1], g_no[1], atol=1e-12)   # the teacher gets nothing from MSE
    assert full["mse/retrieval"] == pytest.approx(float(((s1 - s2) ** 2 * top30).sum() / 60))


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


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("setting", ["two", "three"])
def test_modes_agree_when_all_valid(name, setting):
    spec = SPECS[setting]
    outs = []
    for mode in ("true", "reference"):
        logits, labels, mask = selfcheck_inputs(spec)
        out = build_loss(name, spec, mask_mode=mode)(logits, labels, mask)
        out["loss"].backward()
        outs.append((out["loss"].item(), [s.grad.clone() for s in logits]))
    assert outs[0][0] == outs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("setting", ["two", "three"])
def test_true_mode_ignores_padded_labels(name, setting):
    """§6.2.2: everything derived from labels uses ℓ·m, so a padded slot's stored label (the
    reference gives a padded positive slot label 30) cannot matter."""
    spec = SPECS[setting]
    logits, labels, mask = _padded_inputs(spec)
    relabel = labels.clone()
    relabel[0, 5] = 30.0
    loss = build_loss(name, spec, mask_mode="true")
    assert loss(logits, labels, mask)["loss"].item() == loss(logits, relabel, mask)["loss"].item()


@pytest.mark.parametrize("name", ["bce", "rankflow", "fs_ranknet", "fs_lambdaloss"])
@pytest.mark.parametrize("setting", ["two", "three"])
def test_true_mode_pointwise_and_pairwise_ignore_padded_slots(name, setting):
    """§6.2.4: terms involving a padded slot weigh 0 and padded slots are never selected, so its
    score changes nothing and receives no gradient."""
    spec = SPECS[setting]
    logits, labels, mask = _padded_inputs(spec)
    loss = build_loss(name, spec, mask_mode="true")
    a = loss(logits, labels, mask)
    grads = torch.autograd.grad(a["loss"], logits)
    moved = [s.detach().clone() for s in logits]
    for s in moved:
        s[0, 5] += 7.0                                  # the padded positive slot
        s[1, 19] -= 3.0                                 # the padded negative slot
    moved = [s.requires_grad_() for s in moved]
    b = loss(moved, labels, mask)
    assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-6)
    for g in grads:
        assert g[0, 5] == 0 and g[1, 19] == 0


def test_fs_ranknet_empty_group_is_skipped_in_true_mode():
    spec = TWO_STAGE
    logits, labels, mask = selfcheck_inputs(spec)
    mask[:, 10:20] = False                              # no valid rank_neg anchor in the batch
    labels = labels * mask
    ref = build_loss("fs_ranknet", spec, mask_mode="reference")(logits, labels, mask)
    true = build_loss("fs_ranknet", spec, mask_mode="true")(logits, labels, mask)
    assert math.isnan(ref["loss"].item())               # the reference divides 0 by 0
    assert math.isfinite(true["loss"].item()) and true["loss"].item() > 0


def test_registry_errors():
    assert set(METHODS) == set(LOSSES) == {"bce", "icc", "rankflow", "fs_ranknet", "fs_lambdaloss",
                                           "arf", "arf_v2", "lcron"}
    with pytest.raises(ValueError, match=r"unknown loss 'lcorn' \(did you mean 'lcron'\?\); valid: "):
        build_loss("lcorn", TWO_STAGE)
    with pytest.raises(ValueError, match=r"no option 'taus' \(did you mean 'tau'\?\)"):
        build_loss("lcron", TWO_STAGE, taus=3)
    with pytest.raises(ValueError, match="mask_mode"):
        build_loss("bce", TWO_STAGE, mask_mode="prefix")
    logits, labels, mask = selfcheck_inputs(TWO_STAGE)
    with pytest.raises(ValueError, match="expected 2 logit tensors"):
        build_loss("bce", TWO_STAGE)(logits[:1], labels, mask)


@pytest.mark.parametrize("setting", ["two", "three"])
def test_selfcheck_command_prints_the_documented_values(setting, capsys):
    """docs/methods.md points readers at this command for the self-check values."""
    from deep_components.selfcheck import main

    spec = SPECS[setting]
    assert main(["--setting", spec.name]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in METHODS:
        line = next(x for x in lines if x.startswith(f"{name}: loss "))
        assert _close(float(line.split()[2]), EXPECTED[(setting, name)][0], rel=1e-6), line
        g_norm = float(line.split("|g| ")[1].split(",")[0])
        assert _close(g_norm, EXPECTED[(setting, name)][1][0][0], rel=1e-5), line


def test_registry_holds_the_papers_methods_in_table_order():
    assert method_order() == ["bce", "icc", "rankflow", "fs_ranknet", "fs_lambdaloss", "arf",
                              "arf_v2", "lcron"]
    assert [REGISTERED[m].display for m in method_order()] == [
        "BCE", "ICC", "RankFlow", "FS-RankNet", "FS-LambdaLoss", "ARF", "ARF-v2", "LCRON"]
    assert {m: REGISTERED[m].default_tau for m in REGISTERED if REGISTERED[m].default_tau} == {
        "arf": 200.0, "arf_v2": 200.0, "lcron": 50.0}
    assert {m: build_loss(m, get_spec("two_stage")).opts.get("tau") for m in ("arf", "lcron")} == {
        "arf": 200.0, "lcron": 50.0}


def test_a_new_method_is_one_class(monkeypatch):
    """Registered from outside the package: it builds, gets its display name and is ordered
    after the paper's methods."""
    from deep_components.loss import CascadeLoss, register, registry

    monkeypatch.setattr(registry, "LOSSES", dict(registry.LOSSES))
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))

    @register("listwise_demo", display="Listwise")
    class Demo(CascadeLoss):
        OPTIONS = {"tau": 3.0}

        def compute(self, logits, labels, mask):
            loss = sum(torch.logsumexp(s, -1).mean() for s in logits)
            return {"loss": loss}

    assert registry.method_order()[-1] == "listwise_demo"
    assert registry.METHODS["listwise_demo"].default_tau == 3.0
    loss = registry.build_loss("listwise_demo", FOUR_STAGE)
    out = loss([torch.zeros(2, 50)] * 4, torch.zeros(2, 50), torch.ones(2, 50, dtype=torch.bool))
    assert float(out["loss"]) == pytest.approx(4 * math.log(50))      # logsumexp of 50 zeros


def test_fs_ranknet_anchor_groups_keeps_the_first_groups_anchors_only():
    """anchor_groups=1: per stage only L_0, the ground truth against every later slot (by hand);
    every group but the last is the published loss; anything else is refused."""
    import torch.nn.functional as F

    spec = TWO_STAGE
    logits, labels, mask = selfcheck_inputs(spec)
    full = build_loss("fs_ranknet", spec)(logits, labels, mask)
    assert build_loss("fs_ranknet", spec, anchor_groups=3)(logits, labels, mask)["loss"] == full["loss"]
    one = build_loss("fs_ranknet", spec, anchor_groups=1)(logits, labels, mask)
    m = mask.double()
    for t, s in enumerate(logits):
        s = s.double()
        pair = F.softplus(s[:, 10:].unsqueeze(1) - s[:, :10].unsqueeze(2))      # [B, 10, 30]
        pair = pair * m[:, :10].unsqueeze(-1) * m[:, 10:].unsqueeze(1)
        want = (pair.sum() / (30 * m[:, :10].sum())).detach()
        got = one[f"ranknet/{spec.stages[t].name}"]
        assert float(got) == pytest.approx(float(want), rel=1e-6)
        assert float(got) < float(full[f"ranknet/{spec.stages[t].name}"])
    for bad in (0, 4, 1.5, True):
        with pytest.raises(ValueError, match="anchor_groups must be a whole number in \\[1, 3\\]"):
            build_loss("fs_ranknet", spec, anchor_groups=bad)
