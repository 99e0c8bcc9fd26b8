"""The paper's experiment switches: each changes what it claims to and nothing else."""
from __future__ import annotations


import pytest
import torch

from deep_components.specs import THREE_STAGE, TWO_STAGE
from deep_components.config import RunConfig
from deep_components.loss import build_loss

from deep_components.selfcheck import selfcheck_inputs


def _run(name, spec=TWO_STAGE, **opts):
    logits, labels, mask = selfcheck_inputs(spec)
    loss = build_loss(name, spec, **opts)
    out = loss(logits, labels, mask)
    grads = torch.autograd.grad(out["loss"], logits)
    return out, grads, loss


def _changed(a: dict, b: dict) -> set[str]:
    """The components whose value differs (the two runs must have the same components)."""
    assert set(a) == set(b), (set(a) ^ set(b))
    return {k for k in a if k != "loss" and a[k] != b[k]}


#: the components a sort operator or a temperature can change (the loss weights cannot)
SORTED = {"lcron": {"e2e", "single/retrieval", "single/prerank"},
          "arf": {"global/retrieval", "global/prerank", "relax/retrieval", "relax/prerank"},
          "arf_v2": {"global/retrieval", "global/prerank", "relax/retrieval", "relax/prerank"}}


@pytest.mark.parametrize("name", ["lcron", "arf", "arf_v2"])
def test_softsort_changes_gradients(name):
    a, ga, _ = _run(name)
    b, gb, _ = _run(name, sort="soft")
    assert a["loss"].item() != b["loss"].item()
    assert not torch.allclose(ga[0], gb[0])
    changed = _changed(a, b)                          # the sorted terms, and nothing else
    assert changed and changed <= SORTED[name] and not any(k.startswith("weight/") for k in changed)
    with pytest.raises(ValueError, match="unknown sort operator"):
        build_loss(name, TWO_STAGE, sort="bubble")


@pytest.mark.parametrize("spec", [TWO_STAGE, THREE_STAGE], ids=["two", "three"])
def test_lcron_terms(spec):
    both, _, _ = _run("lcron", spec)
    e2e, _, loss_e2e = _run("lcron", spec, terms="e2e")
    single, _, _ = _run("lcron", spec, terms="single")
    assert set(e2e) == {"loss", "e2e"} and not any(k.startswith("single/") for k in e2e)
    assert "e2e" not in single and all(f"single/{n}" in single for n in spec.stage_names)
    assert e2e["loss"].item() == pytest.approx(both["e2e"], rel=1e-6)
    # weights at 1.0: single-only loss = Σ 0.5 L_single (ln 1 = 0)
    exp = sum(0.5 * single[f"single/{n}"] for n in spec.stage_names)
    assert single["loss"].item() == pytest.approx(exp, rel=1e-6)
    assert both["loss"].item() == pytest.approx(exp + both["e2e"], rel=1e-6)
    assert len(list(loss_e2e.parameters())) == 0
    with pytest.raises(ValueError, match="terms"):
        build_loss("lcron", spec, terms="all")


def test_lcron_e2e_cutoff_quota():
    gt, _, _ = _run("lcron")
    quota, _, loss = _run("lcron", e2e_k="quota")
    assert loss.e2e_k == [30, 20]
    assert _changed(gt, quota) == {"e2e"}                            # L_single keeps k = 10


def test_lcron_fixed_weights():
    learned, _, _ = _run("lcron")
    fixed, _, loss = _run("lcron", fixed_weights=0.5)
    assert len(list(loss.parameters())) == 0
    exp = 0.5 * (learned["single/retrieval"] + learned["single/prerank"]) + learned["e2e"]
    assert fixed["loss"].item() == pytest.approx(exp, rel=1e-6)
    per_stage, _, _ = _run("lcron", fixed_weights=[1.0, 0.0])
    assert per_stage["loss"].item() == pytest.approx(learned["single/retrieval"] + learned["e2e"],
                                                     rel=1e-6)


@pytest.mark.parametrize("name,default", [("lcron", 50.0), ("arf", 200.0), ("arf_v2", 200.0)])
def test_tau_switch(name, default):
    a, _, loss = _run(name)
    assert loss.opts["tau"] == default
    b, _, _ = _run(name, tau=1.0)
    assert a["loss"].item() != b["loss"].item()
    changed = _changed(a, b)
    assert changed and changed <= SORTED[name] and not any(k.startswith("weight/") for k in changed)
    # --tau on the command line maps onto the loss option, 0 keeps the default
    assert RunConfig(method=name, tau=20.0).loss_kwargs() == {"tau": 20.0}
    assert RunConfig(method=name, tau=0.0).loss_kwargs() == {}


def test_constants_are_overridable():
    base, _, _ = _run("icc")
    other, _, _ = _run("icc", cutoffs=[20, 20])
    assert base["loss"].item() != other["loss"].item() and _changed(base, other) == {"icc"}
    lam0, _, _ = _run("fs_lambdaloss")
    lam, _, _ = _run("fs_lambdaloss", mu=0.0)
    assert _changed(lam0, lam) == {"lambda/retrieval", "lambda/prerank"}
    assert lam["loss"].item() == pytest.approx(lam["lambda/retrieval"] + lam["lambda/prerank"],
                                               rel=1e-6)
    full, _, _ = _run("rankflow", THREE_STAGE)
    three, _, _ = _run("rankflow", THREE_STAGE, pair_weight=0.0)
    pairs = {k for k in full if k.startswith("pair/")}
    assert pairs and set(full) - set(three) == pairs                  # only the pair terms go
    assert all(three[k] == full[k] for k in three if k != "loss")    # the others are untouched
    assert three["loss"].item() == pytest.approx(full["loss"].item() - sum(full[k] for k in pairs),
                                                 rel=1e-6)
