"""What several test modules share: running a command as a user would, checking its one-line
error, faking a GPU machine, and reading a raw RecFlow day independently of the reader."""
from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent


def cli(*args, cwd=REPO, env=None, preexec=None, timeout=300) -> subprocess.CompletedProcess:
    """``python ARGS…`` from the repository (or ``cwd``), as a user runs it: the repository on
    PYTHONPATH, one thread, no DATA_DIR; ``env`` adds to (or overrides) the environment."""
    base = {k: v for k, v in os.environ.items() if k != "DATA_DIR"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec,
                          env={**base, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                               **(env or {})})


def one_error(r, *needles) -> str:
    """Exit status 2, one ``error:`` line on stderr (WARNING lines aside), no traceback, and
    every needle in that line; returns the line."""
    assert r.returncode == 2, (r.returncode, r.stdout[-800:], r.stderr[-1500:])
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr[-1500:]
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def ok(r) -> subprocess.CompletedProcess:
    """Exit status 0 and no traceback."""
    assert r.returncode == 0, (r.stdout[-800:], r.stderr[-1500:])
    assert "Traceback" not in r.stderr
    return r


def fake_gpus(monkeypatch, n: int) -> None:
    """torch reports ``n`` CUDA devices (for the checks that run before any CUDA work)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def torchrun_env(monkeypatch, local_rank: int, per_node: int) -> None:
    """The environment torchrun gives process ``local_rank`` of ``per_node`` on one node."""
    for k, v in {"WORLD_SIZE": str(per_node), "RANK": str(local_rank),
                 "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(per_node)}.items():
        monkeypatch.setenv(k, v)


def read_raw_day(root, date):
    """(all_stage DataFrame, request_id_dict, seq_effective_50_dict) of ``date``."""
    a = pd.read_feather(root / "all_stage" / f"{date}.feather")
    with open(root / "request_id_dict" / f"{date}.pkl", "rb") as f:
        request_dict = pickle.load(f)
    with open(root / "seq_effective_50_dict" / f"{date}.pkl", "rb") as f:
        histories = pickle.load(f)
    return a, request_dict, histories


@contextlib.contextmanager
def released_utils():
    """A module named ``utils`` with the released pickles' ``defaultdict_tuple`` factory, so a
    test can write a defaultdict pickle that names ``utils.defaultdict_tuple`` as RecFlow's do."""
    utils = types.ModuleType("utils")
    exec("import collections\ndef defaultdict_tuple():\n    return collections.defaultdict(tuple)\n",
         utils.__dict__)
    sys.modules["utils"] = utils
    try:
        yield utils
    finally:
        del sys.modules["utils"]
