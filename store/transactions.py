"""How the store writes: one lock per Store, immediate write transactions retried while another
writer holds the database, and UTC timestamps."""

import functools
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import sqlite_utils

from store.errors import StoreBusyError

# How long SQLite itself waits for another connection's write lock in one attempt. Short on purpose: the
# wait happens while this store's own lock is held, so the UI thread's reads would wait with it; longer
# waits are retries (`retry_busy`) that let go of that lock in between.
ATTEMPT_BUSY_TIMEOUT_MS = 200
# How long a store call keeps retrying before it gives up with StoreBusyError. Long: no writer holds the
# lock for more than a fraction of a second (an import writes in short staged transactions), so only a
# stuck foreign program (an sqlite3 shell inside BEGIN, an old studio version) exhausts it.
BUSY_LIMIT_S = 60.0
_MAX_BACKOFF_S = 0.05


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


def is_busy(error: BaseException | None) -> bool:
    """Whether an sqlite3 error means another connection holds the lock (SQLITE_BUSY), so a retry can
    succeed. SQLITE_LOCKED is not: it is a conflict inside one connection, which waiting never clears."""
    if not isinstance(error, sqlite3.OperationalError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_BUSY
    return "database is locked" in str(error)


def retry_busy(
    attempt: Callable[[], R],
    *,
    path: Path | str,
    limit_s: float,
    what: str,
    on_busy: Callable[[float], None] | None = None,
) -> R:
    """Call `attempt` until it does not fail with SQLITE_BUSY, for at most `limit_s` seconds.

    Each attempt must be all-or-nothing (one transaction, rolled back when it fails), so repeating it
    is safe. Between attempts it sleeps a short, jittered, growing time; `on_busy` hears how long it has
    waited so far. Past the limit, StoreBusyError names the file and what was being done.
    """
    started = time.monotonic()
    delay = 0.002
    while True:
        try:
            return attempt()
        except sqlite3.OperationalError as error:
            if not is_busy(error):
                raise
            waited = time.monotonic() - started
            if waited >= limit_s:
                raise StoreBusyError(
                    f"The studio database {path} stayed locked by another program for {waited:.1f} s while "
                    f"{what}; nothing was written. Try again; if it keeps happening, look for another "
                    "Preference Studio, import or sqlite3 shell holding it."
                ) from error
            if on_busy is not None:
                on_busy(waited)
            time.sleep(min(delay * random.uniform(0.5, 1.0), max(limit_s - waited, 0.0)))
            delay = min(delay * 2, _MAX_BACKOFF_S)


class StoreLock:
    """The store's re-entrant lock, which also knows whether the calling thread holds it.

    A store call made while the lock is held (a nested call) must not retry on its own: it would
    sleep holding the lock, and the outer call retries the whole of it anyway.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._owner: int | None = None
        self._depth = 0

    def __enter__(self) -> "StoreLock":
        self._lock.acquire()
        self._owner = threading.get_ident()
        self._depth += 1
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._depth -= 1
        if not self._depth:
            self._owner = None
        self._lock.release()

    def held(self) -> bool:
        """Whether the calling thread holds the lock."""
        return self._owner == threading.get_ident()


class LockedStore(Protocol):
    """What the serialised calls and the import staging need of a store: its file, connection, lock, busy limit."""

    path: Path
    db: sqlite_utils.Database
    lock: StoreLock

    def busy_limit(self) -> float: ...


def serialized(method: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[Any, P], R]:
    """Run a Store method under the store's lock, retried while another process holds the database.

    The one connection is shared between the UI thread and workers (check_same_thread=False); without
    the lock a worker's read could land inside the UI's open transaction, or its write join it. The lock
    is let go between attempts, so a thread waiting on a busy file does not stall the others' reads.
    Every method so wrapped is one transaction (or only reads), so an attempt that failed left nothing.
    """

    @functools.wraps(method)
    def locked(self: LockedStore, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.lock.held():
            return method(self, *args, **kwargs)

        def attempt() -> R:
            with self.lock:
                return method(self, *args, **kwargs)

        return retry_busy(attempt, path=self.path, limit_s=self.busy_limit(), what=f"running {method.__name__}")

    return locked
