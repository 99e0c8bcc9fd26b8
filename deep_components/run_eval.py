"""Evaluate a finished run folder on its test day (re-runnable without retraining)."""
from __future__ import annotations

import time
from pathlib import Path


from . import kernels
from .cascade import get_spec
from .config import RunConfig, saved_method
from .data import load_day, read_id_counts
from .evaluate import evaluate
from .runtime import RunLock, UsageError, read_json, resolve_device, write_json
from .checkpoint import load_towers


#: what a config.json must hold to be evaluated
CONFIG_KEYS = ("setting", "run_id", "data_dir", "test_day", "train_days")


def evaluate_run(cfg: RunConfig) -> dict:
    """Load ``<run folder>/towers.pt``, evaluate on the test day, write ``metrics.json``.

    The data folder defaults to the one recorded in the run's config.json; the towers must come
    from the training config.json describes (its run key) and fit the data (same id counts);
    the test day may be a training day only with ``allow_train_day``.  The run folder is locked
    while metrics.json is written."""
    from .config import validate_eval
    from .distributed import context

    run_dir = cfg.resolved_run_dir()
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise UsageError(f"{cfg_path}: not a run folder (no config.json); train first")
    saved = read_json(cfg_path)
    missing = [k for k in CONFIG_KEYS if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise UsageError(f"{cfg_path}: not a run configuration of this program (missing {missing})")
    if saved_method(saved) is None:
        raise UsageError(f"{cfg_path}: not a run configuration of this program (no method)")
    validate_eval(cfg, saved["train_days"])
    device = resolve_device(cfg.device)
    kernels.select(cfg.kernels, device)
    spec = get_spec(saved["setting"])
    if spec.name != cfg.setting:
        raise UsageError(f"{run_dir} holds a {spec.name} run, not {cfg.setting}")
    data_dir = cfg.data_dir or saved["data_dir"]
    if not Path(data_dir).is_dir():
        raise UsageError(f"{data_dir}: the data folder of {run_dir} is not there; pass --data_dir")
    lock = RunLock(run_dir).acquire() if context().is_main else None
    try:
        models, meta, vocab = load_towers(run_dir, device)
        if meta.get("run_key") != saved.get("run_key"):
            raise UsageError(f"{run_dir / 'towers.pt'}: comes from another training than "
                             f"{cfg_path} describes (run key {meta.get('run_key')} vs "
                             f"{saved.get('run_key')}); retrain the run")
        _check_data_fits(run_dir, meta["id_counts"], data_dir, saved["data_dir"])
        test_day = cfg.test_day or saved["test_day"]
        t0 = time.perf_counter()
        day = load_day(data_dir, test_day, spec, saved.get("tz", cfg.tz), cache_dir=cfg.cache_dir,
                       history_len=saved.get("seq_len", 50))
        if vocab is not None:      # ids onto compact rows; ids never seen go to the unknown row
            day = vocab.apply(day)
        result = evaluate(models, day, spec, device, cfg.eval_batch_size)
        result.update({"setting": spec.name, "method": saved_method(saved), "run_id": saved["run_id"],
                       "tag": saved.get("tag", ""), "loss_options": saved.get("loss_options", {}),
                       "test_day": test_day, "data_dir": str(data_dir),
                       "synthetic": bool(saved.get("synthetic")), "run_key": saved.get("run_key"),
                       "eval_seconds": round(time.perf_counter() - t0, 3)})
        if context().is_main:
            write_json(Path(run_dir) / "metrics.json", result)
    finally:
        if lock is not None:
            lock.release()
    return result


def _check_data_fits(run_dir: Path, trained: dict, data_dir: str, run_data: str) -> None:
    """The towers were trained on a dataset with these id counts; refuse another one."""
    from .data.recflow import ID_FIELDS

    counts = read_id_counts(data_dir)
    diffs = [f"{f}: towers {trained.get(f)}, data {counts.get(f)}" for f in ID_FIELDS
             if trained.get(f) != counts.get(f)]
    if diffs:
        raise UsageError(f"{run_dir}: its towers were trained on another dataset than {data_dir} "
                         f"({'; '.join(diffs[:3])}); evaluate on the run's data ({run_data})")


def format_metrics(m: dict) -> str:
    parts = [f"joint recall {m['joint_recall']:.4f}"]
    for name, s in m["stages"].items():
        parts.append(f"{name}: R@10@{s['quota']} {s['recall']:.4f} NDCG@10 {s['ndcg']:.4f} "
                     f"tau {s['kendall']:.4f}")
    return " | ".join(parts)
