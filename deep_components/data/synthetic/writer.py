"""Writing a simulated day in the RecFlow layout (Feather tables, streamed pickles)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import layout
from ..pickle_writer import DictPickleWriter
from .params import FEEDBACK_COLUMNS, FLAG_COLUMNS, STAGE_LABELS
from .simulation import DayLog
from .world import World


def _item_columns(w: World, video: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "video_id": w.ids["video_id"][video],
        "author_id": w.ids["author_id"][w.video_author[video]],
        "category_level_one": w.ids["category_level_one"][w.video_cate1[video]],
        "category_level_two": w.ids["category_level_two"][w.video_cate2[video]],
        "upload_type": w.ids["upload_type"][w.video_utype[video]],
        "upload_timestamp": w.video_upload_ts[video],
        "duration": w.video_duration[video],
    }


class DayWriter:
    """Writes one day (all_stage, realshow, request_id_dict, seq_effective_50_dict) chunk of
    requests by chunk: Feather record batches and streamed pickles, so a day of any size is
    written in the memory of one chunk."""

    def __init__(self, out: Path, date: str):
        self.out, self.date = out, date
        self.rows = 0
        self._tables: dict[str, Any] = {}
        self._files = [open(out / layout.REQUEST_DICT_DIR / f"{date}.pkl", "wb"),
                       open(out / layout.HISTORY_DIR / f"{date}.pkl", "wb")]
        self.rd = DictPickleWriter(self._files[0])
        self.hd = DictPickleWriter(self._files[1])

    def _table(self, sub: str, table) -> None:
        import pyarrow as pa

        if sub not in self._tables:
            opts = pa.ipc.IpcWriteOptions(compression="lz4")
            self._tables[sub] = pa.ipc.new_file(str(self.out / sub / f"{self.date}.feather"),
                                                table.schema, options=opts)
        self._tables[sub].write_table(table, max_chunksize=1 << 16)

    def write(self, w: World, log: DayLog, hist: np.ndarray) -> None:
        """Append requests ``log`` with their histories ``hist`` [R, 50, 10]."""
        import pyarrow as pa

        R, P = log.pool.shape
        u = log.user
        cols: dict[str, np.ndarray] = {
            "request_id": np.repeat(log.request_id, P),
            "request_timestamp": np.repeat(log.ts_ms, P),
            "user_id": np.repeat(w.ids["user_id"][u], P),
            "device_id": np.repeat(w.ids["device_id"][w.user_device[u]], P),
            "age": np.repeat(w.user_age[u], P),
            "gender": np.repeat(w.user_gender[u], P),
            "province": np.repeat(w.user_province[u], P),
        }
        cols.update({k: v.reshape(-1) for k, v in _item_columns(w, log.pool).items()})
        for k in FLAG_COLUMNS:
            cols[k] = log.flags[k].reshape(-1)
        cols["rank_index"] = log.rank_pos.reshape(-1).astype(np.int64)
        cols["rerank_index"] = log.rerank_pos.reshape(-1).astype(np.int64)
        for k in FEEDBACK_COLUMNS:
            cols[k] = log.feedback[k].reshape(-1)
        table = pa.table({k: np.ascontiguousarray(v, dtype=np.int64) for k, v in cols.items()})
        self._table(layout.ALL_STAGE, table)
        self._table(layout.REALSHOW, table.take(np.flatnonzero(cols["realshow"] == 1)))
        self.rows += int(table.num_rows)
        del table

        # request_id_dict: per stage, positives in stage order, everything else in random order
        rng_order = np.random.default_rng(int(log.request_id[0]) + 7)
        item = np.stack([cols[k].reshape(R, P) for k in
                         ("video_id", "author_id", "duration", "category_level_two", "upload_type",
                          "upload_timestamp", "category_level_one")]
                        + [log.feedback["effective_view"]], axis=-1)  # [R, P, 8]
        del cols
        stage_rows = {}
        for label in STAGE_LABELS:
            member = log.flags[label].astype(bool)
            if label in ("rank_pos",):
                key = np.where(member, log.rank_pos, np.iinfo(np.int64).max)
            elif label in ("rerank_pos", "realshow"):
                key = np.where(member, log.rerank_pos, np.iinfo(np.int64).max)
            else:
                key = np.where(member, rng_order.integers(0, 1 << 30, size=(R, P)),
                               np.iinfo(np.int64).max)
            n = member.sum(axis=1)
            order = np.argsort(key, axis=1, kind="stable")[:, : int(n.max(initial=0))]
            rows = np.take_along_axis(item, order[:, :, None], axis=1)
            stage_rows[label] = (np.ascontiguousarray(rows), n.tolist())
        rids = log.request_id.tolist()
        cut_label, cut_len = log.cut_label.tolist(), log.cut_len.tolist()
        for i, rid in enumerate(rids):  # the pickle format is one dict per request
            d = {}
            for j, label in enumerate(STAGE_LABELS):
                rows, n = stage_rows[label]
                k = n[i]
                if cut_label[i] == j:
                    k = min(k, cut_len[i])
                    if k == 0:
                        continue  # a missing stage key, as in the released data
                d[label] = rows[i, :k]
            self.rd.add(rid, d)
        for i, rid in enumerate(rids):
            self.hd.add(rid, hist[i])

    def close(self) -> int:
        """Finish every file; returns the day's all_stage rows."""
        for t in self._tables.values():
            t.close()
        self.rd.close()
        self.hd.close()
        for f in self._files:
            f.close()
        return self.rows
