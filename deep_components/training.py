"""Training a cascade (docs/methods.md §8), for any :class:`CascadeSpec`: the trainer, the data
a run prepares, and ``train(cfg)``, which trains one run folder.

One pass over the training days in date order, each day shuffled (seeded) and cut into batches
(last incomplete batch dropped); one Adam per tower (lr 0.01) plus one for the loss module's
weights when it has any; each step: forward every tower on all N slots, loss dict, zero grads,
one backward of ``"loss"``, step every optimiser (methods.md §5 shows this equals the reference's
per-method update patterns).

The command is ``python -m deep_components.train --setting NAME --method M ...`` (train.py; the
paper's names ``run_train2.py`` / ``run_train3.py`` fix the setting).
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import kernels, matmul
from .spec import CascadeSpec
from .specs import get_spec
from .config import RunConfig
from .checkpoint import differences, restore
from .data import (DayData, batch_indices, default_split, list_days, load_day, read_id_counts,
                   synthetic_info)
from .data.batches import DayBatches
from .data.cache import id_count_digest
from .data.errors import DataError
from .data.vocab import Vocabulary, load_vocabulary
from .distributed import context
from .scoring import evaluate
from .lazy_adam import LazyAdam
from .native_adam import NativeAdam, attach_row_grads, attach_step_rows, fast_path
from .native_adam import track_rows as touched_rows_masks
from .loss import build_loss
from .models import build_models, forward_all
from .precision import autocast, grad_scaler
from .run_folder import RunFolder
from .devices import resolve_device
from .errors import TrainingError, UsageError
from .files import ensure_writable
from .process import environment, seed_everything

log = logging.getLogger("deep_components.train")
#: the parts of a training step the summary times; the first WARMUP_STEPS steps are not counted
STEP_PARTS = ("forward", "loss", "backward", "finite_check", "optimiser")
WARMUP_STEPS = 5

def build_optimizers(models: list[nn.Module], loss_fn: nn.Module, lr: float,
                     emb_optimizer: str = "adam", track_rows: bool = True,
                     row_grads: bool = True) -> list[torch.optim.Optimizer]:
    """One Adam per tower (the paper's recipe), plus one for the loss module's weights.

    Adam is :class:`NativeAdam`: torch's Adam, bit for bit, in one native pass on the CPU.  With
    ``track_rows`` (one process: the rows a rank touched are not the rows the all-reduced
    gradient touches) a tower's large tables are updated on the rows their lookups have used only,
    and with ``row_grads`` (no gradient scaler, which reads ``.grad``) their gradients are summed
    into a running buffer instead of a fresh dense tensor per lookup — both the same bits as
    dense Adam (deep_components.native_adam).  ``emb_optimizer="lazy_adam"``: the towers'
    embedding tables get lazy Adam, which updates the moments and values of the rows a batch
    touched only — NativeAdam's lazy step on row gradients (dense tables, ``row_grads``), or
    :class:`LazyAdam` on sparse gradients (tables built ``sparse``: several processes, a
    scaler, CUDA); the dense layers keep Adam."""
    opts: list[torch.optim.Optimizer] = []
    for m in models:
        if emb_optimizer == "lazy_adam":
            emb = [p for n, p in m.named_parameters() if n.startswith("emb.")]
            dense = [p for n, p in m.named_parameters() if not n.startswith("emb.")]
            sparse = any(t.sparse for t in m.modules() if isinstance(t, nn.Embedding))
            if sparse or not row_grads or not fast_path()[0]:
                lazy = LazyAdam(emb, lr=lr)
            else:
                lazy = NativeAdam(emb, lr=lr, step_rows=attach_step_rows(m),
                                  row_grads=attach_row_grads(m))
            opts += [NativeAdam(dense, lr=lr), lazy]
        else:
            masks = touched_rows_masks(m) if track_rows else None
            rgs = attach_row_grads(m) if track_rows and row_grads else None
            opts.append(NativeAdam(m.parameters(), lr=lr, row_masks=masks, row_grads=rgs))
    if any(True for _ in loss_fn.parameters()):
        opts.append(NativeAdam(loss_fn.parameters(), lr=lr))
    return opts


def resolve_split(cfg: RunConfig, days: list[str]) -> tuple[list[str], str | None, str]:
    """(training days, validation day or None, test day) of ``cfg`` on the data's ``days``.

    The split's days unless --train_days / --test_day name others; --valid_day (a date, or
    ``auto``: the day before the test day) is held out of the split's training days (given
    --train_days must leave it out themselves)."""
    if not days:
        raise DataError(f"{cfg.data_dir}: no days found under all_stage/")
    train_days, test_day = default_split(days) if len(days) >= 2 else (days, None)
    if cfg.train_days:
        train_days = list(cfg.train_days)
    if cfg.test_day:
        test_day = cfg.test_day
    valid_day = cfg.valid_day
    if valid_day == "auto":
        before = [d for d in days if test_day and d < test_day]
        if not before:
            raise UsageError(f"--valid_day auto: no day before the test day {test_day} in "
                             f"{cfg.data_dir}")
        valid_day = before[-1]
    missing = [d for d in list(train_days) + [valid_day, test_day] if d and d not in days]
    if missing:
        raise UsageError(f"days {missing} not found in {cfg.data_dir} (available: {days[0]} ... "
                         f"{days[-1]}, {len(days)} days)")
    if test_day in train_days:
        raise UsageError(f"test day {test_day} is also a training day")
    if valid_day == test_day and valid_day:
        raise UsageError(f"--valid_day {valid_day} is also the test day")
    if valid_day in train_days:
        if cfg.train_days:
            raise UsageError(f"--valid_day {valid_day} is also one of --train_days")
        train_days = [d for d in train_days if d != valid_day]
        if not train_days:
            raise UsageError(f"--valid_day {valid_day} leaves no training day")
    return sorted(train_days), valid_day, test_day


class Trainer:
    """Towers, loss and optimisers of one run, trained day by day (``train_day``).

    The shuffle of a day depends on (seed, day_index), where day_index is the day's position in
    the run's day list, so training days[0..t-1] in one go or across calls gives the same model.
    ``on_checkpoint(day_index, next_batch)`` is called every ``cfg.ckpt_every`` steps.
    """

    def __init__(self, cfg: RunConfig, spec: CascadeSpec, root: Path, id_counts: dict[str, int],
                 device: torch.device, seed: int, vocab: Vocabulary | None = None,
                 days: dict[str, DayData] | None = None):
        self.cfg, self.spec, self.root, self.device, self.seed = cfg, spec, root, device, seed
        self.vocab = vocab
        self.days = days or {}          # days already opened (prepare_data), by date
        self.dist = context()
        seed_everything(seed)
        # lazy Adam: sparse gradients (LazyAdam), or, on one CPU process with the native step,
        # dense tables whose gradients go to row buffers (NativeAdam's lazy step; no scaler)
        self.scaler = grad_scaler(cfg.precision, device)
        native_lazy = (device.type == "cpu" and not self.dist.enabled and self.scaler is None
                       and fast_path()[0])
        self.models = [m.to(device) for m in build_models(
            spec, id_counts, cfg.emb_dim, vocab=vocab, seed=seed,
            sparse=cfg.emb_optimizer == "lazy_adam" and not native_lazy)]
        # under torchrun each tower is wrapped in DDP (bucketed gradient all-reduce)
        self.forward_models = self.models
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            self.forward_models = [DDP(m, device_ids=ids) for m in self.models]
        self.loss_fn = build_loss(cfg.method, spec, mask_mode=cfg.mask_mode,
                                  **cfg.loss_kwargs()).to(device)
        self.loss_fn.tensor_components = True          # logged in batches, not read every step
        self.precision = cfg.precision
        self.optimizers = build_optimizers(self.models, self.loss_fn, cfg.lr, cfg.emb_optimizer,
                                           track_rows=not self.dist.enabled,
                                           row_grads=self.scaler is None)
        self.params = [p for o in self.optimizers for g in o.param_groups for p in g["params"]]
        self._pending: list[tuple[dict, dict[str, Any]]] = []    # steps not yet logged
        self.step = 0
        self.requests = 0
        self.skipped = 0
        #: steady state: seconds of each part of a step after the first WARMUP_STEPS, and the
        #: requests of those steps (CPU: the parts are exact; on CUDA they are launch times)
        self.steady = {"steps": 0, "requests": 0} | {k: 0.0 for k in STEP_PARTS}
        self.on_checkpoint = None
        #: called with every batch of log records and the day's requests/s (event files)
        self.on_records = None
        self.last_checkpoint = "none yet"

    def load(self, date: str) -> DayData:
        """The day (memory-mapped from the cache), opened once per run."""
        if date not in self.days:
            self.days[date] = load_day(self.root, date, self.spec, self.cfg.tz,
                                       cache_dir=self.cfg.cache_dir, history_len=self.cfg.seq_len)
        return self.days[date]

    def load_rows(self, date: str, in_memory: bool = False):
        """The day with ids mapped onto table rows (compact vocabulary), in RAM if asked."""
        day = self.load(date)
        if in_memory:
            day = day.in_memory()
        return self.vocab.apply(day, in_place=in_memory) if self.vocab is not None else day

    def _finite_flag(self, loss: torch.Tensor) -> torch.Tensor:
        """0-d bool on the device: the loss and every gradient are finite (the gradients' norms
        summed on the device; under fp16 the scaler skips steps whose gradients overflow)."""
        flag = torch.isfinite(loss.detach())
        if self.scaler is None:
            grads = [p.grad._values() if p.grad.is_sparse else p.grad
                     for p in self.params if p.grad is not None]
            grads += [g for o in self.optimizers if hasattr(o, "extra_grads") for g in o.extra_grads()]
            if grads:
                flag = flag & torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())
        return flag

    def train_step(self, b: dict[str, torch.Tensor], head: dict | None = None,
                   read: bool = False) -> tuple[dict[str, Any], bool, list[dict]]:
        """Forward (the towers under --precision's autocast, the loss in float32), backward,
        step.  Returns (loss dict: detached tensors, ok, log records); not ok = non-finite loss
        or gradient, in which case no parameter moved.

        ``head`` ({"step", "day"}): the step's values are buffered for the loss log; ``read``:
        every buffered step's values are read in the same transfer as the finite flag and
        returned as records.  So a step waits for the device once.  Every rank runs the backward
        (the gradient all-reduce never waits for a rank that skipped it)."""
        t = [time.perf_counter()]
        with autocast(self.precision, self.device):
            scores = forward_all(self.forward_models, b)
        t.append(time.perf_counter())
        out = self.loss_fn([s.float() for s in scores], b["labels"], b["item_mask"])
        t.append(time.perf_counter())
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss = out["loss"]
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        t.append(time.perf_counter())
        self.dist.average_grads(self.loss_fn.parameters())
        if self.scaler is not None:
            for opt in self.optimizers:
                self.scaler.unscale_(opt)
        if head is not None:
            self._pending.append((head, out))
        flag = self._finite_flag(loss)
        if read:
            ok, values = self.dist.read_flag_and_mean(flag, self._stacked())
            records = self._records(values)
        else:
            ok, records = self.dist.read_flag_and_mean(flag)[0], []
        t.append(time.perf_counter())
        if ok:
            for opt in self.optimizers:
                self.scaler.step(opt) if self.scaler is not None else opt.step()
        if self.scaler is not None:
            self.scaler.update()
        t.append(time.perf_counter())
        if self.step >= WARMUP_STEPS:
            st = self.steady
            st["steps"] += 1
            st["requests"] += len(b["labels"])
            for k, a, z in zip(STEP_PARTS, t, t[1:]):
                st[k] += z - a
        return out, ok, records

    def steady_summary(self) -> dict:
        """requests/s and the mean step split (seconds) over the steps after WARMUP_STEPS."""
        st = self.steady
        if not st["steps"]:
            return {}
        total = sum(st[k] for k in STEP_PARTS)
        return {"steady_steps": st["steps"],
                "steady_requests_per_s": round(st["requests"] / total, 1) if total > 0 else None,
                "step_split_s": {k: round(st[k] / st["steps"], 5) for k in STEP_PARTS}}

    def _stacked(self) -> torch.Tensor:
        """The buffered steps' values (loss, then components), float64, in one tensor."""
        return torch.stack([
            v.detach().double() if isinstance(v, torch.Tensor)
            else torch.tensor(float(v), dtype=torch.float64, device=self.device)
            for _, out in self._pending for v in [out["loss"]] + [out[k] for k in out if k != "loss"]])

    def _records(self, values: list[float]) -> list[dict]:
        """Log records {step, day, loss, components...} of the buffered steps; clears them."""
        it = iter(values)
        out = [head | {k: next(it) for k in ["loss"] + [k for k in o if k != "loss"]}
               for head, o in self._pending]
        self._pending.clear()
        return out

    def read_log(self) -> list[dict]:
        """The buffered steps' records (one device read; averaged over ranks)."""
        if not self._pending:
            return []
        return self._records(self.dist.mean_tensor(self._stacked()).tolist())

    def reached_max_steps(self) -> bool:
        return bool(self.cfg.max_steps) and self.step >= self.cfg.max_steps

    def train_day(self, date: str, day_index: int, log_file=None, start_batch: int = 0) -> int | None:
        """One pass over ``date`` (shuffled, full batches) from batch ``start_batch``.
        Returns None when the day is done, or the next batch index when ``max_steps`` stopped
        it before its last batch.

        The loss values stay on the device and are written to ``log_file`` (one line per
        step, averaged over ranks) every ``print_freq`` steps, before every checkpoint, at a
        non-finite step and at the day's last step, read with that step's finite flag."""
        cfg = self.cfg
        arrays = self.load_rows(date, in_memory=True).arrays()
        batches = batch_indices(len(arrays["request_id"]), cfg.batch_size, seed=[self.seed, day_index])
        feeder = DayBatches(arrays, [self.dist.shard(b) for b in batches], self.device)
        bar = tqdm(range(start_batch, len(batches)), desc=f"{cfg.method} run {cfg.run_id} {date}",
                   unit="batch", disable=not cfg.progress or not self.dist.is_main, leave=False,
                   dynamic_ncols=True,
                   initial=start_batch, total=len(batches))
        t_day = time.perf_counter()

        done = [0]                                    # batches trained in this call

        def rate() -> float:
            return done[0] * cfg.batch_size / max(time.perf_counter() - t_day, 1e-9)

        def write(records: list[dict]) -> None:
            if log_file is not None:
                log_file.writelines(json.dumps(r) + "\n" for r in records)
            if records and self.on_records is not None:
                self.on_records(records, rate())

        try:
            for n, bi in enumerate(bar):
                if self.reached_max_steps():
                    write(self.read_log())
                    return bi
                nxt = self.step + 1
                ckpt = bool(cfg.ckpt_every and nxt % cfg.ckpt_every == 0 and self.on_checkpoint)
                read = (ckpt or bi == len(batches) - 1 or bool(cfg.print_freq and nxt % cfg.print_freq == 0)
                        or bool(cfg.max_steps and nxt >= cfg.max_steps))
                _, ok, records = self.train_step(feeder[bi], {"step": nxt, "day": date}, read)
                self.step += 1
                self.requests += len(batches[bi])
                done[0] += 1
                if not ok:
                    records = records or self.read_log()
                    write(records[:-1])
                    rec = dict(records[-1], skipped=True)
                    self._non_finite(rec, date, bi)           # raises unless --skip_nonfinite
                    write([rec])
                elif records:
                    write(records)
                    bar.set_postfix(loss=f"{records[-1]['loss']:.4f}", req_s=f"{rate():,.0f}")
                    if cfg.print_freq:
                        log.info("step %d day %s loss %.5f (%.0f req/s)", self.step, date,
                                 records[-1]["loss"], rate())
                if ckpt:
                    if log_file is not None:
                        log_file.flush()
                    self.on_checkpoint(day_index, bi + 1)
            write(self.read_log())
        finally:
            bar.close()
            feeder.close()
        return None

    def _non_finite(self, rec: dict, date: str, batch: int) -> None:
        comps = ", ".join(f"{k}={v:.6g}" for k, v in rec.items()
                          if k not in ("step", "day", "skipped") and isinstance(v, float))
        what = "loss" if not np.isfinite(rec["loss"]) else "gradient"
        if self.cfg.skip_nonfinite:
            self.skipped += 1
            log.warning("skipped batch %d of %s (step %d): non-finite %s (%s)", batch, date,
                        self.step, what, comps)
            return
        raise TrainingError(
            f"non-finite {what} at step {self.step} (day {date}, batch {batch}): {comps}. "
            f"Nothing was updated by this step; the last good checkpoint is {self.last_checkpoint}. "
            "Lower --lr, check the data, or pass --skip_nonfinite to skip such batches.")

    def evaluate(self, date: str) -> dict:
        return evaluate(self.models, self.load_rows(date), self.spec, self.device,
                        self.cfg.eval_batch_size)


@dataclass
class PreparedData:
    """The run's days converted: their compact vocabulary (None: full tables) and the data's
    digests ({"id_cnt": d, "days": {date: d}}, by content: data.cache.content_digest)."""

    vocab: Vocabulary | None
    digest: dict[str, Any]
    #: the days, opened (memory-mapped from the cache) once for the whole run
    days: dict[str, DayData]

    def sizes(self, dates: list[str]) -> list[int]:
        return [self.days[d].num_requests for d in dates]


def prepare_data(cfg: RunConfig, spec: CascadeSpec, root: Path, days: list[str],
                 vocab: Vocabulary | None = None) -> PreparedData:
    """Convert ``days`` into the day cache, open each once, record their digests and build their
    vocabulary from them (``--vocab compact``; a ``vocab`` given, e.g. a checkpoint's, is kept).
    Under torchrun rank 0 does it first, so ranks never build the same cache twice."""
    ctx = context()

    def build():
        opened = {d: load_day(root, d, spec, cfg.tz, cache_dir=cfg.cache_dir,
                              history_len=cfg.seq_len) for d in days}   # every day: checked now
        digest = {"id_cnt": id_count_digest(root),
                  "days": {d: day.stats["content_digest"] for d, day in opened.items()}}
        v = vocab
        if cfg.vocab == "compact" and vocab is None:
            v = load_vocabulary(root, days, spec, cfg.tz, cache_dir=cfg.cache_dir,
                                history_len=cfg.seq_len, opened=opened)
        return PreparedData(v, digest, opened)

    if ctx.enabled and not ctx.is_main:
        ctx.barrier()
        return build()
    out = build()
    ctx.barrier()
    return out


def checkpoint_meta(cfg: RunConfig, spec: CascadeSpec, id_counts: dict[str, int],
                    train_days: list[str], seed: int, vocab: Vocabulary | None = None) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed (checkpoint.MATCH_KEYS)."""
    return {"setting": spec.name, "method": cfg.method, "towers": list(spec.towers),
            "emb_dim": cfg.emb_dim, "id_counts": dict(id_counts), "loss_options": cfg.loss_kwargs(),
            "mask_mode": cfg.mask_mode, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "seq_len": cfg.seq_len, "train_days": list(train_days), "seed": seed, "tz": cfg.tz,
            "vocab": cfg.vocab, "vocab_digest": vocab.digest() if vocab is not None else None,
            "emb_optimizer": cfg.emb_optimizer, "precision": cfg.precision}


def _check_steps(cfg: RunConfig, root: Path, sizes: list[int]) -> None:
    """Refuse a run in which no training step would happen (every day smaller than a batch)."""
    if sum(n // cfg.batch_size for n in sizes) == 0:
        raise UsageError(f"--batch_size {cfg.batch_size} is larger than every training day of "
                         f"{root} ({min(sizes):,}..{max(sizes):,} requests a day): no training "
                         "step would run; lower --batch_size")


def _check_resumable(folder: RunFolder, ckpt: dict, cfg: RunConfig, train_days: list[str]) -> None:
    """A finished run, or a --max_steps it has already reached, is not a training to continue."""
    pos = ckpt["position"]
    if pos["day_index"] >= len(train_days):
        raise UsageError(f"{folder.path}: its training is finished (all {len(train_days)} days, "
                         f"{pos['step']} steps): nothing to resume; evaluate it, or train it "
                         "again with --overwrite")
    if cfg.max_steps and cfg.max_steps <= pos["step"]:
        raise UsageError(f"--max_steps {cfg.max_steps}: the run in {folder.path} is already at "
                         f"step {pos['step']}; pass a larger --max_steps (or none) to continue it")


def _resume_differences(saved: dict, ckpt: dict, meta: dict, test_day: str | None, root: Path,
                        data: PreparedData, days: list[str],
                        valid_day: str | None = None) -> tuple[list[str], dict]:
    """(what differs between the run in the folder and this command, config.json updates)."""
    from .run_folder import data_differences

    diffs = differences(ckpt["meta"], meta)
    if saved.get("test_day") != test_day:
        diffs.append(f"test_day: run {saved.get('test_day')!r}, this run {test_day!r}")
    if saved.get("valid_day") != valid_day:
        diffs.append(f"valid_day: run {saved.get('valid_day')!r}, this run {valid_day!r}")
    updates = {}
    moved = Path(saved["data_dir"]).resolve() != root.resolve()
    content = data_differences(saved.get("data_digest"), data.digest, days)
    if content or (moved and not saved.get("data_digest")):
        diffs.append(f"data_dir: run {saved['data_dir']}, this run {root}"
                     + (f" ({'; '.join(content)})" if content else " (content unknown)"))
    elif moved:                   # the same bytes at another path: the run's data, moved
        log.warning("resuming on %s: the same data as %s (by content)", root, saved["data_dir"])
        updates["data_dir"] = str(root)
    return diffs, updates


def train(cfg: RunConfig) -> Path:
    """Train one run; returns its run folder (config, env, loss log, checkpoint, towers, summary).

    Everything that can be checked is checked before the run folder is touched (flags, time
    zone, the cache location, a checkpoint for --resume, existing results) or before its first
    result is written (every day converted, the number of steps, what a --resume would change);
    the folder is locked for the whole run, and a folder this call created is removed again if
    the run fails before training starts."""
    from .config import validate
    from .data.cache import default_cache_dir
    from .specs import SPECS

    if cfg.resume and cfg.setting not in SPECS and RunFolder(cfg.resolved_run_dir()).has_config():
        RunFolder(cfg.resolved_run_dir()).spec()     # a setting its experiment file defined
    validate(cfg)
    ctx = context()
    spec = get_spec(cfg.setting)
    device = resolve_device(cfg.device)
    kernels.select(cfg.kernels, device)
    matmul.select(cfg.matmul, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    root = Path(cfg.data_dir)
    days = list_days(root)
    train_days, valid_day, test_day = resolve_split(cfg, days)
    id_counts = read_id_counts(root)
    seed = cfg.resolved_seed()
    folder = RunFolder(cfg.resolved_run_dir())
    folder.check_can_train(cfg.resume, cfg.overwrite)
    created = not folder.path.exists()
    lock = None
    if ctx.is_main:
        ensure_writable(Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(root),
                        "the data cache")
        ensure_writable(folder.path, "the run folder")
        lock = folder.lock()
    started = False
    try:
        ckpt, saved = None, None
        saved_vocab = None
        if cfg.resume:
            ckpt, saved = folder.load_checkpoint(), folder.config()
            _check_resumable(folder, ckpt, cfg, train_days)
            if cfg.vocab == "compact" and "vocab" in ckpt:
                try:
                    saved_vocab = Vocabulary.from_state(ckpt["vocab"])
                except (KeyError, ValueError, TypeError) as e:
                    raise UsageError(f"{folder.checkpoint_path()}: the checkpoint's vocabulary is "
                                     f"unreadable ({e})") from None
        # every day of the run is converted (and so checked) before the first step; the
        # vocabulary covers them all (training days and the test day): a test-day id absent
        # from training keeps its initial vector, exactly as in a full-size table
        run_days = [d for d in train_days + [valid_day, test_day] if d]
        data = prepare_data(cfg, spec, root, run_days, saved_vocab)
        vocab = data.vocab
        _check_steps(cfg, root, data.sizes(train_days))
        meta = checkpoint_meta(cfg, spec, id_counts, train_days, seed, vocab)
        updates = {}
        if ckpt is not None:
            diffs, updates = _resume_differences(saved, ckpt, meta, test_day, root, data, run_days,
                                                 valid_day)
            if diffs:
                raise UsageError(f"{folder.path}: --resume continues the training in the folder, "
                                 "and this command differs from it: " + "; ".join(diffs))
        trainer = Trainer(cfg, spec, root, id_counts, device, seed, vocab, data.days)
        param_bytes = sum(p.numel() * p.element_size() for p in trainer.params)
        if ctx.is_main:
            ensure_writable(folder.path, "a checkpoint", need_bytes=4 * param_bytes)  # params + Adam + towers
            if vocab is not None:
                log.info("compact vocabulary: %s rows (id_cnt: %s)", vocab.sizes(),
                         {f: id_counts[f] for f in vocab.ids})
        if ckpt is not None:
            restore(trainer, ckpt, folder.checkpoint_path())
        started = True
        return _run_training(cfg, spec, root, folder, trainer, meta, ckpt, train_days, test_day,
                             id_counts, seed, device, data, updates, valid_day)
    except BaseException:
        if created and not started and ctx.is_main:
            import shutil

            shutil.rmtree(folder.path, ignore_errors=True)   # the lock is released just below
        raise
    finally:
        if lock is not None:
            lock.release()


def _run_training(cfg, spec, root, folder: RunFolder, trainer, meta, ckpt, train_days, test_day,
                  id_counts, seed, device, data: PreparedData, updates: dict,
                  valid_day: str | None = None) -> Path:
    ctx = context()
    vocab = data.vocab
    start_day, start_batch, start_step = 0, 0, 0
    run_key = None
    if ckpt is not None:
        pos = ckpt["position"]
        start_day, start_batch, start_step = pos["day_index"], pos["batch_index"], pos["step"]
        trainer.step, trainer.requests, trainer.skipped = pos["step"], pos["requests"], pos["skipped"]
        trainer.last_checkpoint = f"{folder.checkpoint_path()} (step {pos['step']})"
        if ctx.is_main:
            run_key = folder.begin_resume(pos["step"], updates)
        log.warning("resuming %s from step %d (day %d, batch %d)", folder.path, pos["step"],
                    start_day, start_batch)
    elif ctx.is_main:
        import uuid

        run_key = uuid.uuid4().hex
        resolved = cfg.to_dict() | {"train_days": train_days, "valid_day": valid_day,
                                    "test_day": test_day, "seed": seed,
                                    "synthetic": synthetic_info(root), "id_counts": id_counts,
                                    "vocab_sizes": vocab.sizes() if vocab is not None else None,
                                    "loss_repr": repr(trainer.loss_fn), "world_size": ctx.world,
                                    "data_digest": data.digest, "spec": spec.to_dict(),
                                    "run_key": run_key}
        for k in ("resume", "overwrite"):    # how this command was called, not what the run is
            resolved.pop(k, None)
        folder.begin_training(resolved, environment(device) | {"world_size": ctx.world,
                                                               "kernels": kernels.selected(),
                                                               "matmul": matmul.selected()})
    ckpt_times: list[float] = []
    saved_at = [ckpt["position"]["step"] if ckpt is not None else None]

    def checkpoint(day_index: int, next_batch: int) -> None:
        pos = {"day_index": day_index, "batch_index": next_batch, "step": trainer.step,
               "requests": trainer.requests, "skipped": trainer.skipped}
        if ctx.is_main:                       # every rank holds the same state
            ckpt_times.append(folder.save_checkpoint(trainer, meta, pos))
        saved_at[0] = trainer.step
        trainer.last_checkpoint = f"{folder.checkpoint_path()} (step {trainer.step})"

    trainer.on_checkpoint = checkpoint
    events = folder.events(cfg.tensorboard and ctx.is_main,
                           purge_step=start_step + 1 if ckpt is not None else None)
    trainer.on_records = lambda records, rate: events.steps(records, rate, cfg.lr)
    t_start = time.perf_counter()
    requests_before = trainer.requests
    log_file = folder.open_loss_log(append=cfg.resume) if ctx.is_main else nullcontext()
    finished = False
    with log_file:
        for di, date in enumerate(train_days):
            if di < start_day:
                continue
            try:
                stopped_at = trainer.train_day(date, di, log_file if ctx.is_main else None,
                                               start_batch if di == start_day else 0)
                if ctx.is_main:
                    log_file.flush()
            except OSError as e:
                raise UsageError(f"{e.filename or folder.loss_log_path()}: cannot write "
                                 f"({e.strerror or e}); the last good checkpoint is "
                                 f"{trainer.last_checkpoint}") from None
            finished = stopped_at is None and di == len(train_days) - 1
            if stopped_at is None:
                checkpoint(di + 1, 0)                                # day boundary
            elif saved_at[0] != trainer.step:
                checkpoint(di, stopped_at)                           # where --max_steps stopped
            if trainer.reached_max_steps():
                break
    seconds = time.perf_counter() - t_start
    events.close()
    ctx.barrier()
    if not ctx.is_main:
        return folder.path
    folder.write_curves(f"{cfg.method} ({spec.name}, run {cfg.run_id}"
                        f"{', ' + cfg.tag if cfg.tag else ''})")
    folder.save_towers(trainer.models, trainer.loss_fn, spec, id_counts, cfg, vocab, run_key)
    done_requests = trainer.requests - requests_before
    folder.write_summary({
        "world_size": ctx.world, "run_key": run_key,
        "steps": trainer.step, "requests": trainer.requests, "seconds": round(seconds, 3),
        "requests_per_s": round(done_requests / seconds, 1) if seconds > 0 else None,
        "skipped_nonfinite": trainer.skipped, "checkpoints": len(ckpt_times),
        "checkpoint_seconds": round(sum(ckpt_times), 3), "resumed": cfg.resume,
        "finished": finished,
        "kernels": kernels.selected(), "matmul": matmul.selected(),
        "train_days": train_days} | trainer.steady_summary())
    return folder.path
