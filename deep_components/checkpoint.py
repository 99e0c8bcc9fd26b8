"""How a model is kept on disk: complete training checkpoints (to resume) and the trained towers
(to evaluate and serve); both written atomically and safely loadable.  Which files of a run
folder hold them is deep_components.run_folder's business; this module is given their paths.

A checkpoint holds every tower, every optimiser, the loss module (learnable weights), the RNG
states of Python, NumPy and torch, and the position (day index, next batch index, step).  It is
written to a temporary file unique to the process, then renamed over the last one, so a crash
mid-write never corrupts the last good checkpoint, and loaded onto the CPU with
``torch.load(weights_only=True)`` (plain tensors and containers only; no code runs): the modules
and optimisers then move each tensor to its parameter's device, so a checkpoint written on one
device kind resumes on another.  Resuming refuses a checkpoint whose method, setting or model
shape differs from the run's, saying what differs.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .spec import CascadeSpec
from .specs import get_spec
from .data.vocab import Vocabulary
from .models import build_models
from .errors import UsageError
from .files import atomic_write

FORMAT = 1
#: configuration that must be identical between a checkpoint and the run resuming it
MATCH_KEYS = ("setting", "method", "towers", "emb_dim", "id_counts", "loss_options",
              "mask_mode", "batch_size", "lr", "seq_len", "train_days", "seed", "tz", "vocab",
              "vocab_digest", "emb_optimizer", "precision")
#: the value of a MATCH_KEYS entry in a checkpoint written before the key existed
MATCH_DEFAULTS = {"precision": "fp32"}


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
             "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                       float(np_state[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states, wherever the checkpoint was mapped to (torch's
    generators take CPU ByteTensors)."""
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        saved = [s.to("cpu", torch.uint8) for s in state["cuda"]]
        n = min(len(saved), torch.cuda.device_count())
        torch.cuda.set_rng_state_all(saved[:n])


def save_checkpoint(path: Path, trainer, meta: dict, position: dict) -> float:
    """Write atomically; returns the seconds it took."""
    t0 = time.perf_counter()
    obj = {"format": FORMAT, "meta": meta, "position": position, "rng": rng_state(),
           "models": [m.state_dict() for m in trainer.models],
           "loss": trainer.loss_fn.state_dict(),
           "optimizers": [o.state_dict() for o in trainer.optimizers]}
    if trainer.scaler is not None:     # fp16: the loss scale and its growth tracker
        obj["scaler"] = trainer.scaler.state_dict()
    if trainer.vocab is not None:      # the rows' meaning travels with the rows
        obj["vocab"] = trainer.vocab.state()
    atomic_write(path, lambda f: torch.save(obj, f), "the checkpoint")
    return time.perf_counter() - t0


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path``, every tensor on the CPU."""
    if not path.is_file():
        raise UsageError(f"{path}: no checkpoint to resume from (train without --resume first)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or holding something other than tensors/containers
        raise torch_load_error(path, e, "the checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UsageError(f"{path}: not a checkpoint of this version (format {FORMAT})")
    return ckpt


def differences(saved: dict, current: dict) -> list[str]:
    """``key: checkpoint X, this run Y`` for every MATCH_KEYS entry that differs."""
    from .loss.base import canonical_mask_mode

    saved = {**MATCH_DEFAULTS, **saved}
    if "mask_mode" in saved:                # a checkpoint of before the mask modes' renaming
        saved["mask_mode"] = canonical_mask_mode(saved["mask_mode"])
    return [f"{k}: checkpoint {saved.get(k)!r}, this run {current.get(k)!r}"
            for k in MATCH_KEYS if saved.get(k) != current.get(k)]


def restore(trainer, ckpt: dict, path: Path) -> None:
    try:
        for m, sd in zip(trainer.models, ckpt["models"], strict=True):
            m.load_state_dict(sd)
        trainer.loss_fn.load_state_dict(ckpt["loss"])
        for o, sd in zip(trainer.optimizers, ckpt["optimizers"], strict=True):
            o.load_state_dict(sd)
        if trainer.scaler is not None and "scaler" in ckpt:
            trainer.scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UsageError(f"{path}: checkpoint does not fit this run's models "
                         f"({str(e).splitlines()[0][:300]})") from None
    set_rng_state(ckpt["rng"])


def save_towers(path: Path, models: list[nn.Module], loss_fn: nn.Module, spec: CascadeSpec,
                id_counts: dict[str, int], cfg, vocab: Vocabulary | None = None,
                run_key: str | None = None) -> None:
    """``towers.pt``: weights, loss weights, and what rebuilds the towers (incl. the vocabulary)."""
    state = {"models": [m.state_dict() for m in models], "loss": loss_fn.state_dict(),
             "meta": {"setting": spec.name, "method": cfg.method, "emb_dim": cfg.emb_dim,
                      "towers": list(spec.towers), "id_counts": dict(id_counts),
                      "vocab": "compact" if vocab is not None else "full", "run_key": run_key}}
    if vocab is not None:
        state["vocab"] = vocab.state()
    atomic_write(path, lambda f: torch.save(state, f), "the trained towers")


def load_towers(path: Path, device: torch.device
                ) -> tuple[list[nn.Module], dict[str, Any], Vocabulary | None]:
    """(towers in cascade order, meta, vocabulary or None for full-size tables)."""
    if not path.is_file():
        raise UsageError(f"{path}: no trained towers in this run folder (train it first)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        meta = state["meta"]
        spec = get_spec(meta["setting"])
        vocab = Vocabulary.from_state(state["vocab"]) if "vocab" in state else None
        models = build_models(spec, meta["id_counts"], meta["emb_dim"], vocab=vocab, init=False)
        for m, sd in zip(models, state["models"], strict=True):
            m.load_state_dict(sd)
    except Exception as e:  # truncated/corrupt file, foreign content, mismatched shapes
        raise torch_load_error(path, e, "the trained towers") from None
    return [m.to(device) for m in models], meta, vocab


def torch_load_error(path: Path, e: Exception, what: str) -> UsageError:
    """One line for a file ``torch.load(weights_only=True)`` refused or could not read.

    torch's own message suggests reloading with weights_only=False, which would run whatever
    the file names: never repeat that; say what was refused instead."""
    import re

    text = str(e)
    m = re.search(r"(?:unsupported|Unsupported global:?) (?:GLOBAL )?([\w.]+)", text)
    if m is not None and "." in m.group(1):
        return UsageError(f"{path}: refused to load {what}: it names {m.group(1).rstrip('.')}, "
                          "which is not a tensor or a plain container; it is not a file this "
                          "program wrote, and loading it any other way could run code")
    if "Weights only load failed" in text:
        u = re.search(r"(Unsupported [^\n]*)", text)
        return UsageError(f"{path}: cannot load {what}: its content is not tensors and plain "
                          f"containers{f' ({u.group(1).strip()})' if u else ''}; corrupt, or not "
                          "a file this program wrote")
    first = text.splitlines()[0][:200] if text else ""
    return UsageError(f"{path}: cannot load {what} ({type(e).__name__}: {first}); truncated or "
                      "corrupt?")
