"""A run's resumable checkpoints and its metrics log around a resume, whatever its method.

The Trainer writes ``checkpoint-<step>`` folders into the run's work dir; a resume continues from the newest
complete one, and the metric rows and JSONL lines after its step are trained again, so they are dropped first.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path


def last_complete_checkpoint(work_dir: Path, log: Callable[[str], None] = print) -> str | None:
    """The newest checkpoint a resume can use, removing newer ones the trainer was killed while writing.

    The Trainer writes a checkpoint's files one by one and ``trainer_state.json`` last; a kill in between
    leaves a folder that transformers' ``get_last_checkpoint`` still picks, and resuming from it fails.
    """
    numbered = sorted(
        (d for d in Path(work_dir).glob("checkpoint-*") if d.is_dir() and d.name.split("-")[-1].isdigit()),
        key=lambda d: int(d.name.split("-")[-1]), reverse=True,
    )
    for folder in numbered:
        if (folder / "trainer_state.json").exists():
            return str(folder)
        log(f"removing incomplete {folder.name} (the trainer stopped while writing it)")
        shutil.rmtree(folder, ignore_errors=True)
    return None


def checkpoint_step(checkpoint: str | None) -> int:
    """The step a checkpoint folder was written at (0 for none)."""
    if not checkpoint:
        return 0
    try:
        return int(Path(checkpoint).name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the JSONL lines up to the checkpoint's step: the steps after it are trained again."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
