"""PNG plots of collected results (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` (PNG, 120 dpi), close it; returns the path."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_comparison(df: pd.DataFrame, stage_titles: list[str], title: str, path: str | Path) -> Path:
    """Left: joint recall per method (mean ± std); right: per-stage recall beside it.

    ``df`` is :func:`deep_components.collect.build_table`'s output; ``stage_titles`` the column
    titles of the per-stage recalls (e.g. "prerank R@10@20")."""
    plt = _plt()
    methods = list(df["method"])
    x = np.arange(len(methods))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(10, 1.6 * len(methods) + 4), 4.5))
    ax1.bar(x, df["joint mean"], yerr=df["joint std"], capsize=4, color="#3b75af")
    ax1.set_xticks(x, methods, rotation=30, ha="right")
    ax1.set_ylabel("joint recall (mean ± std)")
    lo = float((df["joint mean"] - df["joint std"]).min())
    ax1.set_ylim(max(0.0, lo - 0.05), min(1.0, float((df["joint mean"] + df["joint std"]).max()) + 0.02))
    ax1.set_title("joint (cascade) recall")
    width = 0.8 / max(1, len(stage_titles))
    for i, col in enumerate(stage_titles):
        ax2.bar(x + (i - (len(stage_titles) - 1) / 2) * width, df[f"{col} mean"], width,
                yerr=df[f"{col} std"], capsize=3, label=col)
    ax2.set_xticks(x, methods, rotation=30, ha="right")
    lo2 = min(float((df[f"{c} mean"] - df[f"{c} std"]).min()) for c in stage_titles)
    ax2.set_ylim(max(0.0, lo2 - 0.05), 1.0)
    ax2.set_title("per-stage Recall@10@quota")
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)


def plot_over_days(df: pd.DataFrame, title: str, path: str | Path) -> Path:
    """Joint recall per method over test days; ``df`` columns: method, test_day, joint."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for method, g in df.groupby("method", sort=False):
        ax.plot(g["test_day"], g["joint"], marker="o", label=method)
    ax.set_xlabel("test day (trained on every earlier day)")
    ax.set_ylabel("joint recall")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    fig.autofmt_xdate()
    return _save(plt, fig, path)


def plot_curves(df: pd.DataFrame, title: str, path: str | Path) -> Path:
    """Validation joint recall against training step, one line per method (the mean over runs,
    the band between the lowest and highest run); ``df`` columns: method, step, mean, min, max."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5))
    for method, g in df.groupby("method", sort=False):
        g = g.sort_values("step")
        (line,) = ax.plot(g["step"], g["mean"], marker="o", markersize=3, label=method)
        ax.fill_between(g["step"], g["min"], g["max"], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation joint recall (mean; band: min-max over runs)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    return _save(plt, fig, path)
