"""The generic cascade trainer (METHODS.md §8), for any :class:`CascadeSpec`.

One pass over the training days in date order, each day shuffled (seeded) and cut into batches
(last incomplete batch dropped); one Adam per tower (lr 0.01) plus one for the loss module's
weights when it has any; each step: forward every tower on all N slots, loss dict, zero grads,
one backward of ``"loss"``, step every optimiser (METHODS §5 shows this equals the reference's
per-method update patterns).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .cascade import CascadeSpec, get_spec
from .config import RunConfig
from .data import batch_indices, default_split, list_days, load_day, read_id_counts, synthetic_info
from .data.errors import DataError
from .loss import build_loss
from .models import build_tower
from .runtime import UsageError, environment, resolve_device, seed_everything, write_json

log = logging.getLogger("deep_components.train")

CHECKPOINT = "towers.pt"


def batch_to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """numpy batch -> tensors: ids int32 as they are, masks bool, labels float32."""
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if k == "labels":
            t = t.float()
        out[k] = t.to(device, non_blocking=True)
    return out


def build_models(spec: CascadeSpec, id_counts: dict[str, int], emb_dim: int = 8) -> list[nn.Module]:
    """One tower per stage, in cascade order."""
    return [build_tower(st.tower, id_counts, emb_dim) for st in spec.stages]


def forward_all(models: list[nn.Module], b: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [m(b["context"], b["history"], b["history_mask"], b["items"]) for m in models]


def resolve_split(cfg: RunConfig, days: list[str]) -> tuple[list[str], str]:
    if not days:
        raise DataError(f"{cfg.data_dir}: no days found under all_stage/")
    train_days, test_day = default_split(days) if len(days) >= 2 else (days, None)
    if cfg.train_days:
        train_days = list(cfg.train_days)
    if cfg.test_day:
        test_day = cfg.test_day
    missing = [d for d in list(train_days) + [test_day] if d not in days]
    if missing:
        raise UsageError(f"days {missing} not found in {cfg.data_dir} (available: {days[0]} ... "
                         f"{days[-1]}, {len(days)} days)")
    if test_day in train_days:
        raise UsageError(f"test day {test_day} is also a training day")
    return sorted(train_days), test_day


class Trainer:
    """Towers, loss and optimisers of one run, trained day by day (``train_day``).

    The shuffle of a day depends on (seed, day_index), where day_index is the day's position in
    the run's day list, so training days[0..t-1] in one go or across calls gives the same model.
    """

    def __init__(self, cfg: RunConfig, spec: CascadeSpec, root: Path, id_counts: dict[str, int],
                 device: torch.device, seed: int):
        self.cfg, self.spec, self.root, self.device, self.seed = cfg, spec, root, device, seed
        seed_everything(seed)
        self.models = [m.to(device) for m in build_models(spec, id_counts, cfg.emb_dim)]
        self.loss_fn = build_loss(cfg.loss_type, spec, mask_mode=cfg.mask_mode,
                                  **cfg.loss_kwargs()).to(device)
        self.optimizers = [torch.optim.Adam(m.parameters(), lr=cfg.lr) for m in self.models]
        if any(True for _ in self.loss_fn.parameters()):
            self.optimizers.append(torch.optim.Adam(self.loss_fn.parameters(), lr=cfg.lr))
        self.step = 0
        self.requests = 0

    def load(self, date: str):
        return load_day(self.root, date, self.spec, self.cfg.tz, cache_dir=self.cfg.cache_dir,
                        history_len=self.cfg.seq_len)

    def train_step(self, b: dict[str, torch.Tensor]) -> dict[str, Any]:
        out = self.loss_fn(forward_all(self.models, b), b["labels"], b["item_mask"])
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        for opt in self.optimizers:
            opt.step()
        return out

    def train_day(self, date: str, day_index: int, log_file=None) -> bool:
        """One pass over ``date`` (shuffled, full batches).  False once max_steps is reached."""
        cfg = self.cfg
        arrays = self.load(date).in_memory().arrays()
        batches = batch_indices(len(arrays["request_id"]), cfg.batch_size, seed=[self.seed, day_index])
        bar = tqdm(batches, desc=f"{cfg.loss_type} run {cfg.run_id} {date}", unit="batch",
                   disable=not cfg.progress, leave=False, dynamic_ncols=True)
        t_day = time.perf_counter()
        for bi, idx in enumerate(bar):
            out = self.train_step(batch_to_device({k: v[idx] for k, v in arrays.items()}, self.device))
            self.step += 1
            self.requests += len(idx)
            rec = {"step": self.step, "day": date, "loss": float(out["loss"].detach())}
            rec.update({k: v for k, v in out.items() if k != "loss"})
            if log_file is not None:
                log_file.write(json.dumps(rec) + "\n")
            rate = (bi + 1) * cfg.batch_size / (time.perf_counter() - t_day)
            if bi % 5 == 0:
                bar.set_postfix(loss=f"{rec['loss']:.4f}", req_s=f"{rate:,.0f}")
            if cfg.print_freq and self.step % cfg.print_freq == 0:
                log.info("step %d day %s loss %.5f (%.0f req/s)", self.step, date, rec["loss"], rate)
            if cfg.max_steps and self.step >= cfg.max_steps:
                bar.close()
                return False
        bar.close()
        return True

    def evaluate(self, date: str) -> dict:
        from .evaluate import evaluate

        return evaluate(self.models, self.load(date), self.spec, self.device, self.cfg.eval_batch_size)


def train(cfg: RunConfig) -> Path:
    """Train one run; returns its run folder (config, env, loss log, towers, train summary)."""
    spec = get_spec(cfg.setting)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    root = Path(cfg.data_dir)
    days = list_days(root)
    train_days, test_day = resolve_split(cfg, days)
    id_counts = read_id_counts(root)
    seed = cfg.resolved_seed()
    trainer = Trainer(cfg, spec, root, id_counts, device, seed)

    run_dir = cfg.resolved_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = cfg.to_dict() | {"train_days": train_days, "test_day": test_day, "seed": seed,
                                "synthetic": synthetic_info(root), "id_counts": id_counts,
                                "loss_repr": repr(trainer.loss_fn)}
    write_json(run_dir / "config.json", resolved)
    write_json(run_dir / "env.json", environment(device))

    t_start = time.perf_counter()
    with open(run_dir / "loss_log.jsonl", "w") as log_file:
        for di, date in enumerate(train_days):
            if not trainer.train_day(date, di, log_file):
                break
    seconds = time.perf_counter() - t_start
    save_towers(run_dir, trainer.models, trainer.loss_fn, spec, id_counts, cfg)
    write_json(run_dir / "train_summary.json", {
        "steps": trainer.step, "requests": trainer.requests, "seconds": round(seconds, 3),
        "requests_per_s": round(trainer.requests / seconds, 1) if seconds > 0 else None,
        "train_days": train_days})
    return run_dir


def save_towers(run_dir: Path, models: list[nn.Module], loss_fn: nn.Module, spec: CascadeSpec,
                id_counts: dict[str, int], cfg: RunConfig) -> None:
    state = {"models": [m.state_dict() for m in models], "loss": loss_fn.state_dict(),
             "meta": {"setting": spec.name, "loss_type": cfg.loss_type, "emb_dim": cfg.emb_dim,
                      "towers": list(spec.towers), "id_counts": dict(id_counts)}}
    tmp = run_dir / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    tmp.replace(run_dir / CHECKPOINT)


def load_towers(run_dir: Path, device: torch.device) -> tuple[list[nn.Module], dict[str, Any]]:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise UsageError(f"{path}: no trained towers in this run folder (train it first)")
    state = torch.load(path, map_location=device, weights_only=True)
    meta = state["meta"]
    spec = get_spec(meta["setting"])
    models = build_models(spec, meta["id_counts"], meta["emb_dim"])
    for m, sd in zip(models, state["models"]):
        m.load_state_dict(sd)
    return [m.to(device) for m in models], meta
