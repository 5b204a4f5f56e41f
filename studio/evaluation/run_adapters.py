"""From a training run to an adapter llama.cpp can load: find it, export it to GGUF once, validate it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from store.output_folders import check_output_file
from studio.inference.adapter_checks import AdapterFileError, validate_adapter
from studio.inference.model_files import GGUFInfo
from trainers.gguf_adapter import AdapterExportError, AttentionHeads, export_gguf_adapter
from trainers.run.outputs import RunFolderError, checked_run_paths, runs_roots

if TYPE_CHECKING:
    from store.records import RunRecord
    from store.studio_store import Store

USABLE_STATUSES = ("done", "cancelled")  # a cancelled run saved the adapter it had so far


class RunAdapterError(ValueError):
    """A run has no adapter this model can use; the message says which run and why."""


def adapter_name(run: RunRecord) -> str:
    return f"run-{run.id}"


def peft_dir(run: RunRecord, db_path: Path | str | None) -> Path:
    """The run's folder, checked: a run-named folder inside the runs folder of the data dir or beside the
    database ``db_path``. The GGUF export is written there, so a row naming any other folder is refused."""
    try:
        return checked_run_paths(run.output_dir, runs_roots(db_path)).output_dir
    except RunFolderError as exc:
        raise RunAdapterError(f"run {run.id}: {exc}") from None


def _has_adapter(run: RunRecord, db_path: Path | str | None) -> bool:
    try:
        return (peft_dir(run, db_path) / "adapter_model.safetensors").exists()
    except RunAdapterError:
        return False


def usable_runs(store: Store) -> list[RunRecord]:
    """Finished (or cancelled) runs whose PEFT adapter is on disk in a run folder, newest first. Not reward
    models: their LoRA feeds a score head (studio/reward), and applied to the chat it would only blur it."""
    return [r for r in store.list_runs() if r.status in USABLE_STATUSES and (r.config or {}).get("method") != "reward"
            and _has_adapter(r, store.path)]


def gguf_adapter_for_run(run: RunRecord, base: GGUFInfo, db_path: Path | str | None) -> Path:
    """The run's adapter as a GGUF LoRA for ``base``: exported on first use (next to the PEFT files),
    re-exported when the PEFT weights are newer, and always validated against the base. ``db_path`` is the
    database the run was read from: its run folder must lie in the runs folder beside it (or the data dir's)."""
    if run.status not in USABLE_STATUSES:
        detail = f": {run.message}" if run.message else ""
        raise RunAdapterError(f"run {run.id} is {run.status}{detail}; only finished or cancelled runs have an adapter")
    folder = peft_dir(run, db_path)
    source = folder / "adapter_model.safetensors"
    if not source.exists():
        raise RunAdapterError(f"run {run.id} has no adapter files in {folder} (adapter_model.safetensors "
                              "is missing)")
    target = folder / f"adapter-{base.architecture}.gguf"
    try:
        if not target.exists() or target.stat().st_mtime_ns < source.stat().st_mtime_ns:
            if not base.n_layers:
                raise RunAdapterError(f"{base.path} does not say how many layers it has; cannot name tensors")
            export_gguf_adapter(folder, target, base.architecture, base.n_layers,
                                heads=AttentionHeads.from_metadata(base.metadata, base.architecture))
        validate_adapter(target, base)
    except (AdapterExportError, AdapterFileError) as exc:
        raise RunAdapterError(f"run {run.id}'s adapter does not fit {base.path.name}: {exc}") from exc
    return target


def is_gguf_adapter(path: Path) -> bool:
    """Whether ``path`` is a GGUF LoRA adapter (``general.type = "adapter"``): what an adapter export may replace."""
    from studio.inference.gguf_header import GGUFFormatError, read_gguf_header

    try:
        return read_gguf_header(path).metadata.get("general.type") == "adapter"
    except (GGUFFormatError, OSError, ValueError):
        return False


def export_run_adapter(run: RunRecord, base: GGUFInfo, out: Path, db_path: Path | str | None) -> Path:
    """``prefstudio adapters export``: write the run's GGUF LoRA to ``out`` (validated, atomic).

    ``out`` may be new, empty or an earlier adapter; anything else (a model, a database) is refused
    (OutputFolderError). A failed write (read-only, full disk) leaves neither ``out`` changed nor a
    ``.partial`` file, and raises OSError.
    """
    out = Path(out).expanduser()
    check_output_file(out, is_gguf_adapter, "GGUF adapter")
    exported = gguf_adapter_for_run(run, base, db_path)
    if out.resolve() != exported.resolve():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
        try:
            with exported.open("rb") as source, tmp.open("wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
                target.flush()
                os.fsync(target.fileno())
            tmp.replace(out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return out
