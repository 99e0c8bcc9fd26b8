"""Collect run folders into one table per setting: methods as rows, the paper's columns
(joint recall, then per stage from the last to the first: Recall@10@quota, NDCG@10), mean ± std
over runs (sample std, ddof = 1) and the number of runs, the 95% confidence interval of the mean
joint recall and a paired test against the best other row (deep_components.stats); written as
Markdown and CSV.

    python -m deep_components.collect --runs_root runs/synthetic-small --setting two_stage
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from .specs import SPECS, get_spec
from .loss import display_name, method_order
from .parsing import OneLineParser
from .run_folder import METRICS, RunFolder
from .stats import ALPHA, confidence_interval, method_note, paired_test
from .errors import UsageError, report_error


#: what a metrics.json must hold to be collected
METRIC_KEYS = ("method", "joint_recall", "stages")


def load_metrics(runs_root: Path, setting: str, methods: list[str] | None = None,
                 test_day: str | None = None) -> list[dict]:
    """Every run folder's metrics under ``runs_root/setting`` that describe its current training
    (with ``test_day``: only those scored on that day).

    A metrics file that is not this program's (corrupt, missing keys) is an error naming it;
    one whose run key differs from its folder's config.json (results of an earlier training
    left behind) or a folder another process holds (training or evaluating) is skipped with a
    warning; two folders with the same run key (a copied folder) are an error."""
    out, keys = [], {}
    for folder in RunFolder.under(Path(runs_root) / setting, "metrics"):
        try:
            lock = folder.lock(shared=True)
        except UsageError as e:
            print(f"warning: {e}: skipped", file=sys.stderr)
            continue
        try:
            m = folder.read_result("metrics", METRIC_KEYS)
        finally:
            lock.release()
        if m is None or (methods and m["method"] not in methods) \
                or (test_day and m.get("test_day") != test_day):
            continue
        if m["run_key"] in keys:
            raise UsageError(f"{folder.path} and {keys[m['run_key']]} hold the same training (run "
                             f"key {m['run_key']}): a copied run folder would count twice; remove "
                             "one")
        keys[m["run_key"]] = folder.path
        m["_path"] = str(folder.path)
        out.append(m)
    return out


def check_one_dataset(metrics: list[dict], where: str) -> None:
    """Refuse results of different data folders, or of a data folder's other content."""
    sources = {str(m.get("data_dir")) + ("" if m.get("own_data", True) else " (not the run's own "
                                                                              "data)")
               for m in metrics}
    if len(sources) > 1:
        raise UsageError(f"runs under {where} come from different datasets {sorted(sources)}; "
                         "use one runs root per dataset")


def metric_columns(setting: str) -> list[tuple[str, str]]:
    """[(column title, key)] in the paper's order."""
    spec = get_spec(setting)
    cols = [("joint", "joint_recall")]
    for st in reversed(spec.stages):
        cols.append((f"{st.name} R@10@{st.quota}", f"{st.name}.recall"))
        cols.append((f"{st.name} NDCG@10", f"{st.name}.ndcg"))
    return cols


def _value(m: dict, key: str) -> float:
    if "." in key:
        stage, k = key.split(".")
        return m["stages"][stage][k]
    return m[key]


def variant(m: dict) -> tuple[str, str, str]:
    """(method, tag, test day): runs of one method with different --tag (ablations) or evaluated
    on different days are separate rows."""
    return m["method"], m.get("tag", "") or "", str(m.get("test_day"))


def build_table(metrics: list[dict], setting: str) -> pd.DataFrame:
    cols = metric_columns(setting)
    rows = []
    order = method_order()          # the registry's: the paper's rows first, in its order
    variants = sorted({variant(m) for m in metrics},
                      key=lambda v: (order.index(v[0]) if v[0] in order else len(order), v))
    several_days = len({v[2] for v in variants}) > 1
    for method, tag, day in variants:
        ms = [m for m in metrics if variant(m) == (method, tag, day)]
        name = (display_name(method) + (f" [{tag}]" if tag else "")
                + (f" @ {day}" if several_days else ""))
        row = {"method": name, "runs": len(ms), "_first": sorted(m.get("_path", "") for m in ms)[0]}
        for title, key in cols:
            v = np.array([_value(m, key) for m in ms], dtype=float)
            row[f"{title} mean"] = v.mean()
            row[f"{title} std"] = v.std(ddof=1) if len(v) > 1 else 0.0
        row["_joint"] = {m["run_id"]: m["joint_recall"] for m in ms if m.get("run_id") is not None}
        row["joint ci_low"], row["joint ci_high"] = confidence_interval([m["joint_recall"] for m in ms])
        rows.append(row)
    add_paired(rows)
    return pd.DataFrame(rows)


def add_paired(rows: list[dict]) -> None:
    """Each row's paired test of joint recall against the best other row (by mean joint)."""
    for r in rows:
        others = [o for o in rows if o is not r]
        if not others:
            r.update({"vs": "", "vs diff": np.nan, "vs p": np.nan, "vs runs": 0})
            continue
        best = max(others, key=lambda o: o["joint mean"])
        test = paired_test(r["_joint"], best["_joint"])
        r.update({"vs": best["method"], "vs diff": test["diff"] if test else np.nan,
                  "vs p": test["p"] if test else np.nan, "vs runs": test["n"] if test else 0})


def table_title(metrics: list[dict], setting: str) -> str:
    kind = setting.replace("_", "-")
    days = sorted({m.get("test_day") for m in metrics})
    synthetic = any(m.get("synthetic") for m in metrics)
    src = ("SYNTHETIC data (simulated RecFlow layout, not the real dataset)" if synthetic
           else "RecFlow")
    return f"{kind} cascade — {src}, test day {', '.join(map(str, days))}"


def to_markdown(df: pd.DataFrame, setting: str, title: str,
                curves: dict[str, str] | None = None) -> str:
    """The table; ``curves`` (row name -> path) adds a column linking each row's curves.png."""
    cols = metric_columns(setting)
    head = (["method"] + [t for t, _ in cols] + ["runs", "joint 95% CI", "vs best other (Δ, p)"]
            + (["curves"] if curves else []))
    lines = [f"**{title}** (mean ± std over runs)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        one = int(r["runs"]) == 1                 # a single run has no spread to show
        cells = [r["method"]] + [f"{r[f'{t} mean']:.4f}" + ("" if one else f" ± {r[f'{t} std']:.4f}")
                                 for t, _ in cols]
        cells.append(str(int(r["runs"])))
        cells.append("–" if np.isnan(r["joint ci_low"]) else
                     f"[{r['joint ci_low']:.4f}, {r['joint ci_high']:.4f}]")
        cells.append(_paired_cell(r))
        if curves:
            cells.append(f"[curves]({curves[r['method']]})" if r["method"] in curves else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", method_note()])


def _paired_cell(r) -> str:
    if not r["vs"] or np.isnan(r["vs diff"]):
        return "–"
    mark = " †" if r["vs p"] < ALPHA else ""
    return f"{r['vs']}: {r['vs diff']:+.4f}, p = {r['vs p']:.3g} ({int(r['vs runs'])} pairs){mark}"


def curve_links(df: pd.DataFrame, out: Path) -> dict[str, str]:
    """Row name -> the curves.png of the row's first run, relative to ``out``."""
    import os

    links = {}
    for _, r in df.iterrows():
        png = RunFolder(r["_first"]).curves_path() if r["_first"] else None
        if png is not None and png.is_file():
            links[r["method"]] = os.path.relpath(png, out)
    return links


def mean_joint(metrics: list[dict]) -> dict[str, float]:
    """Mean joint recall per method over its untagged runs (ablation variants left out)."""
    joint: dict[str, list[float]] = {}
    for m in metrics:
        if not m.get("tag"):
            joint.setdefault(m["method"], []).append(m["joint_recall"])
    return {k: float(np.mean(v)) for k, v in joint.items()}


def ordering_note(metrics: list[dict], setting: str) -> str | None:
    """A line with the Spearman ρ between this table's method ordering (mean joint recall of the
    untagged runs) and the paper's, when the paper reports the setting and >= 3 methods are in."""
    from .paper import rho_vs_paper

    r = rho_vs_paper(mean_joint(metrics), setting)
    if r is None or r[1] < 3:
        return None
    return (f"Spearman ρ of the method ordering by joint recall with the paper's (RecFlow): "
            f"{r[0]:+.3f} over {r[1]} methods")


def collect(runs_root: str | Path, setting: str, methods: list[str] | None = None,
            out_dir: str | Path | None = None, plot: bool = False,
            test_day: str | None = None) -> tuple[pd.DataFrame, str]:
    """Build, write (``<out_dir>/<setting>_results.{md,csv}``, and ``.png`` with ``plot``) and
    return (table, markdown); ``test_day``: only runs scored on that day."""
    metrics = load_metrics(Path(runs_root), setting, methods, test_day)
    if not metrics:
        raise FileNotFoundError(f"no {METRICS} under {Path(runs_root) / setting}")
    check_one_dataset(metrics, f"{runs_root}/{setting}")
    df = build_table(metrics, setting)
    out = Path(out_dir) if out_dir else Path(runs_root)
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(df, setting, table_title(metrics, setting),
                     curve_links(df, out) if plot else None)
    rho = ordering_note(metrics, setting)
    if rho:
        md += "\n\n" + rho
    stem = f"{setting}_{methods[0]}" if methods and len(methods) == 1 else f"{setting}_results"
    (out / f"{stem}.md").write_text(md + "\n")
    df.drop(columns=["_first", "_joint"]).to_csv(out / f"{stem}.csv", index=False, float_format="%.6f")
    if plot:
        from .plot import plot_comparison

        stage_titles = [t for t, k in metric_columns(setting) if k.endswith(".recall")]
        plot_comparison(df, stage_titles, table_title(metrics, setting), out / f"{stem}.png")
    return df, md


def column_labels(roots: list[str | Path]) -> list[str]:
    """A distinct column title per runs root: its folder name, or as many trailing path parts as
    tell it from the others."""
    paths = [Path(r).resolve() for r in roots]
    for n in range(1, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-n:]).lstrip("/") or "/" for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def compare(runs_roots: list[str | Path], setting: str, methods: list[str] | None = None,
            test_day: str | None = None) -> str:
    """One Markdown table of mean joint recall per method (rows, the registry's order) and runs
    root (columns, e.g. two synthetic worlds), beside the paper's RecFlow numbers where it has
    them, with each column's Spearman ρ against the paper's ordering and rank within the column.
    Each root must hold one dataset's runs; a root given twice is an error.  ``test_day``: only
    runs scored on that day."""
    from .paper import PAPER_JOINT_RECALL, rho_vs_paper

    resolved = [Path(r).resolve() for r in runs_roots]
    dup = next((r for i, r in enumerate(runs_roots) if resolved[i] in resolved[:i]), None)
    if dup is not None:
        raise UsageError(f"--compare {dup}: given twice; each runs root is one column")
    cols: dict[str, dict[str, float]] = {}
    for root, label in zip(runs_roots, column_labels(runs_roots)):
        metrics = load_metrics(Path(root), setting, methods, test_day)
        if not metrics:
            raise FileNotFoundError(f"no {METRICS} under {Path(root) / setting}"
                                    + (f" for {', '.join(methods)}" if methods else ""))
        check_one_dataset(metrics, f"{root}/{setting}")
        cols[label] = mean_joint(metrics)
    paper = PAPER_JOINT_RECALL.get(setting)
    if paper:
        paper = {m: v for m, v in paper.items() if not methods or m in methods}
        cols = {"paper (RecFlow)": dict(paper), **cols}
    order = [m for m in method_order() if any(m in c for c in cols.values())]

    def ranks(c: dict[str, float]) -> dict[str, int]:
        return {m: i + 1 for i, m in enumerate(sorted(c, key=lambda m: -c[m]))}

    rk = {name: ranks(c) for name, c in cols.items()}
    lines = [f"**{setting.replace('_', '-')}: joint recall (rank)**", "",
             "| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for m in order:
        cells = [f"{c[m]:.4f} ({rk[n][m]})" if m in c else "–" for n, c in cols.items()]
        lines.append(f"| {display_name(m)} | " + " | ".join(cells) + " |")
    if paper:
        rhos = []
        for name, c in cols.items():
            r = rho_vs_paper(c, setting)
            rhos.append(f"{r[0]:+.3f}" if r and r[1] >= 3 else "–")
        lines.append("| Spearman ρ vs paper | " + " | ".join(rhos) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m deep_components.collect", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs_root", default="runs")
    ap.add_argument("--setting", default="two_stage", choices=sorted(SPECS))
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--out_dir", default=None, help="where to write the tables (default runs_root)")
    ap.add_argument("--plot", action="store_true", help="also write a PNG comparison plot")
    ap.add_argument("--compare", nargs="+", default=None, metavar="RUNS_ROOT",
                    help="instead: one joint-recall table over several runs roots (e.g. two "
                         "synthetic worlds) beside the paper's, with Spearman rho vs the paper")
    a = ap.parse_args(argv)
    try:
        if a.compare:
            print(compare(a.compare, a.setting, a.methods))
            return 0
        _, md = collect(a.runs_root, a.setting, a.methods, a.out_dir, a.plot)
    except (FileNotFoundError, ValueError, UsageError) as e:
        return report_error(e)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
