"""Watching a run: TensorBoard event files and a plot of its curves.

``Events`` writes, when TensorBoard is installed and ``--no_tensorboard`` is not given, into the
folder it is handed (a run folder's ``tensorboard/``, or a streaming experiment's): every
training step's total loss (``loss/total``) and loss terms (``loss/<term>/<stage>``), the learned
loss weights of ARF, ARF-v2 and LCRON (``weights/<stage>``), the learning rate and the requests/s
(``train/``), and evaluation metrics (``eval/joint_recall``, ``eval/<stage>/recall|ndcg|kendall``;
a streaming experiment writes one point per test day).  ``plot_curves`` draws a run's loss
terms and learned weights over its steps (exponentially smoothed) into one PNG.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable

log = logging.getLogger("deep_components.watch")

#: smoothing of the plotted curves: an exponential moving average whose weight of the past
#: spans about a tenth of the run (at most 0.95), debiased at the start as TensorBoard's is
SMOOTHING_MAX = 0.95


def tensorboard_available() -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        return False
    return True


def scalar_name(key: str) -> str:
    """The TensorBoard tag of a loss-log key: loss -> loss/total, weight/s -> weights/s,
    term/s -> loss/term/s."""
    if key == "loss":
        return "loss/total"
    if key.startswith("weight/"):
        return "weights/" + key.split("/", 1)[1]
    return f"loss/{key}"


class Events:
    """TensorBoard scalars of one run (a no-op when disabled or TensorBoard is missing)."""

    def __init__(self, folder: Path, enabled: bool = True, purge_step: int | None = None):
        self.writer = None
        if enabled and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            folder.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(folder), purge_step=purge_step, flush_secs=30)
        elif enabled:
            log.info("TensorBoard is not installed: no event files (pip install tensorboard)")

    def steps(self, records: Iterable[dict], requests_per_s: float | None = None,
              lr: float | None = None) -> None:
        """Loss-log records ({step, day, loss, components…}) as scalars at their steps."""
        if self.writer is None:
            return
        last = None
        for r in records:
            for k, v in r.items():
                if k in ("step", "day", "skipped") or not isinstance(v, (int, float)):
                    continue
                if math.isfinite(v):
                    self.writer.add_scalar(scalar_name(k), v, r["step"])
            last = r["step"]
        if last is not None and requests_per_s is not None:
            self.writer.add_scalar("train/requests_per_s", requests_per_s, last)
        if last is not None and lr is not None:
            self.writer.add_scalar("train/lr", lr, last)

    def metrics(self, metrics: dict, step: int, prefix: str = "eval") -> None:
        """An evaluation's joint recall and per-stage recall, NDCG and Kendall tau at ``step``."""
        if self.writer is None:
            return
        self.writer.add_scalar(f"{prefix}/joint_recall", metrics["joint_recall"], step)
        for stage, m in metrics["stages"].items():
            for k in ("recall", "ndcg", "kendall"):
                if k in m and math.isfinite(m[k]):
                    self.writer.add_scalar(f"{prefix}/{stage}/{k}", m[k], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Debiased exponential moving average (default weight: see SMOOTHING_MAX)."""
    if weight is None:
        weight = min(SMOOTHING_MAX, max(0.0, 1 - 10 / max(len(values), 1)))
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        acc, norm = weight * acc + (1 - weight) * v, weight * norm + (1 - weight)
        out.append(acc / norm if norm else v)
    return out


def plot_curves(records: list[dict], path: Path, title: str) -> None:
    """Loss terms (left) and learned loss weights (right, when the method has them) over the
    steps of ``records``, smoothed; the raw total loss faint behind its smoothed curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        return
    steps = [r["step"] for r in records]
    keys = list(dict.fromkeys(k for r in records for k in r
                              if k not in ("step", "day", "skipped")))
    terms = [k for k in keys if not k.startswith("weight/")]
    weights = [k for k in keys if k.startswith("weight/")]
    fig, axes = plt.subplots(1, 2 if weights else 1, figsize=(12 if weights else 7, 4.2),
                             squeeze=False)
    ax = axes[0][0]
    for k in terms:
        vals = [r.get(k, math.nan) for r in records]
        if k == "loss":
            ax.plot(steps, vals, color="0.8", linewidth=0.8)
        ax.plot(steps, smooth(vals), label="total" if k == "loss" else k,
                linewidth=2 if k == "loss" else 1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("loss terms (smoothed)")
    ax.legend(fontsize=8)
    if weights:
        ax = axes[0][1]
        for k in weights:
            ax.plot(steps, [r.get(k, math.nan) for r in records], label=k.split("/", 1)[1])
        ax.set_xlabel("step")
        ax.set_ylabel("weight")
        ax.set_title("learned loss weights")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
