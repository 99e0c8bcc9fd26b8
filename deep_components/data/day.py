"""One day of a RecFlow-layout dataset as per-request arrays: the type every layer reads."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: history rows kept per request (the most recent)
HISTORY_LEN = 50


@dataclass
class DayData:
    """One day's requests as arrays, rows in ascending ``request_id``.

    request_id   [R]        int64
    context      [R, 8]     int32  weekday, hour, minute, user+1, device+1, gender+1, age+1, province+1
    history      [R, H, 5]  int32  video+1, author+1, cate2+1, cate1 (raw), upload_type+1; 0 rows padded
    history_mask [R, H]     bool   valid history rows (a suffix: histories are left-padded)
    items        [R, N, 8]  int32  video+1, author+1, cate2+1, cate1, utype+1, upload wday, hour, minute
    item_mask    [R, N]     bool   real candidates (each group filled from its start)
    labels       [R, N]     int16  30 - index on valid slots, 0 on padded slots
    """

    date: str
    spec_name: str
    request_id: np.ndarray
    context: np.ndarray
    history: np.ndarray
    history_mask: np.ndarray
    items: np.ndarray
    item_mask: np.ndarray
    labels: np.ndarray
    stats: dict = field(default_factory=dict)

    ARRAYS = ("request_id", "context", "history", "history_mask", "items", "item_mask", "labels")

    @property
    def num_requests(self) -> int:
        return int(self.request_id.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.ARRAYS}

    def in_memory(self) -> "DayData":
        """A copy with every array loaded into RAM (memory-mapped arrays are read once)."""
        return DayData(self.date, self.spec_name, stats=dict(self.stats),
                       **{k: np.array(v, copy=True) for k, v in self.arrays().items()})
