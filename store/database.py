"""Opening the studio database: connection settings, migration, and failures turned into clear errors."""

import sqlite3
from pathlib import Path

import sqlite_utils

from store.errors import StoreCorruptError, StoreError, StoreUnwritableError
from store.schema import migrate

BUSY_TIMEOUT_MS = 5000

# SQLite result codes (primary, by name) that mean "cannot write here" or "this is not a sound database".
_UNWRITABLE_CODES = {"SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_IOERR", "SQLITE_FULL"}
_CORRUPT_CODES = {"SQLITE_NOTADB", "SQLITE_CORRUPT"}


def _primary_code(error: sqlite3.Error) -> str:
    # Extended codes read like SQLITE_IOERR_WRITE; the primary name is enough to classify them.
    name = getattr(error, "sqlite_errorname", "") or ""
    for code in _UNWRITABLE_CODES | _CORRUPT_CODES:
        if name == code or name.startswith(code + "_"):
            return code
    return name


def _translate(path: Path, error: sqlite3.Error) -> StoreError:
    """Turn an sqlite3 failure while opening `path` into the store error the user should see."""
    code = _primary_code(error)
    text = str(error)
    if code in _CORRUPT_CODES or "not a database" in text or "malformed" in text:
        return StoreCorruptError(
            f"{path} is not a readable Preference Studio database ({text}). "
            "Move it aside, or pass --db to use another file."
        )
    if code in _UNWRITABLE_CODES or "readonly" in text or "unable to open" in text:
        return StoreUnwritableError(
            f"Cannot write the studio database {path} ({text}). "
            f"Check that {path.parent} is writable, or pass --db to use another file."
        )
    return StoreError(f"Cannot open the studio database {path}: {text}")


def _prepare_location(path: Path) -> None:
    """Create the folder and touch the file, so an OS refusal is reported with its own reason."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker else (error.strerror or str(error))
        raise StoreUnwritableError(
            f"Cannot create the folder {path.parent} for the studio database {path}: "
            f"{reason}. Pass --db to use another file."
        ) from error
    try:
        # Appending nothing creates a missing file and proves an existing one writable; SQLite itself
        # would only say "unable to open database file" without the reason.
        with path.open("ab"):
            pass
    except OSError as error:
        raise StoreUnwritableError(
            f"Cannot write the studio database {path}: {error.strerror or error}. "
            "Pass --db to use another file."
        ) from error


def _configure(db: sqlite_utils.Database) -> None:
    db.execute("PRAGMA busy_timeout = 5000")  # = BUSY_TIMEOUT_MS; PRAGMAs take no parameters
    db.execute("PRAGMA foreign_keys = ON")
    # WAL lets workers and the training process read while the UI writes; FULL sync makes every
    # committed judgement survive a power cut, not only a process crash.
    db.enable_wal()
    db.execute("PRAGMA synchronous = FULL")
    # Take and drop the write lock once: a read-only file or folder (where SQLite quietly opens the
    # file read-only) fails here, at open, instead of at the user's first judgement.
    db.conn.execute("BEGIN IMMEDIATE")
    db.conn.execute("ROLLBACK")


def _check_pages(path: Path, db: sqlite_utils.Database) -> None:
    """Refuse a file with damaged pages at open, instead of failing on some later read or write.

    ``quick_check`` reads every page but skips the index-content checks of ``integrity_check``:
    O(file size), a fraction of a second for a studio's database. A check stopped by a malformed page is
    reported the same way; any other failure to run it raises sqlite3.DatabaseError, which the caller turns
    into a StoreCorruptError too.
    """
    try:
        rows = [str(row[0]) for row in db.execute("PRAGMA quick_check(5)").fetchall()]
    except sqlite3.DatabaseError as error:  # damage that stops the check itself (a mangled b-tree page)
        if "malformed" not in str(error):
            raise
        rows = [f"the check itself stopped: {error}"]
    if rows != ["ok"]:
        # Each row may hold several lines ("*** in database main ***\nPage 40: …"): keep the problems.
        problems = [line for row in rows for line in row.splitlines() if line and not line.startswith("***")]
        raise StoreCorruptError(
            f"{path} has damaged pages ({'; '.join(problems[:3])}). Nothing was changed. Restore it from "
            "a backup or move it aside, or pass --db to use another file."
        )


def open_database(path: Path) -> sqlite_utils.Database:
    """Open (creating if needed) the studio database at `path`, configured and migrated.

    Raises StoreUnwritableError, StoreCorruptError or SchemaTooNewError with a message naming the file.
    """
    path = Path(path).expanduser()
    _prepare_location(path)
    # check_same_thread=False: the TUI writes from its UI thread while workers read; the Store
    # serialises access with its own lock.
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        db = sqlite_utils.Database(conn)
        _configure(db)
        _check_pages(path, db)
        migrate(db)
    except sqlite3.Error as error:
        conn.close()
        raise _translate(path, error) from error
    except BaseException:
        conn.close()
        raise
    return db


def integrity_ok(db: sqlite_utils.Database) -> bool:
    """True when SQLite's own integrity check finds nothing wrong with the file."""
    try:
        rows = db.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError:
        # Damage bad enough to stop the check itself is still an answer: not ok.
        return False
    return [tuple(row) for row in rows] == [("ok",)]
