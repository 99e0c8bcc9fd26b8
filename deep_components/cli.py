"""The shared ``main`` of the train and evaluate commands: flags, experiment files, one-line
errors, exit codes.  ``python -m deep_components.train --setting NAME ...`` (``lcron-train``)
and ``python -m deep_components.evaluate --setting NAME ...`` (``lcron-evaluate``) take any
registered cascade; ``run_train2.py``, ``run_train3.py``, ``run_test2.py`` and ``run_test3.py``
are the paper's names for the two- and three-stage settings.

``--config FILE …`` reads experiment files (deep_components.experiment): each file is one run,
or one run per combination of its ``[grid]``; when the train command runs more than one, it
evaluates each on its test day and prints their table, as a launcher does."""
from __future__ import annotations

import logging

from .config import RunConfig, add_run_flags, config_from_args, given_flags
from .data.errors import DataError
from .errors import TrainingError, UsageError, report_error
from .parsing import OneLineParser

#: the paper's script names of its two settings
PAPER_SCRIPTS = {"two_stage": "2", "three_stage": "3"}


def build_parser(setting: str | None, action: str, prog: str | None = None) -> OneLineParser:
    verb = "Train" if action == "train" else "Evaluate"
    if setting is None:
        prog = prog or f"python -m deep_components.{'train' if action == 'train' else 'evaluate'}"
        description = f"{verb} a cascade of any registered setting (--setting)."
    else:
        prog = prog or f"run_{'train' if action == 'train' else 'test'}{PAPER_SCRIPTS.get(setting, '')}.py"
        description = f"{verb} a {setting.replace('_', '-')} cascade."
    ap = OneLineParser(prog=prog, description=description)
    add_run_flags(ap, with_setting=setting is None, action=action)
    ap.add_argument("--config", nargs="+", metavar="FILE", default=None,
                    help="experiment file(s): TOML, or the JSON configuration of a run folder "
                         "(which replays that run); the command line overrides them; a [grid] "
                         "table runs every combination as its own tagged run, a [spec] table "
                         "defines a cascade")
    return ap


def run_configs(ap, a, argv, setting: str | None, action: str) -> list[tuple[RunConfig, set[str]]]:
    """(config, the flags it was given: on the command line or in its file) of every run the
    command line and its experiment files ask for."""
    from .experiment import load

    given = given_flags(ap, argv)
    if not a.config:
        return [(config_from_args(a, setting, for_evaluation=action == "evaluate"), given)]
    out = []
    for path in a.config:
        exp = load(path)
        for values, suffix in exp.runs():
            cfg = config_from_args(a, setting, action == "evaluate", values, given, exp.source)
            if suffix:
                cfg.tag = f"{cfg.tag}-{suffix}" if cfg.tag else suffix
            out.append((cfg, given | set(values)))
    return out


def main(setting: str | None, action: str, argv: list[str] | None = None,
         prog: str | None = None) -> int:
    """``setting`` None: the cascade comes from ``--setting``; ``action``: "train" or "evaluate"."""
    ap = build_parser(setting, action, prog)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from . import kernels
    from .distributed import context, init_distributed, shutdown
    from .process import keep_freed_memory

    keep_freed_memory()

    try:
        runs = run_configs(ap, a, argv, setting, action)
        _, device = init_distributed(runs[0][0].device, runs[0][0].dist_timeout)
        for cfg, _ in runs:
            cfg.device = device
        if not context().is_main:
            logging.getLogger().setLevel(logging.ERROR)
        from .evaluation import evaluate_run, format_metrics

        results = []
        for cfg, given in runs:
            if action == "train":
                from .training import train

                run_dir = train(cfg)
                if context().is_main:
                    print(f"trained {cfg.method} ({cfg.setting}, run {cfg.run_id}"
                          f"{', ' + cfg.tag if cfg.tag and len(runs) > 1 else ''}) -> {run_dir} "
                          f"[kernels: {kernels.selected(short=True)}]")
            if action == "evaluate" or len(runs) > 1:
                m = evaluate_run(cfg, given if action == "evaluate" else frozenset())
                results.append(m)
                if context().is_main:
                    other = "" if m["own_data"] else f", on {m['data_dir']}: NOT the run's own data"
                    print(f"{m['method']} ({cfg.setting}, run {m['run_id']}, test day "
                          f"{m['test_day']}{', SYNTHETIC data' if m['synthetic'] else ''}{other}): "
                          f"{format_metrics(m)}"
                          + (f" || validation day: joint recall {m['valid_joint_recall']:.4f}"
                             if "valid_joint_recall" in m else ""))
        if len(runs) > 1 and context().is_main:
            print_tables(results)
    except (DataError, UsageError, ValueError, TrainingError, OSError) as e:
        return report_error(e)       # one line; an OSError names the file it could not use
    finally:
        shutdown()
    return 0


def print_tables(results: list[dict]) -> None:
    """One table per setting of the runs just evaluated (collect's columns, a row per tag)."""
    from .collect import build_table, table_title, to_markdown

    for setting in dict.fromkeys(m["setting"] for m in results):
        ms = [m for m in results if m["setting"] == setting]
        print("\n" + to_markdown(build_table(ms, setting), setting, table_title(ms, setting)))


def train_command() -> int:
    """The ``lcron-train`` console command."""
    return main(None, "train", prog="lcron-train")


def evaluate_command() -> int:
    """The ``lcron-evaluate`` console command."""
    return main(None, "evaluate", prog="lcron-evaluate")
