"""The paper's experiment switches: each changes what it claims to and nothing else."""
from __future__ import annotations

import math

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


@pytest.mark.parametrize("name", ["lcron", "arf", "arf_v2"])
def test_softsort_changes_gradients(name):
    a, ga, _ = _run(name)
    b, gb, _ = _run(name, sort="soft")
    assert a["loss"].item() != b["loss"].item()
    assert not torch.allclose(ga[0], gb[0])
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
    assert quota["e2e"] != gt["e2e"]
    assert quota["single/retrieval"] == gt["single/retrieval"]     # L_single keeps k = 10


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
    # --tau on the command line maps onto the loss option, 0 keeps the default
    assert RunConfig(method=name, tau=20.0).loss_kwargs() == {"tau": 20.0}
    assert RunConfig(method=name, tau=0.0).loss_kwargs() == {}


def test_constants_are_overridable():
    base, _, _ = _run("icc")
    other, _, _ = _run("icc", cutoffs=[20, 20])
    assert base["loss"].item() != other["loss"].item()
    lam, _, _ = _run("fs_lambdaloss", mu=0.0)
    assert not math.isclose(lam["loss"].item(), 33.4158707, rel_tol=1e-3)
    three, _, _ = _run("rankflow", THREE_STAGE, pair_weight=0.0)
    assert "pair/retrieval" not in three
