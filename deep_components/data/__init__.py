"""Reading RecFlow-layout data (real or synthetic) into per-request arrays."""
from .batches import batch_indices, iter_batches
from .cache import default_cache_dir, load_day
from .errors import DataError
from .layout import default_split, list_days, synthetic_info
from .day import DayData
from .id_counts import read_id_counts
from .recflow import build_day_arrays

__all__ = ["DataError", "DayData", "batch_indices", "build_day_arrays", "default_cache_dir",
           "default_split", "iter_batches", "list_days", "load_day", "read_id_counts",
           "synthetic_info"]
