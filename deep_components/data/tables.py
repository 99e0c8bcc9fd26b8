"""Reading the integer columns of a Feather or Parquet table one record batch at a time."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError

COLUMN_ALIASES = {"video_id": ("video_id", "photo_id")}


#: rows per record batch when a table is read in pieces
TABLE_BATCH_ROWS = 1 << 16


def _resolve_columns(path: Path, names: list[str], wanted: tuple[str, ...]) -> dict[str, str]:
    """wanted column -> the file's column name (whitespace stripped, ``photo_id`` alias)."""
    by_stripped: dict[str, str] = {}
    for n in names:
        by_stripped.setdefault(n.strip(), n)
    actual: dict[str, str] = {}
    for col in wanted:
        for alias in COLUMN_ALIASES.get(col, (col,)):
            if alias in by_stripped:
                actual[col] = by_stripped[alias]
                break
        else:
            raise DataError(f"{path}: missing column {col!r} (columns present: "
                            f"{sorted(by_stripped)})")
    return actual


def _int_columns(path: Path, table, actual: dict[str, str]) -> dict[str, np.ndarray]:
    """The resolved columns of a pyarrow table / record batch as int64 numpy arrays."""
    import pyarrow as pa

    out = {}
    for col, name in actual.items():
        arr = table.column(name)
        if arr.null_count:
            raise DataError(f"{path}: column {col!r} has {arr.null_count} missing values "
                            "(expected int64, no nulls)")
        if not (pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type)):
            raise DataError(f"{path}: column {col!r} has type {arr.type}, expected an integer type")
        out[col] = np.asarray(arr.to_numpy(zero_copy_only=False)).astype(np.int64, copy=False)
    return out


def iter_column_batches(path: Path, wanted: tuple[str, ...], batch_rows: int | None = None):
    """Yield dicts of the ``wanted`` integer columns (int64 numpy) of a Feather/Parquet file,
    one record batch at a time: only those columns and one batch are ever in memory.

    Column names are matched after stripping whitespace; ``photo_id`` is accepted for
    ``video_id``.  Parquet is read ``batch_rows`` rows at a time (default TABLE_BATCH_ROWS),
    Feather in the record batches it was written in.  Any failure is a :class:`DataError`
    naming ``path``.
    """
    batch_rows = batch_rows or TABLE_BATCH_ROWS
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    parquet = path.suffix == ".parquet"
    try:
        if parquet:
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
        else:
            try:
                reader = pa.ipc.open_file(pa.OSFile(str(path)))
                names = reader.schema.names
            except pa.ArrowInvalid:        # Feather v1: read whole (old files are small)
                reader = None
                names = feather.read_table(str(path), memory_map=False).schema.names
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot read table schema; corrupt or truncated file? "
                        f"({type(e).__name__}: {e})") from None
    actual = _resolve_columns(path, names, wanted)
    cols = list(dict.fromkeys(actual.values()))

    def pieces():
        if parquet:
            yield from pf.iter_batches(batch_size=batch_rows, columns=cols)
        elif reader is not None:
            opts = pa.ipc.IpcReadOptions(included_fields=[names.index(c) for c in cols])
            r = pa.ipc.open_file(pa.OSFile(str(path)), options=opts)
            for i in range(r.num_record_batches):
                yield r.get_batch(i)
        else:
            yield from feather.read_table(str(path), columns=cols, memory_map=False).to_batches()

    it = pieces()
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as e:
            raise DataError(f"{path}: cannot read columns {cols}; corrupt or truncated file? "
                            f"({type(e).__name__}: {e})") from None
        yield _int_columns(path, batch, actual)
