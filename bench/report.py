"""Shared by the bench scripts: print a Markdown table and, with ``--out``, write it."""
from __future__ import annotations

from pathlib import Path


def emit_table(lines: list[str], out: str | None) -> None:
    print("\n".join(lines))
    if out:
        Path(out).write_text("\n".join(lines) + "\n")
