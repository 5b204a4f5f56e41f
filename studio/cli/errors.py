"""The one user-error helper of every ``prefstudio`` command.

Every expected failure (bad model file, unwritable or newer database, bad config, empty prompt, a file that
cannot be read) is printed as one ``error: …`` line on stderr with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from store.errors import StoreError
from store.output_folders import DISK_FULL_ERRNOS, describe_write_error
from studio.cli.terminal_text import visible
from studio.inference.engine import EngineError
from studio.inference.model_files import ModelFileError
from studio.settings import SettingsError

USER_ERRORS = (StoreError, EngineError, ModelFileError, SettingsError, ValueError)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; raise what it returns to exit with ``code``."""
    # Messages quote file names, dataset names and file contents: never let them drive the terminal.
    typer.echo(f"error: {visible(message, keep='')}", err=True)
    return typer.Exit(code)


@contextmanager
def user_errors(path: Path | None = None, *, db: Path | None = None, reading: bool = False) -> Iterator[None]:
    """Turn the errors a user can cause into one clear line and exit code 1.

    ``path`` is the file the command reads (``reading``: an OS error naming a file quotes the OS's reason)
    or its --out, named when a write fails without a file name (a full disk fails in write(), not open());
    ``db`` is the store, named in a SQLite error.
    """
    try:
        yield
    except USER_ERRORS as exc:
        raise fail(str(exc)) from None
    except RecursionError:
        raise fail(f"{path or 'the input'}: JSON nested too deeply to read (a record nests hundreds of "
                   "levels of lists or objects); nothing was imported") from None
    except sqlite3.Error as exc:
        where = db or "the studio database"
        if "full" in str(exc):
            raise fail(f"the disk holding {where} is full ({exc}); nothing was changed: free some space "
                       "and try again") from None
        raise fail(f"{where}: {exc}") from None
    except OSError as exc:  # an unwritable, read-only or full --out; an unreadable input
        if not reading or exc.errno in DISK_FULL_ERRNOS or not exc.filename:
            raise fail(describe_write_error(exc, path or Path("the output"))) from None
        raise fail(f"{exc.filename}: {exc.strerror or exc}") from None
