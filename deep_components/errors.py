"""The errors an entry point turns into one ``error: ...`` line, and that line."""
from __future__ import annotations

import sys


class UsageError(Exception):
    """A problem the user can fix by changing a flag; entry points print it and exit 2."""


class TrainingError(Exception):
    """Training had to stop (e.g. a non-finite loss); entry points print it and exit 3."""


def report_error(e: BaseException) -> int:
    """One ``error: …`` line on stderr for a failure the user can act on (an OSError names its
    file); returns the exit code: 3 for a training failure, 2 otherwise."""
    if isinstance(e, OSError) and not isinstance(e, (UsageError, TrainingError)):
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
    else:
        print(f"error: {e}", file=sys.stderr)
    return 3 if isinstance(e, TrainingError) else 2
