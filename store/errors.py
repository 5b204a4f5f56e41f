"""Errors the store raises. Each message is meant for the user: it names the file and what to do."""


class StoreError(Exception):
    """Base class for every store failure; the message is user-facing and names the file."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer Preference Studio than this one."""


class StoreUnwritableError(StoreError):
    """The database file or its folder cannot be created or written."""


class StoreCorruptError(StoreError):
    """The file is not an SQLite database, or it is damaged."""


class RecordNotFoundError(StoreError, LookupError):
    """A session, run or other record asked for by id does not exist."""


class StoreBusyError(StoreError):
    """Another writer kept the database locked for longer than the store is willing to wait."""
