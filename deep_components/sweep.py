"""The paper's tuning protocol as one command: train a grid of settings of one method, choose
on the validation day, report the chosen setting's test day.

    python -m deep_components.sweep --method lcron --grid tau=20,50 --grid lr=0.01,0.005 \\
        --data_dir data/synthetic/small [--run_ids 30 31] [any training flag]

Every combination of the ``--grid`` values (and of an experiment file's ``[grid]``) is trained
for every run id as its own tagged run folder, held out of its training days is the validation
day (``--valid_day``, default ``auto``: the day before the test day), and evaluated on both days.
The chosen setting is the one with the highest mean joint recall over its runs **on the
validation day** (ties: the first in grid order); the test day is only reported.  A run folder
that already holds a finished, evaluated run of the same setting is used again, so a stopped
sweep continues where it stopped.  ``<runs_root>/<setting>/<method>/sweep[-TAG].{md,json}``
hold the table and the choice.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np

from .config import RunConfig, config_from_args, given_flags
from .data.errors import DataError
from .errors import TrainingError, UsageError, report_error
from .files import write_json

#: what chooses: the validation day's joint recall, mean over the run ids
SELECT_BY = "valid_joint_recall"


def parse_grid(items: list[str], where: str = "--grid") -> dict[str, list]:
    """``["tau=20,50", "lr=0.01"]`` -> {field: [typed values]} (values as Python literals, typed
    by the RunConfig field they set)."""
    from .config import _parse_value
    from .experiment import ALIASES, _check_type, _fields
    from .loss.base import did_you_mean

    fields = _fields()
    grid: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"{where} expects NAME=V1,V2,..., got {item!r}")
        key, text = (t.strip() for t in item.split("=", 1))
        name = ALIASES.get(key, key)
        if name not in fields or name == "loss_options":
            raise UsageError(f"{where} {key}: not a flag{did_you_mean(key, list(fields))}")
        values = [_check_type(where, key, _parse_value(v.strip()), fields[name])
                  for v in text.split(",") if v.strip()]
        if not values:
            raise UsageError(f"{where} {key}: no values")
        if len(set(map(repr, values))) < len(values):
            raise UsageError(f"{where} {key}: a value is given twice")
        grid[name] = values
    return grid


def choose(rows: list[dict]) -> int:
    """Index of the row with the highest mean validation joint recall (the first of equals).
    ``rows[i]["valid"]``: the runs' validation joint recalls."""
    means = [float(np.mean(r["valid"])) for r in rows]
    return int(np.argmax(means))            # argmax: the first maximum


def summarise(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "runs": int(v.size)}


def _reusable(cfg: RunConfig, keys: set[str]) -> dict | None:
    """The metrics of ``cfg``'s run folder if it holds a finished, evaluated training whose
    values of ``keys`` (and data folder) are ``cfg``'s; else None."""
    from .run_folder import RunFolder

    folder = RunFolder(cfg.resolved_run_dir())
    if not folder.has_config():
        return None
    saved = folder.config()
    summary = folder.summary() or {}
    if not summary.get("finished") and not (cfg.max_steps and summary.get("steps") == cfg.max_steps):
        return None
    if Path(saved.get("data_dir", "")).resolve() != Path(cfg.data_dir).resolve():
        return None
    for k in keys:
        mine = getattr(cfg, k)
        if k == "valid_day" and mine == "auto":
            continue
        if saved.get(k) != mine:
            return None
    m, v = folder.read_result("metrics"), folder.read_result("valid_metrics")
    if m is None or v is None or m.get("test_day") != saved.get("test_day"):
        return None
    return m


def run_sweep(cfgs: list[tuple[dict, str, list[RunConfig]]], keys: set[str],
              say=print) -> list[dict]:
    """Train and evaluate (or reuse) every run; one row per grid point: its values, tag, the
    runs' validation and test joint recalls and days."""
    from .evaluation import evaluate_run
    from .training import train

    rows = []
    for values, suffix, runs in cfgs:
        row = {"values": values, "tag": suffix, "valid": [], "test": [], "run_dirs": []}
        for cfg in runs:
            m = _reusable(cfg, keys)
            if m is None:
                train(cfg)
                m = evaluate_run(cfg)
                how = "trained"
            else:
                how = "reused"
            if "valid_joint_recall" not in m:
                raise UsageError(f"{cfg.resolved_run_dir()}: evaluated without a validation day")
            row["valid"].append(m["valid_joint_recall"])
            row["test"].append(m["joint_recall"])
            row["run_dirs"].append(str(cfg.resolved_run_dir()))
            row["test_day"] = m["test_day"]
            say(f"{how} {cfg.method} [{suffix}] run {cfg.run_id}: validation {m['valid_joint_recall']:.4f}"
                f", test {m['joint_recall']:.4f}")
        rows.append(row)
    return rows


def to_markdown(rows: list[dict], best: int, method: str, setting: str, valid_day: str,
                test_day: str) -> str:
    from .loss import display_name

    keys = list(rows[0]["values"])
    lines = [f"**{display_name(method)} ({setting.replace('_', '-')}): sweep, chosen on the "
             f"validation day {valid_day}; test day {test_day}** (joint recall, mean ± std over "
             "runs)", "",
             "| " + " | ".join(keys) + " | validation | test | runs | |",
             "|" + "---|" * (len(keys) + 4)]
    for i, r in enumerate(rows):
        v, t = summarise(r["valid"]), summarise(r["test"])
        lines.append("| " + " | ".join(str(r["values"][k]) for k in keys)
                     + f" | {v['mean']:.4f} ± {v['std']:.4f} | {t['mean']:.4f} ± {t['std']:.4f} | "
                     f"{v['runs']} | {'**chosen**' if i == best else ''} |")
    c = rows[best]
    chosen = ", ".join(f"{k} = {c['values'][k]}" for k in keys)
    lines += ["", f"Chosen: {chosen} — validation "
              f"{np.mean(c['valid']):.4f}, test {np.mean(c['test']):.4f} (the test day did not "
              "take part in the choice)."]
    return "\n".join(lines)


def build_parser():
    from .cli import build_parser as run_parser

    ap = run_parser(None, "train", prog="python -m deep_components.sweep")
    ap.description = "Train a grid of one method's settings; choose on the validation day."
    ap.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                    help="a flag and its values (repeatable; every combination is a run)")
    ap.add_argument("--run_ids", type=int, nargs="+", default=None,
                    help="run ids of every grid point (default: --run_id); the choice is by the "
                         "mean over them")
    return ap


def plan(ap, a, argv) -> tuple[list[tuple[dict, str, list[RunConfig]]], set[str]]:
    """(values, tag, configs over the run ids) of every grid point; the keys a reused run must
    match."""
    from .experiment import combinations, load

    given = given_flags(ap, argv) - {"grid", "run_ids"}
    file_values, file_grid, source = {}, {}, ""
    if a.config:
        if len(a.config) > 1:
            raise UsageError("--config: a sweep takes one experiment file")
        exp = load(a.config[0])
        file_values, file_grid, source = exp.values, exp.grid, exp.source
    grid = file_grid | parse_grid(a.grid)
    if not grid:
        raise UsageError("--grid: a sweep needs at least one flag with values (or a [grid] in "
                         "--config)")
    clash = sorted(set(grid) & given)
    if clash:
        raise UsageError(f"--{clash[0]} is also a --grid key: give it once")
    run_ids = a.run_ids or [a.run_id]
    if len(set(run_ids)) < len(run_ids):
        raise UsageError("--run_ids: a run id is given twice")
    keys = set(grid) | {"setting", "method", "run_id", "tag", "valid_day"} | (
        given & {f.name for f in dataclasses.fields(RunConfig)} - {"progress", "device", "threads",
                                                                   "overwrite", "tensorboard",
                                                                   "cache_dir", "kernels",
                                                                   "runs_root", "run_dir",
                                                                   "data_dir", "config"})
    out = []
    for values, suffix in combinations(grid):
        runs = []
        for rid in run_ids:
            cfg = config_from_args(a, None, False, file_values | values, given, source)
            if cfg.run_dir:
                raise UsageError("--run_dir: a sweep writes one folder per run under --runs_root "
                                 "(use --runs_root or --tag)")
            cfg.run_id = rid
            cfg.tag = f"{cfg.tag}-{suffix}" if cfg.tag else suffix
            cfg.valid_day = cfg.valid_day or "auto"
            if cfg.valid_day == "none":
                raise UsageError("--valid_day none: a sweep chooses on a validation day")
            runs.append(cfg)
        out.append((values, suffix, runs))
    return out, keys


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .config import validate
    from .distributed import context, init_distributed, shutdown

    try:
        grid_runs, keys = plan(ap, a, argv)
        _, device = init_distributed(grid_runs[0][2][0].device, grid_runs[0][2][0].dist_timeout)
        for _, _, runs in grid_runs:
            for cfg in runs:
                cfg.device = device
                validate(cfg)              # every grid point checked before the first training
        from .run_folder import RunFolder

        main_rank = context().is_main
        rows = run_sweep(grid_runs, keys, say=print if main_rank else (lambda *_: None))
        if main_rank:
            first = grid_runs[0][2][0]
            saved = RunFolder(rows[0]["run_dirs"][0]).config()
            best = choose(rows)
            md = to_markdown(rows, best, first.method, first.setting, saved["valid_day"],
                             saved["test_day"])
            out = Path(first.runs_root) / first.setting / first.method
            stem = "sweep" + (f"-{a.tag}" if a.tag else "")
            (out / f"{stem}.md").write_text(md + "\n")
            write_json(out / f"{stem}.json", {
                "method": first.method, "setting": first.setting, "select_by": SELECT_BY,
                "valid_day": saved["valid_day"], "test_day": saved["test_day"],
                "grid": {k: [r["values"][k] for r in rows] for k in rows[0]["values"]},
                "points": [r | {"valid_summary": summarise(r["valid"]),
                                "test_summary": summarise(r["test"])} for r in rows],
                "chosen": rows[best]["values"], "chosen_tag": rows[best]["tag"]})
            print("\n" + md + f"\n\n-> {out / (stem + '.md')}")
    except (DataError, UsageError, ValueError, TrainingError, OSError) as e:
        return report_error(e)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
