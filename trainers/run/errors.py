"""How a run ends: its outcome, and the errors that end it (shared by the run process and every method)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class RunCancelled(BaseException):  # noqa: N818 - a control-flow signal like KeyboardInterrupt
    """Raised by the signal handler while the run is still loading (nothing trained to save yet)."""


class RunError(Exception):
    """The run cannot start or continue; the message is for the user."""


@dataclass
class RunOutcome:
    status: str  # done / failed / cancelled
    message: str
    output_dir: Path | None = None
    summary: dict[str, Any] | None = None
