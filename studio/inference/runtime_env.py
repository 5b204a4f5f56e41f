"""Process environment that must be in place before heavy libraries are imported.

Import this module first (``studio.cli`` does). Values already set by the user win.
"""

from __future__ import annotations

import os

from trainers.offline import apply_offline_env


def apply() -> None:
    # llama.cpp's OpenMP threads spin while waiting by default; with one other busy process on a
    # 2-core machine decode fell from ~40 to ~2 tok/s in a trial. PASSIVE kept ~22 tok/s. It must be
    # set before llama_cpp is imported (OpenMP reads it once).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    apply_offline_env()


apply()
