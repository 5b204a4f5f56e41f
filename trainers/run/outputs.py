"""A run's files on disk, and the one atomic step that makes its output directory appear.

While a run trains, everything lives in a hidden work directory beside the output directory:

    runs/.<name>.work/          Trainer output_dir: checkpoints, live metrics.jsonl
        checkpoint-<step>/      adapter_model.safetensors, adapter_config.json, optimizer.pt,
                                scheduler.pt, rng_state.pth, trainer_state.json, tokenizer files
                                (the pickled training_args.bin is deleted): what --resume needs
    runs/<name>.log             the trainer process's stdout/stderr

When training ends (done or cancelled) the final directory is assembled in ``runs/.<name>.staging-*``
and renamed to ``runs/<name>``:

    adapter_model.safetensors, adapter_config.json   the PEFT LoRA adapter
    run_config.json     the RunConfig and the model it trained
    pairs.json          train / held-out pair ids, dataset hash, selection counts
    metrics.jsonl       one line per logged step
    summary.json        status, final metrics, held-out evaluation, timings

So a directory under the run's name always holds a whole adapter; a failed run never has one that
looks done. A cancelled run's directory holds the adapter so far (``summary.json`` says cancelled)
and keeps its work directory so it can be resumed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.run.ranks import is_worker_process
from trainers.run_config import RunConfigError

# What unique_output_dir names a run folder: run-<UTC time>-<dataset hash>[-n]. Nothing hidden, no "..".
_RUN_FOLDER_NAME = re.compile(r"run-[0-9A-Za-z][0-9A-Za-z_-]*")


class DiskFullError(OSError):
    """Saving failed because the disk is full; the message names the directory."""


@dataclass(frozen=True)
class RunPaths:
    """Where one run's files go."""

    output_dir: Path

    @property
    def name(self) -> str:
        return self.output_dir.name

    @property
    def work_dir(self) -> Path:
        return self.output_dir.with_name(f".{self.name}.work")

    @property
    def log_path(self) -> Path:
        return self.output_dir.with_name(f"{self.name}.log")

    @property
    def live_metrics(self) -> Path:
        return self.work_dir / "metrics.jsonl"

    def staging_dir(self) -> Path:
        return self.output_dir.with_name(f".{self.name}.staging-{os.getpid()}")


class RunFolderError(RunConfigError):
    """A run row names a folder outside the runs folder (a crafted or foreign database): refused."""


def runs_roots(db_path: Path | str | None) -> list[Path]:
    """The folders a run's output may live in: the data dir's ``runs`` and the ``runs`` folder beside the
    database (where ``--db`` elsewhere, and the tests, put them). Never anything a database row says."""
    from store.locations import runs_dir

    roots = [runs_dir()]
    if db_path is not None:
        roots.append(Path(db_path).expanduser().absolute().parent / "runs")
    return roots


def checked_run_paths(output_dir: Path | str, roots: Iterable[Path]) -> RunPaths:
    """``RunPaths`` for a run folder read from the store, refused unless it is a run-named folder directly
    inside one of ``roots``: publishing renames and deletes under that name, so a row naming any other
    folder (``/home/me``, ``../..``) must never reach it."""
    folder = Path(output_dir)
    allowed = {Path(root).expanduser().resolve() for root in roots}
    inside = folder.is_absolute() and folder.parent.resolve() in allowed
    if not inside or not _RUN_FOLDER_NAME.fullmatch(folder.name) or folder.is_symlink():
        raise RunFolderError(
            f"the run's output folder {folder} is not a run folder inside the runs folder "
            f"({', '.join(str(r) for r in sorted(allowed))}); refusing to write, move or delete it "
            "(was the database edited by hand?)"
        )
    return RunPaths(folder)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def publish_output(paths: RunPaths, write_into: Callable[[Path], object], extra_files: dict[str, Any]) -> Path:
    """Assemble the final directory in a staging directory and rename it into place.

    ``write_into(staging)`` writes the adapter; ``extra_files`` maps file names to JSON data, or to a
    ``Path`` to copy. An earlier result under the same name (a cancelled run now resumed) is replaced.
    Raises ``DiskFullError`` when the disk fills up; nothing is left behind under the final name.
    Under ``accelerate launch`` only rank 0 writes; on the other ranks this writes nothing and returns the
    folder rank 0 publishes.
    """
    if is_worker_process():
        return paths.output_dir
    staging = paths.staging_dir()
    shutil.rmtree(staging, ignore_errors=True)
    old = paths.output_dir.with_name(f".{paths.name}.old-{os.getpid()}")
    try:
        staging.mkdir(parents=True)
        write_into(staging)
        for name, content in extra_files.items():
            if isinstance(content, Path):
                if content.exists():
                    shutil.copyfile(content, staging / name)
            else:
                write_json(staging / name, content)
        for pickle in staging.glob("training_args.bin"):
            pickle.unlink()
        _fsync_tree(staging)
        if paths.output_dir.exists():
            os.rename(paths.output_dir, old)
        os.rename(staging, paths.output_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not paths.output_dir.exists():
            os.rename(old, paths.output_dir)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                exc.errno,
                f"the disk is full while saving the adapter into {paths.output_dir.parent}: free some space, "
                "then resume the run (its checkpoints are kept)",
            ) from exc
        raise
    shutil.rmtree(old, ignore_errors=True)
    return paths.output_dir


def unique_output_dir(runs_root: Path, stem: str) -> Path:
    """A run directory name not used yet under ``runs_root`` (``stem``, ``stem-2``, …)."""
    candidate = runs_root / stem
    n = 2
    while (
        candidate.exists()
        or RunPaths(candidate).work_dir.exists()
        or RunPaths(candidate).log_path.exists()
    ):
        candidate = runs_root / f"{stem}-{n}"
        n += 1
    return candidate
