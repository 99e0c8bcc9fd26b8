"""Streaming evaluation (LCRON paper §5.4): for each test day t of a range, train on every day
before t and test on t.

Training is one pass in date order, so one pass that evaluates on each day *before* training on
it yields, for every t, exactly the model trained on days[0..t-1] (day shuffles are seeded by
(seed, position of the day)): one training pass per method and run instead of one per test day.

    python -m deep_components.streaming --setting two_stage --data_dir data/synthetic/small \
        --methods bce lcron --first_test_day 2024-01-14 [--last_test_day D] [--run_ids 30 31]

Writes ``<out>/<setting>_streaming.{md,csv,png}``: a per-day table (joint recall and per-stage
recall, mean over runs) and a plot of joint recall per method over the test days; ``_runs.csv``
(every run, with the experiment's run key) and ``.json`` (the run key, configuration, data folder
and its id-count digest).  Every flag is checked before the first step; the out folder is checked
for writing first and locked per setting while the experiment runs.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import kernels
from .specs import get_spec
from .loss import display_name, method_order
from .config import RunConfig
from .data import DataError, list_days, read_id_counts, synthetic_info
from .parsing import OneLineParser
from .devices import resolve_device
from .errors import UsageError, report_error
from .files import ensure_writable, write_json
from .training import Trainer, prepare_data


@dataclass
class StreamPlan:
    """A checked streaming experiment (:func:`plan_stream`), ready to run."""

    spec: object
    root: Path
    days: list[str]
    tests: list[str]
    configs: list[RunConfig]
    device: torch.device
    id_counts: dict
    data: object                 # training.PreparedData: vocabulary and the opened days


def plan_stream(cfg: RunConfig, methods: list[str], run_ids: list[int], first: str,
                last: str | None = None) -> StreamPlan:
    """Check everything a streaming experiment needs before its first step: every flag for every
    method and run id, the test days, the kernels, and that the days before the first test day
    give at least one step (their days are converted on the way)."""
    from .config import validate

    spec = get_spec(cfg.setting)
    root = Path(cfg.data_dir)
    days = list_days(root)
    last = last or days[-1]
    tests = [d for d in days if first <= d <= last]
    if not tests or tests[0] == days[0]:
        raise UsageError(f"test days must lie in {days[1] if len(days) > 1 else '?'} ... {days[-1]} "
                         f"(each needs at least one earlier training day); got {first} ... {last}")
    if not methods or not run_ids:
        raise UsageError("--methods and --run_ids need at least one value each")
    if any(r < 0 for r in run_ids):
        raise UsageError(f"--run_ids must be >= 0, got {run_ids}")
    configs = []
    for method in dict.fromkeys(methods):
        for run_id in dict.fromkeys(run_ids):
            mcfg = RunConfig.from_dict(cfg.to_dict() | {"method": method, "run_id": run_id})
            validate(mcfg)
            configs.append(mcfg)
    device = resolve_device(cfg.device)
    kernels.select(cfg.kernels, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = prepare_data(cfg, spec, root, [d for d in days if d <= tests[-1]])
    sizes = data.sizes([d for d in days if d < tests[0]])
    if sum(n // cfg.batch_size for n in sizes) == 0:
        raise UsageError(f"--batch_size {cfg.batch_size} is larger than every day before the first "
                         f"test day {tests[0]} ({min(sizes):,}..{max(sizes):,} requests a day): its "
                         "model would be untrained; lower --batch_size or pick a later first day")
    return StreamPlan(spec, root, days, tests, configs, device, read_id_counts(root), data)


def run_stream(plan: StreamPlan, events_dir: Path | None = None) -> pd.DataFrame:
    """Rows: method, run, test_day, train_days, steps, joint, <stage> recall ... (one per test
    day, method and run).  ``--max_steps`` caps each training pass (later test days then
    evaluate the model where it stopped: see the ``steps`` column).  ``events_dir``: TensorBoard
    events per method and run there, one point per test day (x = the number of training days)."""
    from .watch import Events

    rows = []
    for mcfg in plan.configs:
        trainer = Trainer(mcfg, plan.spec, plan.root, plan.id_counts, plan.device,
                          mcfg.resolved_seed(), plan.data.vocab, plan.data.days)
        events = Events(events_dir / f"{mcfg.method}-run{mcfg.run_id}",
                        mcfg.tensorboard and events_dir is not None) if events_dir else None
        t0 = time.perf_counter()
        for di, date in enumerate(plan.days):
            if date in plan.tests:
                m = trainer.evaluate(date)
                row = {"method": mcfg.method, "run": mcfg.run_id, "test_day": date,
                       "train_days": di, "steps": trainer.step, "joint": m["joint_recall"]}
                row.update({f"{k} recall": v["recall"] for k, v in m["stages"].items()})
                rows.append(row)
                if events is not None:
                    events.metrics(m, di)
                logging.getLogger("deep_components.streaming").info(
                    "%s run %d %s joint %.4f", mcfg.method, mcfg.run_id, date, m["joint_recall"])
            if date >= plan.tests[-1]:
                break
            if not trainer.reached_max_steps():
                trainer.train_day(date, di)
        if events is not None:
            events.close()
        print(f"{mcfg.method} run {mcfg.run_id}: {len(plan.tests)} test days in "
              f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return pd.DataFrame(rows)


def stream(cfg: RunConfig, methods: list[str], run_ids: list[int], first: str,
           last: str | None = None) -> pd.DataFrame:
    """:func:`plan_stream` then :func:`run_stream`."""
    return run_stream(plan_stream(cfg, methods, run_ids, first, last))


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over runs per (method, test day), methods in the paper's order."""
    value_cols = [c for c in df.columns if c == "joint" or c.endswith(" recall")]
    g = df.groupby(["method", "test_day"], sort=False)[value_cols].mean().reset_index()
    g["runs"] = df.groupby(["method", "test_day"], sort=False).size().values
    order = method_order()
    g["order"] = g["method"].map(lambda m: order.index(m) if m in order else len(order))
    g = g.sort_values(["order", "test_day"]).drop(columns="order")
    g["method"] = g["method"].map(display_name)
    return g


def to_markdown(summary: pd.DataFrame, title: str) -> str:
    wide = summary.pivot(index="test_day", columns="method", values="joint")
    wide = wide[list(dict.fromkeys(summary["method"]))]
    lines = [f"**{title}** — joint recall, trained on every earlier day (mean over runs)", "",
             "| test day | " + " | ".join(wide.columns) + " |", "|" + "---|" * (len(wide.columns) + 1)]
    for day, r in wide.iterrows():
        lines.append(f"| {day} | " + " | ".join(f"{v:.4f}" for v in r) + " |")
    lines.append("| mean | " + " | ".join(f"{v:.4f}" for v in wide.mean()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import uuid

    from .config import add_run_flags, config_from_args
    from .data.cache import id_count_digest
    from .run_folder import results_lock

    ap = OneLineParser(prog="python -m deep_components.streaming", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(ap)
    ap.add_argument("--methods", nargs="+", default=method_order())
    ap.add_argument("--run_ids", nargs="+", type=int, default=[30])
    ap.add_argument("--first_test_day", required=True)
    ap.add_argument("--last_test_day", default=None)
    ap.add_argument("--out_dir", default=None, help="default <runs_root>/streaming")
    ap.add_argument("--config", default=None, metavar="FILE",
                    help="an experiment file (TOML; its [spec] may define the cascade); the "
                         "command line overrides it")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        if a.config:
            from .config import given_flags
            from .experiment import load

            exp = load(a.config)
            if exp.grid:
                raise UsageError(f"{a.config}: a grid is for the train command; streaming runs "
                                 "one configuration (use --methods and --run_ids)")
            cfg = config_from_args(a, file_values=exp.values, given=given_flags(ap, argv),
                                   source=exp.source)
        else:
            cfg = config_from_args(a)
        out = Path(a.out_dir or Path(cfg.runs_root) / "streaming")
        plan = plan_stream(cfg, a.methods, a.run_ids, a.first_test_day, a.last_test_day)
        ensure_writable(out, "the streaming results")
        stem = f"{cfg.setting}_streaming"
        with results_lock(out, stem):
            df = run_stream(plan, out / f"{stem}_tensorboard")
            key = uuid.uuid4().hex
            df.insert(0, "run_key", key)
            synthetic = synthetic_info(cfg.data_dir) is not None
            title = (f"{cfg.setting.replace('_', '-')} streaming evaluation — "
                     + ("SYNTHETIC data (simulated, not RecFlow)" if synthetic else "RecFlow")
                     + f", {cfg.data_dir}")
            summary = summarise(df.drop(columns="run_key"))
            md = to_markdown(summary, title)
            write_json(out / f"{stem}.json", {
                "run_key": key, "setting": cfg.setting, "data_dir": cfg.data_dir,
                "id_cnt_digest": id_count_digest(cfg.data_dir), "methods": list(a.methods),
                "run_ids": list(a.run_ids), "test_days": sorted(set(df["test_day"])),
                "config": cfg.to_dict()})
            df.to_csv(out / f"{stem}_runs.csv", index=False, float_format="%.6f")
            summary.to_csv(out / f"{stem}.csv", index=False, float_format="%.6f")
            (out / f"{stem}.md").write_text(md + "\n")
            from .plot import plot_over_days

            plot_over_days(summary, title, out / f"{stem}.png")
    except (DataError, UsageError, ValueError, OSError) as e:
        return report_error(e)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
