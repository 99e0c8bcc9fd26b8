"""One way to publish a file or a folder atomically (no heavy imports: the data layer uses it).

``staged(path)`` yields a temporary path beside ``path``, named after its writer
(``.tmp-<host>-<pid>-<random>``, so :func:`clean_stale` can tell a dead writer's leftovers),
and renames it onto ``path`` when the block succeeds: readers see the old or the new content,
never a half-written one.  On any error the temporary path is removed and the error goes on.
Used by run results and checkpoints (files.atomic_write), the day/vocabulary/catalogue cache
entries (data.cache.publish_entry) and the compiled kernels.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def tmp_prefix() -> str:
    """Temporary entries are named after their writer (host, pid) so stale ones can be told."""
    return f".tmp-{socket.gethostname()}-{os.getpid()}-"


@contextmanager
def staged(path: Path, *, directory: bool = False, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary file (or empty folder, ``directory``) beside ``path``; on success rename
    it onto ``path``.  ``replace=False``: when ``path`` exists by then (another process
    published it first), the first one wins and this one is dropped."""
    path = Path(path)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(), dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=tmp_prefix(), suffix=f".{path.name}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.rename(tmp, path)
            except OSError:
                if not path.exists():
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def clean_stale(folder: Path, max_age_s: float = 86_400) -> None:
    """Remove temporary entries left by killed writers: this host's whose process is gone, and
    anyone's older than a day (another machine sharing the folder may still be writing)."""
    host = socket.gethostname()
    for p in Path(folder).glob(".tmp-*"):
        parts = p.name.split("-")
        dead = False
        if len(parts) >= 4 and "-".join(parts[1:-2]) == host:
            try:
                os.kill(int(parts[-2]), 0)
            except ProcessLookupError:
                dead = True
            except (ValueError, PermissionError):
                pass
        try:
            old = time.time() - p.stat().st_mtime > max_age_s
        except OSError:
            continue
        if dead or old:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
