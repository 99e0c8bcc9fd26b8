"""The self-check inputs of docs/methods.md ("Self-check values") and a command that checks what
this implementation computes on them against the reference values.

    python -m deep_components.selfcheck --setting two_stage      (any registered setting)

Inputs: B = 2 requests, every slot valid, the positive group's index of slot a is (3a) mod 10 in
request 0 and (7a + 2) mod 10 in request 1 (label 30 - index), the negative groups carry their
constant labels, and stage t's (1-based) score of slot i in request b is
2 sin(0.37 (i + 1) t + 1.1 b) + 0.01 i.  For every method it prints the loss, per stage the
gradient's norm and its [0, 0] entry, the gradient of each learnable loss weight and the loss
components; then per stage NDCG@10, Recall@10@quota, Kendall tau-b and the joint recall.  Each
value is compared with the authors' reference code's (deep_components.selfcheck_reference, the
same numbers the tests assert) at the tolerances listed there: a line per method and per stage
says ``ok`` or ``MISMATCH`` with what differs, and the command exits 1 on any mismatch (0 when
all agree).  Settings the reference code does not have (four_stage, ...) are printed, not
checked, and say so.
"""
from __future__ import annotations

import argparse
import sys

import torch

from .spec import CascadeSpec
from .specs import SPECS, get_spec


def selfcheck_inputs(spec: CascadeSpec, dtype=torch.float32):
    """(logits: T leaf tensors [2, N] requiring grad, labels [2, N], mask [2, N] all True)."""
    B, N, T = 2, spec.num_slots, spec.num_stages
    labels = torch.zeros(B, N, dtype=dtype)
    g = spec.group_size
    for a in range(g):
        labels[0, a] = 30 - (3 * a) % 10
        labels[1, a] = 30 - (7 * a + 2) % 10
    for k, lab in enumerate(spec.negative_labels()):
        labels[:, g * (k + 1):g * (k + 2)] = lab
    i = torch.arange(N, dtype=dtype)
    logits = [torch.stack([2 * torch.sin(0.37 * (i + 1) * t + 1.1 * b) + 0.01 * i
                           for b in range(B)]).requires_grad_() for t in range(1, T + 1)]
    return logits, labels, torch.ones(B, N, dtype=torch.bool)


def loss_report(spec: CascadeSpec, name: str, mask_mode: str = "per_slot") -> dict:
    """{"loss", "grads": [(norm, g[0,0]) per stage], "weight_grads": [...] or None, components}."""
    from .loss import build_loss

    logits, labels, mask = selfcheck_inputs(spec)
    loss = build_loss(name, spec, mask_mode=mask_mode)
    out = loss(logits, labels, mask)
    out["loss"].backward()
    params = list(loss.parameters())
    return {"loss": float(out["loss"].detach()),
            "grads": [(float(s.grad.norm()), float(s.grad[0, 0])) for s in logits],
            "weight_grads": [float(g) for g in params[0].grad] if params else None,
            "components": {k: v for k, v in out.items() if k != "loss"}}


def metric_report(spec: CascadeSpec) -> dict:
    """{"stages": {name: (ndcg, recall, kendall)}, "joint": joint recall}, means over 2 requests."""
    from . import metrics as M

    logits, labels, mask = selfcheck_inputs(spec)
    scores = [s.detach() for s in logits]
    stages = {st.name: (float(M.ndcg_at_k(s, labels, mask).mean()),
                        float(M.recall_at_k(s, labels, mask, m=st.quota).mean()),
                        float(M.kendall_tau(s, labels, mask).mean()))
              for st, s in zip(spec.stages, scores)}
    return {"stages": stages,
            "joint": float(M.cascade_recall(scores, labels, mask, spec.quotas).mean())}


def _close(got: float, want: float, kind: str) -> bool:
    import math

    from .selfcheck_reference import TOLERANCE

    rel, abs_ = TOLERANCE[kind]
    return math.isclose(got, want, rel_tol=rel, abs_tol=abs_)


def loss_mismatches(r: dict, ref: tuple) -> list[str]:
    """What of a :func:`loss_report` differs from its reference (loss, grads, weights, comps)."""
    loss_v, grads, wgrads, comps = ref
    bad = []
    if not _close(r["loss"], loss_v, "loss"):
        bad.append(f"loss {r['loss']:.8g} (reference {loss_v:.8g})")
    for t, ((n, g), (rn, rg)) in enumerate(zip(r["grads"], grads)):
        if not _close(n, rn, "grad_norm"):
            bad.append(f"stage {t + 1} |g| {n:.7g} (reference {rn:.7g})")
        if not _close(g, rg, "grad_00"):
            bad.append(f"stage {t + 1} g[0,0] {g:.7g} (reference {rg:.7g})")
    if (r["weight_grads"] is None) != (wgrads is None):
        bad.append("learnable loss weights " + ("missing" if wgrads else "unexpected"))
    elif wgrads is not None:
        bad += [f"dloss/dw[{i}] {g:.7g} (reference {e:.7g})"
                for i, (g, e) in enumerate(zip(r["weight_grads"], wgrads))
                if not _close(g, e, "weight_grad")]
    for k, v in comps.items():
        got = r["components"].get(k)
        if got is None or not _close(got, v, "component"):
            bad.append(f"{k} {got} (reference {v:.8g})")
    return bad


def main(argv: list[str] | None = None) -> int:
    from .loss import method_order
    from .parsing import OneLineParser
    from .selfcheck_reference import JOINT, LOSSES, METRICS, SHORT

    ap = OneLineParser(prog="python -m deep_components.selfcheck", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", default="two_stage", choices=sorted(SPECS))
    ap.add_argument("--mask_mode", default="per_slot",
                    choices=["per_slot", "count_prefix", "true", "reference"])
    a = ap.parse_args(argv)
    spec = get_spec(a.setting)
    short = SHORT.get(spec.name)
    checked = short is not None
    print(f"# self-check values, {spec.name} (float32), "
          + ("checked against the authors' reference code" if checked else
             "NOT checked: the authors' code has no such setting (printed only)"))
    failures = 0

    def verdict(bad: list[str]) -> str:
        nonlocal failures
        if not checked:
            return ""
        failures += bool(bad)
        return "  ok" if not bad else "  MISMATCH: " + "; ".join(bad)

    for name in method_order():
        r = loss_report(spec, name, a.mask_mode)
        grads = "  ".join(f"{st}: |g| {n:.7g}, g[0,0] {g:.7g}"
                          for st, (n, g) in zip(spec.stage_names, r["grads"]))
        ref = LOSSES.get((short, name)) if checked else None
        bad = (loss_mismatches(r, ref) if ref is not None
               else [f"no reference value for {name}"])
        print(f"{name}: loss {r['loss']:.8g}  {grads}{verdict(bad)}")
        if r["weight_grads"] is not None:
            print(f"    dloss/dw: {', '.join(f'{g:.7g}' for g in r['weight_grads'])}")
        if r["components"]:
            print("    " + ", ".join(f"{k} {v:.8g}" for k, v in r["components"].items()))
    m = metric_report(spec)
    for t, (st, (nd, rec, tau)) in enumerate(m["stages"].items()):
        bad = []
        if checked:
            rnd, rrec, rtau = METRICS[(short, t)]
            bad = [f"{what} {got:.6f} (reference {want:.6f})" for what, got, want, kind in (
                ("NDCG@10", nd, rnd, "ndcg"), ("Recall", rec, rrec, "recall"),
                ("Kendall", tau, rtau, "kendall")) if not _close(got, want, kind)]
        print(f"metrics {st}: NDCG@10 {nd:.6f}  Recall@10@{spec.stages[t].quota} {rec:.4f}  "
              f"Kendall tau-b {tau:.6f}{verdict(bad)}")
    bad = ([f"{m['joint']:.4f} (reference {JOINT[short]:.4f})"]
           if checked and not _close(m["joint"], JOINT[short], "joint") else [])
    print(f"metrics joint recall: {m['joint']:.4f}{verdict(bad)}")
    if checked:
        print(f"self-check: {'all values agree with the reference' if not failures else f'{failures} line(s) differ from the reference'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
