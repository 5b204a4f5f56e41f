"""How an import writes without holding the database: staged rows, one flip, and the cleanup of a dead one.

An import reads and checks a file for as long as the file takes (13 s for 470 MB). It no longer does so
inside one write transaction: every other writer (a judgement, a training run's metrics) would wait
that long, and fail after SQLite's busy timeout. Instead:

1. `claim` records the import in `dataset_imports` (state 'staging', with this process's pid and start
   time) and, for a new dataset, its `datasets` row, tagged with the import: one short transaction.
2. The caller reads the file outside any transaction and writes its rows in bounded batches, each its
   own short transaction, every row tagged with the import's id. Tagged rows of a 'staging' import are
   invisible to every read (each query in store_mixin.py
   checks the import's state).
3. `finish` flips the import to 'done' (one tiny UPDATE): everything it wrote appears at once.
   `discard` (a bad record late in the file, or any error) deletes what it wrote, in bounded
   transactions, then the import row last, so nothing half-imported is ever visible.

A kill -9 at any point leaves either a 'done' import or invisible rows of a 'staging' one whose process
is gone; `sweep_dead` (run by the next import) deletes those. All-or-nothing holds as before.

Duplicates: an import skips records the dataset already holds, read once when it starts. Two imports
of the same dataset at once would both miss what the other adds, so at most one import per dataset name
is 'staging' (a partial unique index on `dataset_imports`); a second one waits for the first to finish
(or for its process to be gone), up to `CLAIM_WAIT_S`, and only then reads the dataset's digests.
Imports of different datasets run side by side; pair ids stay unique because each staged transaction
takes the next ids after every stored batch, staged ones included.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from store.datasets.files import DatasetImportError
from store.processes import process_alive, process_start_time
from store.schema import IMPORT_DATA_TABLES
from store.transactions import LockedStore, retry_busy, utc_now, write_transaction

CLAIM_WAIT_S = 600.0
_DISCARD_ROWS = 2000  # rows deleted per transaction when an import is thrown away
# One fixed statement per import table (no SQL is built at run time): a bounded batch of an unfinished
# import's rows, so a large one is discarded in short transactions.
_DISCARD_STATEMENTS = {
    "dataset_pair_batches": "DELETE FROM dataset_pair_batches WHERE id IN "
                            "(SELECT id FROM dataset_pair_batches WHERE import_id = ? LIMIT ?)",
    "dataset_stance_items": "DELETE FROM dataset_stance_items WHERE id IN "
                            "(SELECT id FROM dataset_stance_items WHERE import_id = ? LIMIT ?)",
    "dataset_test_prompts": "DELETE FROM dataset_test_prompts WHERE id IN "
                            "(SELECT id FROM dataset_test_prompts WHERE import_id = ? LIMIT ?)",
    "dataset_feedback_items": "DELETE FROM dataset_feedback_items WHERE id IN "
                              "(SELECT id FROM dataset_feedback_items WHERE import_id = ? LIMIT ?)",
}
assert set(_DISCARD_STATEMENTS) == set(IMPORT_DATA_TABLES)
_POLL_S = 0.2

R = TypeVar("R")

# Imports this process is running, by (database file, import id): a 'staging' row with this process's
# pid that is not among them was left by an import of ours that failed and could not clean up.
_running: set[tuple[str, int]] = set()


def short_write(store: LockedStore, what: str, body: Callable[[], R]) -> R:
    """`body` as one write transaction under the store's lock, retried while another writer holds the file."""

    def attempt() -> R:
        with store.lock, write_transaction(store.db):
            return body()

    return retry_busy(attempt, path=store.path, limit_s=store.busy_limit(), what=what)


def locked_read(store: LockedStore, body: Callable[[], R]) -> R:
    """`body` (reads only) under the store's lock, retried on a busy file like every store call."""

    def attempt() -> R:
        with store.lock:
            return body()

    return retry_busy(attempt, path=store.path, limit_s=store.busy_limit(), what="reading datasets")


def claim(store: LockedStore, name: str, kind: str, fmt: str, source_path: str | Path | None,
          wait_s: float = CLAIM_WAIT_S) -> tuple[int, int]:
    """Start an import into dataset `name`: (import id, dataset id). Waits while another live import of
    the same name is staging; raises DatasetImportError when the name holds another kind of data."""
    deadline = time.monotonic() + wait_s
    db = store.db
    source = str(source_path) if source_path is not None else None

    def take() -> tuple[int, int] | tuple[None, tuple[int, int | None, str | None]]:
        holder = db.execute("SELECT id, pid, pid_started FROM dataset_imports WHERE dataset_name = ? AND state = ?",
                            [name, "staging"]).fetchone()
        if holder is not None:
            return None, tuple(holder)
        existing = db.execute("SELECT id, kind FROM datasets WHERE name = ?", [name]).fetchone()
        if existing is not None and existing[1] != kind:
            raise DatasetImportError(
                f"dataset '{name}' holds {existing[1]} data and this import is {kind} data: choose another --name."
            )
        pid = os.getpid()
        import_id = db.execute(
            "INSERT INTO dataset_imports (dataset_name, state, pid, pid_started, source_path, created_at) "
            "VALUES (?, 'staging', ?, ?, ?, ?)", [name, pid, process_start_time(pid), source, utc_now()]).lastrowid
        # Known as running before it commits: another thread's sweep must never take it for a dead one.
        claimed.append((str(store.path), import_id))
        _running.add(claimed[-1])
        if existing is not None:
            return import_id, existing[0]
        dataset_id = db.execute(
            "INSERT INTO datasets (name, kind, format, source_path, created_at, import_id) VALUES (?, ?, ?, ?, ?, ?)",
            [name, kind, fmt, source, utc_now(), import_id]).lastrowid
        return import_id, dataset_id

    while True:
        claimed: list[tuple[str, int]] = []
        try:
            first, second = short_write(store, f"starting the import of '{name}'", take)
        except BaseException:
            _running.difference_update(claimed)  # rolled back: those ids were never stored
            raise
        _running.difference_update(claimed[:-1] if first is not None else claimed)  # attempts that rolled back
        if first is not None:
            return first, second
        holder_id, pid, started = second
        if _is_dead(store, holder_id, pid, started):
            discard(store, holder_id)
            continue
        if time.monotonic() >= deadline:
            raise DatasetImportError(
                f"dataset '{name}' is being imported by another process (pid {pid}) and it did not finish within "
                f"{wait_s:.0f} s; nothing was imported. Import again when it has finished."
            )
        time.sleep(_POLL_S)


def _is_dead(store: LockedStore, import_id: int, pid: int | None, started: str | None) -> bool:
    if pid is None:
        return True
    if pid == os.getpid():
        return (str(store.path), import_id) not in _running
    return not process_alive(pid, started)


def finish(store: LockedStore, import_id: int) -> None:
    """Make everything the import wrote visible, in one tiny transaction."""

    def flip() -> None:
        cursor = store.db.execute(
            "UPDATE dataset_imports SET state = 'done', finished_at = ? WHERE id = ? AND state = 'staging'",
            [utc_now(), import_id])
        if cursor.rowcount != 1:  # only a sweeper that took this process for dead could do this
            raise DatasetImportError(f"import {import_id} was discarded before it finished; nothing was imported.")

    short_write(store, "finishing an import", flip)
    _running.discard((str(store.path), import_id))


def discard(store: LockedStore, import_id: int) -> None:
    """Delete what a staging import wrote (a batch at a time), then the dataset row it created, then the
    import row itself; a 'done' import is never touched."""
    db = store.db

    def staging() -> bool:
        row = db.execute("SELECT state FROM dataset_imports WHERE id = ?", [import_id]).fetchone()
        return row is not None and row[0] == "staging"

    for table in IMPORT_DATA_TABLES:
        def delete_some(statement: str = _DISCARD_STATEMENTS[table]) -> int:
            if not staging():
                return 0
            return db.execute(statement, [import_id, _DISCARD_ROWS]).rowcount

        while short_write(store, "discarding an unfinished import", delete_some):
            pass

    def drop_rows() -> None:
        if staging():
            db.execute("DELETE FROM datasets WHERE import_id = ?", [import_id])
            db.execute("DELETE FROM dataset_imports WHERE id = ?", [import_id])

    short_write(store, "discarding an unfinished import", drop_rows)
    _running.discard((str(store.path), import_id))


def discard_quietly(store: LockedStore, import_id: int) -> None:
    """`discard` after a failed import: the import's own error is what the user must see, so a failure
    here (a busy or full disk) only leaves invisible rows for the next import's sweep."""
    try:
        discard(store, import_id)
    except Exception:  # noqa: BLE001 - see the docstring
        _running.discard((str(store.path), import_id))


def sweep_dead(store: LockedStore) -> list[int]:
    """Discard every staging import whose process is gone (killed, or failed without cleaning up)."""
    rows = locked_read(store, lambda: store.db.execute(
        "SELECT id, pid, pid_started FROM dataset_imports WHERE state = 'staging'").fetchall())
    dead = [row[0] for row in rows if _is_dead(store, *row)]
    for import_id in dead:
        discard(store, import_id)
    return dead
