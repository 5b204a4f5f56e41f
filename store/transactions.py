"""How the store writes: one lock per Store, immediate write transactions, and UTC timestamps."""

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlite_utils


@contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """Run the block as one committed transaction, rolled back if anything in it raises.

    `BEGIN IMMEDIATE` takes the write lock up front: a deferred transaction that reads (to validate)
    and then writes can fail with SQLITE_BUSY straight away if another process (a training run writing
    metrics) committed in between, whereas waiting for the lock honours `busy_timeout`. Inside an open
    transaction the block nests as a savepoint (sqlite-utils' own write methods do the same).
    """
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    try:
        db.conn.execute("COMMIT")
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise


def utc_now() -> str:
    """The current time as ISO-8601 UTC text, the one timestamp format in the store."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def database_file(db: sqlite_utils.Database) -> str:
    """The file behind `db`, for error messages (empty for an in-memory database)."""
    for row in db.conn.execute("PRAGMA database_list").fetchall():
        if row[1] == "main":
            return row[2] or ":memory:"
    return ":memory:"


P = ParamSpec("P")
R = TypeVar("R")


def serialized(method: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[Any, P], R]:
    """Run a Store method under the store's lock.

    The one connection is shared between the UI thread and workers (check_same_thread=False); without
    the lock a worker's read could land inside the UI's open transaction, or its write join it.
    """

    @functools.wraps(method)
    def locked(self: Any, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked
