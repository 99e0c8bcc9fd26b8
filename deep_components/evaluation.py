"""Evaluating a run folder: its towers on its test day (or another), the metrics written into
the folder; re-runnable without retraining.  The command is ``python -m deep_components.evaluate``
(evaluate.py; the paper's names ``run_test2.py`` / ``run_test3.py`` fix the setting)."""
from __future__ import annotations

import time

import torch

from . import kernels, matmul
from .config import RunConfig
from .scoring import evaluate
from .run_folder import RunFolder
from .devices import resolve_device
from .errors import UsageError


def evaluate_run(cfg: RunConfig, given: set[str] | frozenset = frozenset()) -> dict:
    """Load the run folder's towers, evaluate them on the test day (and on the run's validation
    day, if it has one: valid_metrics.json, its joint recall also in the result), write the
    metrics.

    The data folder defaults to the one recorded in the run's config.json; the towers must come
    from the training config.json describes (its run key) and fit the data (same id counts);
    the result says whether the day is the run's own data (by content).  ``given``: the flags
    the command line named (checked against the run's own values, config.validate_eval).  The
    run folder is locked while it is read and the metrics are written."""
    from .config import validate_evaluation
    from .distributed import context

    folder = RunFolder(cfg.resolved_run_dir())
    saved = folder.config()
    validate_evaluation(cfg, saved, given)
    device = resolve_device(cfg.device)
    kernels.select(cfg.kernels, device)
    matmul.select(cfg.matmul, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if saved["setting"] != cfg.setting:
        raise UsageError(f"{folder.path} holds a {saved['setting']} run, not {cfg.setting}")
    lock = folder.lock() if context().is_main else None
    try:
        run = folder.open_trained(device, cfg.data_dir)
        test_day = cfg.test_day or saved["test_day"]
        scored = {test_day: _evaluate_day(run, test_day, cfg, device)}
        result = scored[test_day] | {"test_day": test_day}
        valid_day = saved.get("valid_day")
        valid = None
        if valid_day:                  # scored once when --test_day names the validation day
            if valid_day not in scored:
                scored[valid_day] = _evaluate_day(run, valid_day, cfg, device)
            valid = scored[valid_day] | {"valid_day": valid_day}
            result["valid_joint_recall"] = valid["joint_recall"]
        if context().is_main:
            folder.write_result("metrics", result)
            if valid is not None:
                folder.write_result("valid_metrics", valid)
            events = folder.events(cfg.tensorboard)
            events.metrics(result, (folder.summary() or {}).get("steps", 0))
            events.close()
    finally:
        if lock is not None:
            lock.release()
    return result


def _evaluate_day(run, day: str, cfg: RunConfig, device: torch.device) -> dict:
    """The metrics of ``run``'s towers on ``day`` of its data folder, with what says which run,
    which data and whether it is the run's own."""
    t0 = time.perf_counter()
    data = run.load_day(day, cfg.cache_dir)
    own = run.own_data({day: data.stats["content_digest"]})
    if run.vocab is not None:      # ids onto compact rows; ids never seen go to the unknown row
        data = run.vocab.apply(data)
    result = evaluate(run.models, data, run.spec, device, cfg.eval_batch_size)
    return result | run.identity() | {
        "loss_options": run.config.get("loss_options", {}), "data_dir": run.data_dir,
        "own_data": own, "eval_seconds": round(time.perf_counter() - t0, 3)}


def format_metrics(m: dict) -> str:
    parts = [f"joint recall {m['joint_recall']:.4f}"]
    for name, s in m["stages"].items():
        parts.append(f"{name}: R@10@{s['quota']} {s['recall']:.4f} NDCG@10 {s['ndcg']:.4f} "
                     f"tau {s['kendall']:.4f}")
    return " | ".join(parts)
