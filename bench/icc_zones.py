"""Where ICC's joint score puts the ground truth: the zones of E for trained towers.

    python bench/icc_zones.py RUN_DIR [RUN_DIR ...] [--day D] [--device cpu] [--out zones.md]

ICC (docs/methods.md §4.2) scores each slot with E = Σ_{t<T} c_t (Π_{u<t} I_u)(1 − I_t) s_t
+ c_T (Π_{u<T} I_u) I_T s_T, where I_t = σ((s_t − κ_t)/0.001) is, but for slots within ~0.01 of
the cut, 1 in stage t's own top-k_t (over all valid slots) and 0 outside it.  So each slot is in one
zone: *cut at t* (the first stage whose top-k_t misses it; E = c_t s_t, trained through s_t),
*dead* (every stage keeps it but the last; E = 0, and its stages get no gradient from it), or
*through* (every stage keeps it; E = c_T s_T).  A ground-truth slot in the dead zone is invisible
to the loss: nothing moves it into the last stage's top-k.  For each run folder this prints the
share of the ground truth (group 0) and of all valid slots in each zone on ``--day`` (default:
the run's test day), the hard indicators taken at the ICC cut-offs of the run's setting, beside
the run's joint recall on that day, and each stage's mean cut value κ_t.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def zones(scores: list[np.ndarray], mask: np.ndarray, cutoffs: tuple[int, ...]) -> np.ndarray:
    """int8 [R, N]: t (0-based) for a slot cut at stage t < T-1, T-1 for the dead zone (kept by
    every stage but the last), T for through, -1 for padded slots.  ``scores``: T arrays [R, N];
    stage t keeps its ``cutoffs[t]`` highest over all valid slots (ICC's κ_t, ties by slot)."""
    T = len(scores)
    R, N = mask.shape
    out = np.full((R, N), T, dtype=np.int8)
    undecided = mask.copy()
    for t, (s, k) in enumerate(zip(scores, cutoffs)):
        x = np.where(mask, s.astype(np.float64), -np.inf)
        top = np.zeros((R, N), dtype=bool)
        np.put_along_axis(top, np.argsort(-x, axis=1, kind="stable")[:, :k], True, axis=1)
        missed = undecided & ~(top & mask)
        out[missed] = t
        undecided &= ~missed
    out[~mask] = -1
    return out


def zone_shares(z: np.ndarray, mask: np.ndarray, group_size: int, T: int) -> dict[str, list[float]]:
    """{"ground truth": [share per zone 0..T], "all slots": [...]}: shares of the valid slots."""
    gt = np.zeros_like(mask)
    gt[:, :group_size] = True
    out = {}
    for name, sel in (("ground truth", gt & mask), ("all slots", mask)):
        n = max(int(sel.sum()), 1)
        out[name] = [float((z[sel] == t).sum() / n) for t in range(T + 1)]
    return out


def zone_names(stage_names: tuple[str, ...]) -> list[str]:
    return [f"cut by {n}" for n in stage_names[:-1]] + [f"dead (kept until {stage_names[-1]})",
                                                        "through"]


def analyse(run_dir: Path, day: str | None, device_name: str) -> dict:
    import torch

    from deep_components.devices import resolve_device
    from deep_components.run_folder import RunFolder
    from deep_components.scoring import cascade_metrics, score_day

    device = resolve_device(device_name)
    run = RunFolder(run_dir).open_trained(device)
    day = day or run.config["test_day"]
    data = run.load_day(day)
    if run.vocab is not None:
        data = run.vocab.apply(data)
    with torch.no_grad():
        scores = score_day(run.models, data, device)
    mask, labels = np.asarray(data.item_mask), np.asarray(data.labels)
    spec = run.spec
    cutoffs = tuple(spec.method_options["icc"]["cutoffs"])
    z = zones(scores, mask, cutoffs)
    joint = cascade_metrics(scores, labels, mask, spec)["joint_recall"]
    return {"run": str(run_dir), "method": run.method, "day": day, "joint_recall": joint,
            "cutoffs": cutoffs, "stages": spec.stage_names, "kappa": cut_values(scores, mask, cutoffs),
            **zone_shares(z, mask, spec.group_size, spec.num_stages)}


def cut_values(scores: list[np.ndarray], mask: np.ndarray, cutoffs: tuple[int, ...]) -> list[float]:
    """Per stage, the mean over requests of κ_t, the k_t-th highest valid score: a slot just
    below stage t's cut has E ≈ c_t κ_t, just above it the next zone's E (0 when it is dead)."""
    out = []
    for s, k in zip(scores, cutoffs):
        x = np.sort(np.where(mask, s.astype(np.float64), -np.inf), axis=1)[:, ::-1]
        out.append(float(x[:, k - 1].mean()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--day", default=None, help="default: each run's test day")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="write the table here too")
    a = ap.parse_args(argv)
    rows = [analyse(d, a.day, a.device) for d in a.run_dirs]
    names = zone_names(rows[0]["stages"])
    lines = [f"ICC's zones of E at cut-offs {rows[0]['cutoffs']} (share of the ground truth; of all "
             "valid slots in brackets)", "",
             "| run | method | day | joint recall | " + " | ".join(names) + " | "
             + " | ".join(f"κ {n}" for n in rows[0]["stages"]) + " |",
             "|---|---|---|---|" + "---|" * (len(names) + len(rows[0]["stages"]))]
    for r in sorted(rows, key=lambda r: r["joint_recall"]):
        cells = [f"{g:.3f} ({a_:.3f})" for g, a_ in zip(r["ground truth"], r["all slots"])]
        lines.append(f"| {Path(r['run']).name} | {r['method']} | {r['day']} | {r['joint_recall']:.4f} | "
                     + " | ".join(cells) + " | " + " | ".join(f"{k:+.3f}" for k in r["kappa"]) + " |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
