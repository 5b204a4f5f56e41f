"""Atomic file writes: a temporary file beside the target, fsync, then rename, so a reader (or a crash)
never sees a half-written export."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_lines(lines: Iterable[str], out: Path) -> int:
    """Write text lines (each ending in a newline) to `out` atomically; return how many."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise ValueError(f"{out} is a folder; --format jsonl writes a file")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            count = 0
            for line in lines:
                handle.write(line)
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return count
