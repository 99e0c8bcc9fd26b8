"""The shared ``main`` of every training / evaluation entry point: flags, one-line errors, exit
codes.  ``python -m deep_components.train --setting NAME ...`` and ``python -m
deep_components.evaluate --setting NAME ...`` take any registered cascade; ``run_train2.py``,
``run_train3.py``, ``run_test2.py`` and ``run_test3.py`` are the paper's names for the two- and
three-stage settings."""
from __future__ import annotations

import logging

from .config import add_run_flags, config_from_args, given_flags
from .data.errors import DataError
from .parsing import OneLineParser
from .errors import TrainingError, UsageError, report_error

#: the paper's script names of its two settings
PAPER_SCRIPTS = {"two_stage": "2", "three_stage": "3"}


def main(setting: str | None, action: str, argv: list[str] | None = None) -> int:
    """``setting`` None: the cascade comes from ``--setting``; ``action``: "train" or "evaluate"."""
    verb = "Train" if action == "train" else "Evaluate"
    if setting is None:
        prog = f"python -m deep_components.{'train' if action == 'train' else 'evaluate'}"
        description = f"{verb} a cascade of any registered setting (--setting)."
    else:
        prog = f"run_{'train' if action == 'train' else 'test'}{PAPER_SCRIPTS.get(setting, '')}.py"
        description = f"{verb} a {setting.replace('_', '-')} cascade."
    ap = OneLineParser(prog=prog, description=description)
    add_run_flags(ap, with_setting=setting is None, action=action)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from . import kernels
    from .distributed import context, init_distributed, shutdown
    from .process import keep_freed_memory

    keep_freed_memory()

    try:
        cfg = config_from_args(a, setting, for_evaluation=action == "evaluate")
        _, cfg.device = init_distributed(cfg.device, cfg.dist_timeout)
        if not context().is_main:
            logging.getLogger().setLevel(logging.ERROR)
        if action == "train":
            from .training import train

            run_dir = train(cfg)
            if context().is_main:
                print(f"trained {cfg.method} ({cfg.setting}, run {cfg.run_id}) -> {run_dir} "
                      f"[kernels: {kernels.selected(short=True)}]")
        else:
            from .evaluation import evaluate_run, format_metrics

            m = evaluate_run(cfg, given_flags(ap, argv))
            if context().is_main:
                other = "" if m["own_data"] else f", on {m['data_dir']}: NOT the run's own data"
                print(f"{m['method']} ({cfg.setting}, run {m['run_id']}, test day {m['test_day']}"
                      f"{', SYNTHETIC data' if m['synthetic'] else ''}{other}): {format_metrics(m)}")
    except (DataError, UsageError, ValueError, TrainingError, OSError) as e:
        return report_error(e)       # one line; an OSError names the file it could not use
    finally:
        shutdown()
    return 0
