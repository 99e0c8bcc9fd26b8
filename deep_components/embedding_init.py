"""Embedding rows drawn from (seed, stage, field, id), independent of the table's size.

A row's initial vector is a function of the run seed, the stage's position in the cascade, the
field name and the row's *key* (the shifted raw id it stands for), nothing else.  So a table
sized to the ids that occur in the data (the compact vocabulary) and a table of ``id_cnt + 2``
rows hold the same initial vector for every id they share, and since Adam never moves a row
whose gradient has always been zero, both train to the same rows (tests/test_vocab.py).

The generator is counter-based: ``splitmix64`` of (key, column) mixed with a per-(seed, stage,
field) stream constant gives two 32-bit uniforms per entry, turned into one N(0, 1) draw by
Box-Muller (the cosine branch).  Vectorised over rows, computed in blocks of rows so a table of
82M rows never needs more than a few hundred MB of temporaries.  It consumes nothing from
torch's RNG, so the dense layers' initial values do not depend on the table sizes either.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
#: rows per block of generated values
BLOCK_ROWS = 1 << 20


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (arithmetic wraps modulo 2^64)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def stream_constant(seed: int, stage: int, field: str) -> np.uint64:
    """One 64-bit constant per (seed, stage position, field name)."""
    parts = np.array([seed & 0xFFFFFFFFFFFFFFFF, stage, zlib.crc32(field.encode())], dtype=np.uint64)
    h = np.zeros(1, dtype=np.uint64)
    for p in parts:
        h = _splitmix64(h ^ p)
    return h[0]


def row_normals(seed: int, stage: int, field: str, keys: np.ndarray, dim: int) -> np.ndarray:
    """float32 [len(keys), dim]: the N(0, 1) initial vector of each key (an int64 row key)."""
    keys = np.asarray(keys, dtype=np.int64).view(np.uint64)
    c = stream_constant(seed, stage, field)
    h = _splitmix64(_splitmix64(keys ^ c)[:, None] + np.arange(dim, dtype=np.uint64)[None, :] * _GOLDEN)
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) * (1.0 / 4294967296.0)
    u2 = ((h & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) * (1.0 / 4294967296.0)
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


@torch.no_grad()
def fill_table(weight: torch.Tensor, seed: int, stage: int, field: str,
               keys: np.ndarray | None = None, padding_idx: int | None = None) -> None:
    """Fill an embedding table ``[rows, dim]`` in place: row r gets the vector of key
    ``keys[r]`` (default key r); the padding row is zero."""
    rows, dim = weight.shape
    if keys is not None and len(keys) != rows:
        raise ValueError(f"{field}: {len(keys)} row keys for a table of {rows} rows")
    for a in range(0, rows, BLOCK_ROWS):
        b = min(a + BLOCK_ROWS, rows)
        k = keys[a:b] if keys is not None else np.arange(a, b, dtype=np.int64)
        weight[a:b].copy_(torch.from_numpy(row_normals(seed, stage, field, k, dim)))
    if padding_idx is not None:
        weight[padding_idx].zero_()
