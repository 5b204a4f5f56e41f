"""The one rule for every ``--out``: an export never deletes or replaces what it did not write.

* A folder export (``datasets export --format hf``, ``report``) goes into a folder that does not exist, an
  empty folder, or a folder an earlier export of the same kind wrote. Such a folder carries a marker,
  ``.prefstudio-export.json``, naming the kind and the files written; a later export of that kind replaces
  only those files. Any other non-empty folder (the studio's data folder, a home directory) is refused.
* A file export (jsonl, parquet, a GGUF adapter) goes to a path that does not exist, an empty file, or a
  file that already holds that kind of export (``recognise`` reads it). Anything else (a database, a
  model, someone's notes) is refused.

Refusals raise ``OutputFolderError`` (a ``ValueError``) naming the path, before anything is written.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

MARKER = ".prefstudio-export.json"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class OutputFolderError(ValueError):
    """An ``--out`` the export may not write into; the message names it and says what to do."""


def describe_write_error(exc: OSError, target: Path) -> str:
    """One line for a failed write: a full disk (ENOSPC, EFBIG, EDQUOT alike) or the OS's reason, with the path."""
    where = exc.filename or target
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        path = Path(where)
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"cannot write {where}: {blocker} is a file, not a folder; choose another --out"
    if exc.errno in DISK_FULL_ERRNOS:
        return f"cannot write {where}: the disk is full (or the file size limit was reached); nothing was written"
    if exc.errno == errno.EROFS:
        return f"cannot write {where}: the file system is read-only; choose another --out"
    return f"cannot write {where}: {exc.strerror or exc}"


def _listing(folder: Path, limit: int = 3) -> str:
    names = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_marker(folder: Path) -> dict | None:
    """The marker of an earlier export in ``folder``, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        return None
    files = data.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return data


def earlier_export_files(folder: Path, kind: str) -> list[str]:
    """Check that ``folder`` may receive an export of ``kind``; return the files an earlier one wrote there.

    Raises OutputFolderError for a file in the way or a non-empty folder that is not an earlier export
    of this kind.
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise OutputFolderError(f"{folder} exists and is not a folder; this export writes a folder: choose "
                                "another --out")
    try:
        empty = not any(folder.iterdir())
    except OSError as exc:
        raise OutputFolderError(describe_write_error(exc, folder)) from exc
    if empty:
        return []
    marker = read_marker(folder)
    if marker is None or marker["kind"] != kind:
        what = f"an earlier {marker['kind']} export" if marker else f"files this export did not write ({_listing(folder)})"
        raise OutputFolderError(
            f"{folder} is not empty: it holds {what}. An export only writes into a new or empty folder, or "
            f"over an earlier {kind} export; choose another --out (nothing was written or deleted)"
        )
    return [name for name in marker["files"] if _inside(folder, name)]


def _inside(folder: Path, name: str) -> bool:
    # A hand-edited marker must not name files outside its folder ("../studio.db").
    candidate = (folder / name).resolve()
    return candidate != folder.resolve() and folder.resolve() in candidate.parents


def check_output_file(path: Path, recognise: Callable[[Path], bool], what: str) -> None:
    """Check that the file export ``what`` may be written to ``path``; raise OutputFolderError if not.

    ``recognise(path)`` says whether an existing non-empty file is an earlier export of this kind.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputFolderError(f"{path} is a folder; {what} is written to a file: give a file name as --out")
    if not path.exists():
        return
    if not path.is_file():
        # A device, FIFO or socket: the atomic rename would replace the node itself (as root, /dev/null).
        raise OutputFolderError(f"{path} is not a regular file; {what} is written to a regular file: choose "
                                "another --out (nothing was written)")
    try:
        if path.stat().st_size == 0 or recognise(path):
            return
    except OSError as exc:
        raise OutputFolderError(describe_write_error(exc, path)) from exc
    raise OutputFolderError(
        f"{path} already exists and is not an earlier {what}; an export never replaces a file it did not "
        "write: choose another --out (nothing was written)"
    )


def write_marker(folder: Path, kind: str, files: Iterable[str]) -> None:
    """Record in ``folder`` that an export of ``kind`` wrote ``files`` (relative names), atomically."""
    data = {"kind": kind, "files": sorted(set(files)), "written_by": "prefstudio"}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{MARKER}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, folder / MARKER)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder``, as names relative to it (the marker excluded)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MARKER)


def publish_folder(staged: Path, out: Path, kind: str) -> None:
    """Move the finished export in ``staged`` to ``out`` under the rule above, with its marker.

    A new or empty ``out`` is one rename (it appears whole). Over an earlier export of ``kind``, the
    files it listed are removed and the new ones moved in one by one; anything else in the folder stays.
    """
    out = Path(out)
    previous = earlier_export_files(out, kind)  # checked again: the folder may have changed meanwhile
    written = files_under(staged)
    write_marker(staged, kind, written)
    if not out.exists() or not any(out.iterdir()):
        os.replace(staged, out)
        return
    for name in previous:
        if name not in written:
            target = out / name
            if target.is_file() and not target.is_symlink():
                target.unlink()
    for name in written:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / name, target)
    os.replace(staged / MARKER, out / MARKER)
