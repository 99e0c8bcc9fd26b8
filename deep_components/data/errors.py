"""The one exception type for bad input data."""
from __future__ import annotations


class DataError(Exception):
    """Bad or missing input data.  The message names the file and what was expected.

    Command-line entry points catch it, print ``error: <message>`` and exit with status 2,
    so a user never sees a traceback from inside pandas, pyarrow or pickle.
    """
