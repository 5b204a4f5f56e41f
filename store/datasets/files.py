"""Reading dataset files record by record: JSON arrays, JSON Lines, parquet and `save_to_disk` folders.

Every reader streams: JSON Lines line by line, JSON arrays through an incremental parser (one record
in memory at a time, no extra dependency), parquet by record batches, and a `datasets` folder by
batches of its memory-mapped Arrow table. Each record comes with where it was found ("line 12",
"record 7", "row 3") so later errors can point at it.

Malformed JSON, text that is not UTF-8 and empty files raise `DatasetImportError` naming the file and
the line and column, or the byte offset.
"""

from __future__ import annotations

import codecs
import json
import json.scanner
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from store.datasets.skipped import SkippedRecords
from store.errors import StoreError

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

    # parquet gives record batches, a save_to_disk folder (datasets' arrow format) tables
    ArrowBatch: TypeAlias = pa.RecordBatch | pa.Table

CONTAINERS = ("json", "jsonl", "parquet", "hf-dir")
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")

_CHUNK = 1 << 18
ARROW_BATCH_ROWS = 4096  # records per Arrow batch read from parquet and save_to_disk
_WHITESPACE = " \t\n\r"

Located = tuple[str, Any]  # (where, record)


class DatasetImportError(StoreError, ValueError):
    """A dataset file cannot be imported; the message names the file and where in it the problem is."""


def is_hf_dir(path: Path) -> bool:
    """Whether `path` is a folder written by `datasets`' `save_to_disk` (a Dataset or a DatasetDict)."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def sniff_container(path: Path) -> str:
    """The container of a file or folder: 'hf-dir', 'parquet', 'json' (an array) or 'jsonl'.

    The content decides, not only the name: `datasets`' own `to_json("x.json")` writes JSON Lines.
    """
    if path.is_dir():
        if is_hf_dir(path):
            return "hf-dir"
        raise DatasetImportError(f"{path} is a folder but not one written by datasets' save_to_disk.")
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head[:4] == b"PAR1":
        return "parquet"
    if path.suffix.lower() == ".parquet":
        raise DatasetImportError(f"{path}: not a parquet file (it does not start with the PAR1 magic bytes).")
    text = head.lstrip(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if not text:
        if path.stat().st_size > len(head):  # whitespace only so far: look further before calling it empty
            return "jsonl"
        raise DatasetImportError(f"{path} is empty: no records to import.")
    return "json" if text[:1] == b"[" else "jsonl"


def iter_records(path: Path, container: str, skip: SkippedRecords | None = None) -> Iterator[Located]:
    """Yield (where, record) for every record of `path` read as `container`, in file order. With `skip`,
    JSON Lines that are not JSON (or not UTF-8) are left out and noted there instead of refusing the file; a
    JSON array cannot be read past a syntax error, so it still refuses."""
    if container == "jsonl":
        return _jsonl_records(path, skip)
    if container == "json":
        return _json_array_records(path)
    if container == "parquet":
        return _parquet_records(path)
    if container == "hf-dir":
        return _hf_dir_records(path)
    raise ValueError(f"unknown container {container!r}; expected one of {', '.join(CONTAINERS)}")


# Text encoding


def _not_utf8(path: Path) -> DatasetImportError:
    """The error for a file that fails UTF-8 decoding, with the exact byte offset and line.

    Lines are split on b"\\n", which never occurs inside a multi-byte UTF-8 sequence, so decoding line
    by line finds the same first bad byte as decoding the whole file.
    """
    offset = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                bad = line[error.start]
                return DatasetImportError(
                    f"{path}: not UTF-8 text: byte 0x{bad:02x} at byte offset {offset + error.start} "
                    f"(line {number}). Convert the file to UTF-8 and import it again."
                )
            offset += len(line)
    return DatasetImportError(f"{path}: not UTF-8 text. Convert the file to UTF-8 and import it again.")


def _malformed(path: Path, line: int, column: int, message: str) -> DatasetImportError:
    return DatasetImportError(f"{path}: malformed JSON at line {line}, column {column}: {message}.")


# json's parser recurses once per level: a record nested thousands deep raises RecursionError, not a
# JSONDecodeError. It is a bad record like any other: named, never a traceback.
_TOO_DEEP = "a value nested too deeply to read (thousands of levels of lists or objects)"


# JSON Lines


def _jsonl_records(path: Path, skip: SkippedRecords | None = None) -> Iterator[Located]:
    seen_any = False
    with path.open("rb") as handle:
        for located in jsonl_line_records(path, enumerate(handle, start=1), skip):
            seen_any = True
            yield located
    if not seen_any:
        raise DatasetImportError(f"{path} is empty: no records to import.")


def jsonl_line_records(path: Path, lines: Iterable[tuple[int, bytes]],
                       skip: SkippedRecords | None = None) -> Iterator[Located]:
    """The records of numbered raw JSON Lines (all of a file, or a run of its lines), blank lines skipped; with
    `skip`, a line that is not JSON (or not UTF-8) is noted there and left out instead of refusing the file."""
    decoder = json.JSONDecoder()
    scan = json.scanner.make_scanner(decoder)  # the C scanner json.loads ends in, without its wrappers
    for number, raw in lines:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            if skip is not None:
                skip.add("lines that are not UTF-8 text", f"line {number}", malformed=True)
                continue
            raise _not_utf8(path) from None
        if number == 1:
            line = line.removeprefix("\ufeff")
        start = 0
        if not line.startswith("{"):
            stripped = line.lstrip()
            if not stripped:
                continue
            start = len(line) - len(stripped)
        try:
            record, end = scan(line, start)
            if line[end:].strip():
                raise ValueError
        except RecursionError:
            if skip is not None:
                skip.add("malformed JSON", f"line {number}", malformed=True)
                continue
            raise _malformed(path, number, start + 1, _TOO_DEEP) from None
        except (StopIteration, ValueError):
            try:
                record = decoder.decode(line)  # the same parse, for json's own message and column
            except json.JSONDecodeError as error:
                if skip is not None:
                    skip.add("malformed JSON", f"line {number}", malformed=True)
                    continue
                if number == 1:
                    _refuse_single_object(path)
                raise _malformed(path, number, error.colno, error.msg) from None
        yield f"line {number}", record


def _refuse_single_object(path: Path) -> None:
    """A file whose first line is not JSON may be one pretty-printed object: say so, not 'line 1'."""
    try:
        whole = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return
    if isinstance(whole, dict):
        keys = ", ".join(list(whole)[:8])
        raise DatasetImportError(
            f"{path} holds one JSON object (keys: {keys}); expected a JSON array of records or JSON Lines "
            "(one record per line)."
        )


# JSON arrays, incrementally


class _TextWindow:
    """A sliding window over a file's decoded text that knows the line and column of any position."""

    def __init__(self, path: Path, chunk: int) -> None:
        self.path = path
        self._handle = path.open("rb")
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.chunk = chunk
        self.text = ""
        self.eof = False
        self._dropped_lines = 0  # newlines in text already dropped from the window
        self._dropped_col = 0  # characters after the last dropped newline
        self._first = True

    def close(self) -> None:
        self._handle.close()

    def more(self) -> bool:
        """Append the next chunk; False at the end of the file."""
        if self.eof:
            return False
        raw = self._handle.read(self.chunk)
        try:
            piece = self._decoder.decode(raw, final=not raw)
        except UnicodeDecodeError:
            raise _not_utf8(self.path) from None
        if self._first and piece:
            piece = piece.removeprefix("\ufeff")
            self._first = False
        if not raw:
            self.eof = True
        self.text += piece
        return bool(raw)

    def drop(self, upto: int) -> None:
        """Forget text before `upto`, keeping line and column bookkeeping."""
        gone = self.text[:upto]
        newlines = gone.count("\n")
        if newlines:
            self._dropped_lines += newlines
            self._dropped_col = len(gone) - gone.rfind("\n") - 1
        else:
            self._dropped_col += len(gone)
        self.text = self.text[upto:]

    def position(self, index: int) -> tuple[int, int]:
        """1-based (line, column) of `index` in the window."""
        before = self.text[:index]
        newlines = before.count("\n")
        if newlines:
            return self._dropped_lines + newlines + 1, index - before.rfind("\n")
        return self._dropped_lines + 1, self._dropped_col + index + 1

    def skip_space(self, index: int) -> int:
        """The first non-whitespace index at or after `index`, reading more as needed; len(text) at EOF."""
        while True:
            while index < len(self.text) and self.text[index] in _WHITESPACE:
                index += 1
            if index < len(self.text) or not self.more():
                return index


def _json_array_records(path: Path, chunk: int = _CHUNK) -> Iterator[Located]:
    """Yield the elements of a top-level JSON array one by one, holding about one element in memory."""
    window = _TextWindow(path, chunk)
    decoder = json.JSONDecoder()
    try:
        pos = window.skip_space(0)
        if pos >= len(window.text):
            raise DatasetImportError(f"{path} is empty: no records to import.")
        if window.text[pos] != "[":
            raise _malformed(path, *window.position(pos), "expected '[' to open an array of records")
        pos = window.skip_space(pos + 1)
        number = 0
        if pos < len(window.text) and window.text[pos] == "]":
            raise DatasetImportError(f"{path} holds an empty array: no records to import.")
        while True:
            if pos >= len(window.text):
                raise _malformed(path, *window.position(pos), "the file ends inside the array (missing ']')")
            if pos > window.chunk:  # compact now and then: dropping per record would copy the window each time
                window.drop(pos)
                pos = 0
            while True:
                try:
                    record, end = decoder.raw_decode(window.text, pos)
                except RecursionError:
                    raise _malformed(path, *window.position(pos), _TOO_DEEP) from None
                except json.JSONDecodeError as error:
                    # A record cut by the end of the window is not an error until the file has ended.
                    if window.more():
                        continue
                    raise _malformed(path, *window.position(error.pos), error.msg) from None
                # A number at the very end of the window may continue in the next chunk.
                if end >= len(window.text) and window.more():
                    continue
                break
            number += 1
            yield f"record {number}", record
            pos = window.skip_space(end)
            if pos >= len(window.text):
                raise _malformed(path, *window.position(pos), "the file ends inside the array (missing ']')")
            mark = window.text[pos]
            if mark == "]":
                rest = window.skip_space(pos + 1)
                if rest < len(window.text):
                    raise _malformed(path, *window.position(rest), "extra data after the array")
                return
            if mark != ",":
                raise _malformed(path, *window.position(pos), "expected ',' or ']' after a record")
            pos = window.skip_space(pos + 1)
            if pos < len(window.text) and window.text[pos] == "]":
                raise _malformed(path, *window.position(pos), "a trailing ',' before ']'")
    finally:
        window.close()


# Parquet and datasets folders


def _parquet_records(path: Path) -> Iterator[Located]:
    return batch_records(parquet_batches(path))


def _hf_dir_records(path: Path) -> Iterator[Located]:
    where_prefix, batches = hf_dir_batches(path)
    yield from batch_records(batches, where_prefix)


def batch_records(batches: Iterable[ArrowBatch], where_prefix: str = "", done: int = 0) -> Iterator[Located]:
    """The records of Arrow batches as dicts, placed as "row N" counting on from `done` rows."""
    number = done
    for batch in batches:
        for record in batch.to_pylist():
            number += 1
            yield f"{where_prefix}row {number}", record


def parquet_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """A parquet file's record batches in order; a damaged or empty file raises DatasetImportError."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, … for a damaged file
        raise DatasetImportError(f"{path}: not a readable parquet file ({error}).") from None
    if parquet.metadata.num_rows == 0:
        raise DatasetImportError(f"{path} is empty: the parquet file has no rows.")
    done = 0
    batches = parquet.iter_batches(batch_size=ARROW_BATCH_ROWS)
    while True:
        try:
            batch = next(batches, None)
        except (OSError, ValueError) as error:
            raise DatasetImportError(f"{path}: cannot read parquet row group after row {done} ({error}).") from None
        if batch is None:
            return
        yield batch
        done += batch.num_rows


def hf_dir_batches(path: Path) -> tuple[str, Iterator[ArrowBatch]]:
    """The prefix of a save_to_disk folder's record places and its record batches (see `load_hf_split`)."""
    loaded, where_prefix = load_hf_split(path)
    return where_prefix, loaded.with_format("arrow").iter(batch_size=ARROW_BATCH_ROWS)


def load_hf_split(path: Path) -> tuple[datasets.Dataset, str]:
    """The split of a save_to_disk folder to import (its 'train' split, or its only one) and the prefix
    of its records' places ("train " for a DatasetDict, "" for a Dataset)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises FileNotFoundError, ArrowInvalid, … for a broken folder
        raise DatasetImportError(f"{path}: cannot load the saved dataset ({error}).") from None
    where_prefix = ""
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if "train" in loaded:
            split = "train"
        elif len(splits) == 1:
            split = splits[0]
        else:
            raise DatasetImportError(
                f"{path} holds the splits {', '.join(splits)} and none is 'train': save the split to import "
                "on its own with save_to_disk."
            )
        loaded = loaded[split]
        where_prefix = f"{split} "
    if loaded.num_rows == 0:
        raise DatasetImportError(f"{path} is empty: the saved dataset has no rows.")
    return loaded, where_prefix
