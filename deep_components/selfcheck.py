"""The self-check inputs of docs/methods.md ("Self-check values") and a command that prints what
this implementation computes on them.

    python -m deep_components.selfcheck --setting two_stage      (any registered setting)

Inputs: B = 2 requests, every slot valid, the positive group's index of slot a is (3a) mod 10 in
request 0 and (7a + 2) mod 10 in request 1 (label 30 - index), the negative groups carry their
constant labels, and stage t's (1-based) score of slot i in request b is
2 sin(0.37 (i + 1) t + 1.1 b) + 0.01 i.  For every method it prints the loss, per stage the
gradient's norm and its [0, 0] entry, the gradient of each learnable loss weight and the loss
components; then per stage NDCG@10, Recall@10@quota, Kendall tau-b and the joint recall.  The
tests (tests/test_losses.py, tests/test_metrics.py) hold the same numbers as computed by the
authors' reference code and check that these agree with them.
"""
from __future__ import annotations

import argparse
import sys

import torch

from .cascade import SPECS, CascadeSpec, get_spec


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


def loss_report(spec: CascadeSpec, name: str, mask_mode: str = "true") -> dict:
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


def main(argv: list[str] | None = None) -> int:
    from .loss import method_order

    ap = argparse.ArgumentParser(prog="python -m deep_components.selfcheck", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", default="two_stage", choices=sorted(SPECS))
    ap.add_argument("--mask_mode", default="true", choices=["true", "reference"])
    a = ap.parse_args(argv)
    spec = get_spec(a.setting)
    print(f"# self-check values, {spec.name} (float32)")
    for name in method_order():
        r = loss_report(spec, name, a.mask_mode)
        grads = "  ".join(f"{st}: |g| {n:.7g}, g[0,0] {g:.7g}"
                          for st, (n, g) in zip(spec.stage_names, r["grads"]))
        print(f"{name}: loss {r['loss']:.8g}  {grads}")
        if r["weight_grads"] is not None:
            print(f"    dloss/dw: {', '.join(f'{g:.7g}' for g in r['weight_grads'])}")
        if r["components"]:
            print("    " + ", ".join(f"{k} {v:.8g}" for k, v in r["components"].items()))
    m = metric_report(spec)
    for st, (nd, rec, tau) in m["stages"].items():
        print(f"metrics {st}: NDCG@10 {nd:.6f}  Recall@10@{spec.stages[spec.stage_names.index(st)].quota}"
              f" {rec:.4f}  Kendall tau-b {tau:.6f}")
    print(f"metrics joint recall: {m['joint']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
