"""Where the bundled assets live (the repository's ``assets/``; the studio is installed editable)."""

from __future__ import annotations

from pathlib import Path


def assets_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets"
