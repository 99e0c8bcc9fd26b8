"""Evaluate a finished run folder on its test day (re-runnable without retraining)."""
from __future__ import annotations

import time
from pathlib import Path


from .cascade import get_spec
from .config import RunConfig
from .data import load_day
from .evaluate import evaluate
from .runtime import UsageError, read_json, resolve_device, write_json
from .train import load_towers


def evaluate_run(cfg: RunConfig) -> dict:
    """Load ``<run folder>/towers.pt``, evaluate on the test day, write ``metrics.json``."""
    run_dir = cfg.resolved_run_dir()
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise UsageError(f"{cfg_path}: not a run folder (no config.json); train first")
    saved = read_json(cfg_path)
    device = resolve_device(cfg.device)
    spec = get_spec(saved["setting"])
    if spec.name != cfg.setting:
        raise UsageError(f"{run_dir} holds a {spec.name} run, not {cfg.setting}")
    models, meta, vocab = load_towers(run_dir, device)
    data_dir = cfg.data_dir if cfg.data_dir else saved["data_dir"]
    test_day = cfg.test_day or saved["test_day"]
    t0 = time.perf_counter()
    day = load_day(data_dir, test_day, spec, saved.get("tz", cfg.tz), cache_dir=cfg.cache_dir,
                   history_len=saved.get("seq_len", 50))
    if vocab is not None:          # ids onto compact rows; ids never seen go to the unknown row
        day = vocab.apply(day)
    result = evaluate(models, day, spec, device, cfg.eval_batch_size)
    result.update({"setting": spec.name, "method": saved["loss_type"], "run_id": saved["run_id"],
                   "tag": saved.get("tag", ""), "loss_options": saved.get("loss_options", {}),
                   "test_day": test_day, "data_dir": str(data_dir),
                   "synthetic": bool(saved.get("synthetic")),
                   "eval_seconds": round(time.perf_counter() - t0, 3)})
    from .distributed import context

    if context().is_main:
        write_json(Path(run_dir) / "metrics.json", result)
    return result


def format_metrics(m: dict) -> str:
    parts = [f"joint recall {m['joint_recall']:.4f}"]
    for name, s in m["stages"].items():
        parts.append(f"{name}: R@10@{s['quota']} {s['recall']:.4f} NDCG@10 {s['ndcg']:.4f} "
                     f"tau {s['kendall']:.4f}")
    return " | ".join(parts)
