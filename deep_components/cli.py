"""Shared ``main`` of run_train2/3 and run_test2/3: flags, friendly errors, exit codes."""
from __future__ import annotations

import logging

from .config import add_common_flags, config_from_args
from .data.errors import DataError
from .parsing import OneLineParser
from .runtime import TrainingError, UsageError, report_error


def main(setting: str, action: str, argv: list[str] | None = None) -> int:
    ap = OneLineParser(
        prog=f"run_{action}{2 if setting == 'two_stage' else 3}.py",
        description=f"{'Train' if action == 'train' else 'Evaluate'} a {setting.replace('_', '-')} cascade.")
    add_common_flags(ap)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from . import kernels
    from .distributed import context, init_distributed, shutdown
    from .runtime import keep_freed_memory

    keep_freed_memory()

    try:
        cfg = config_from_args(a, setting, for_test=action == "test")
        _, cfg.device = init_distributed(cfg.device)
        if not context().is_main:
            logging.getLogger().setLevel(logging.ERROR)
        if action == "train":
            from .train import train

            run_dir = train(cfg)
            if context().is_main:
                print(f"trained {cfg.loss_type} ({setting}, run {cfg.run_id}) -> {run_dir} "
                      f"[kernels: {kernels.selected(short=True)}]")
        else:
            from .run_eval import evaluate_run, format_metrics

            m = evaluate_run(cfg)
            if context().is_main:
                print(f"{m['method']} ({setting}, run {m['run_id']}, test day {m['test_day']}"
                      f"{', SYNTHETIC data' if m['synthetic'] else ''}): {format_metrics(m)}")
    except (DataError, UsageError, ValueError, TrainingError, OSError) as e:
        return report_error(e)       # one line; an OSError names the file it could not use
    finally:
        shutdown()
    return 0
