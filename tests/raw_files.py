"""Read one raw RecFlow day with plain pandas/pickle (the tests' independent view of the files)."""
from __future__ import annotations

import contextlib
import pickle
import sys
import types

import pandas as pd


def read_raw_day(root, date):
    """(all_stage DataFrame, request_id_dict, seq_effective_50_dict) of ``date``."""
    a = pd.read_feather(root / "all_stage" / f"{date}.feather")
    with open(root / "request_id_dict" / f"{date}.pkl", "rb") as f:
        rd = pickle.load(f)
    with open(root / "seq_effective_50_dict" / f"{date}.pkl", "rb") as f:
        hd = pickle.load(f)
    return a, rd, hd


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
