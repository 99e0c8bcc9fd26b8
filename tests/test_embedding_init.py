"""Embedding rows drawn from (seed, stage, field, id), independent of the table's size (deep_components.embedding_init)."""
from __future__ import annotations

import math
import numpy as np
import pytest
import torch
from deep_components.embedding_init import fill_table, row_normals
from deep_components.models import DSSM


M64 = (1 << 64) - 1


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)



def _normal_by_hand(seed: int, tower: int, field: str, key: int, j: int) -> float:
    import zlib

    c = 0
    for part in (seed, tower, zlib.crc32(field.encode())):
        c = _splitmix(c ^ part)
    h = _splitmix((_splitmix((key & M64) ^ c) + j * 0x9E3779B97F4A7C15) & M64)
    u1 = ((h >> 32) + 0.5) / 2 ** 32
    u2 = ((h & 0xFFFFFFFF) + 0.5) / 2 ** 32
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def test_row_normals_by_hand_and_independent_of_table_size():
    z = row_normals(30, 1, "video_id", np.array([5, -1, 82_216_302]), 3)
    for i, key in enumerate((5, -1, 82_216_302)):
        for j in range(3):
            assert z[i, j] == pytest.approx(_normal_by_hand(30, 1, "video_id", key, j), abs=1e-6)
    small, big = torch.empty(10, 4), torch.empty(3000, 4)
    fill_table(small, 3, 0, "author_id", padding_idx=0)
    fill_table(big, 3, 0, "author_id", padding_idx=0)
    assert torch.equal(small[1:], big[1:10]) and not small[0].any()
    keys = np.array([0, -1, 7, 2999])
    sparse = torch.empty(4, 4)
    fill_table(sparse, 3, 0, "author_id", keys, padding_idx=0)
    assert torch.equal(sparse[2], big[7]) and torch.equal(sparse[3], big[2999])
    other = torch.empty(10, 4)
    fill_table(other, 3, 1, "author_id")             # another tower: another stream
    assert not torch.equal(other[1:], small[1:])
    many = row_normals(0, 0, "video_id", np.arange(200_000), 8)
    assert abs(many.mean()) < 0.01 and abs(many.std() - 1) < 0.01


def test_building_towers_consumes_no_torch_randomness():
    ids = dict(user_id=50, device_id=50, age=8, gender=3, province=79, video_id=300, author_id=60,
               category_level_one=12, category_level_two=40, upload_type=8)
    torch.manual_seed(0)
    a = DSSM(ids)
    torch.manual_seed(0)
    b = DSSM(ids | {"video_id": 90_000})
    assert torch.equal(a.user_tower[0].weight, b.user_tower[0].weight)
    assert torch.equal(a.emb.tables["video_id"].weight, b.emb.tables["video_id"].weight[:302])
