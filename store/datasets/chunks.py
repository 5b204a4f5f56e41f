"""Reading a dataset file a chunk at a time through Arrow, with the exact record reader beside each chunk.

The record readers of `store.datasets.files` are the reference: they read every file the studio accepts and
name every problem by line or row. Building a Python dict per record is also most of the time a large
import takes. Here a file is cut into chunks that Arrow parses in C (JSON Lines by runs of whole lines;
parquet and `save_to_disk` folders by the record batches the exact reader reads too); each chunk
carries both Arrow's table and a way to read the same records exactly. The caller uses the table when it is plainly clean and the records
otherwise, so what is imported, and every message, is the same either way; only the time differs.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from store.datasets.files import Located, batch_records, hf_dir_batches, jsonl_line_records, parquet_batches
from store.datasets.skipped import SkippedRecords

if TYPE_CHECKING:
    import pyarrow as pa

    from store.datasets.files import ArrowBatch

T = TypeVar("T")

_JSONL_CHUNK_BYTES = 1 << 20
ARROW_CONTAINERS = ("jsonl", "parquet", "hf-dir")


@dataclass(frozen=True)
class Chunk:
    """Consecutive records of a file, both readings on demand: Arrow's (a Table or RecordBatch, or None
    where Arrow cannot read them) and the exact record-by-record one."""

    arrow: Callable[[], ArrowBatch | None]
    records: Callable[[], Iterator[Located]]


def iter_chunks(path: Path, container: str, skip: SkippedRecords | None = None) -> Iterator[Chunk]:
    """The chunks of a JSON Lines, parquet or save_to_disk file, in order (`skip`: see `iter_records`)."""
    if container == "jsonl":
        return _jsonl_chunks(path, skip=skip)
    if container == "parquet":
        return _parquet_chunks(path)
    if container == "hf-dir":
        return _hf_dir_chunks(path)
    raise ValueError(f"no Arrow chunks for {container!r}; expected one of {', '.join(ARROW_CONTAINERS)}")


def _jsonl_chunks(path: Path, chunk_bytes: int = _JSONL_CHUNK_BYTES,
                  skip: SkippedRecords | None = None) -> Iterator[Chunk]:
    first_line = 1
    with path.open("rb") as handle:
        rest = b""
        while True:
            block = handle.read(chunk_bytes)
            text = rest + block
            if block:
                cut = text.rfind(b"\n") + 1
                if cut == 0:  # one line longer than a block: read on
                    rest = text
                    continue
                text, rest = text[:cut], text[cut:]
            elif not text:
                return
            else:
                rest = b""
            yield Chunk(partial(_arrow_json, text), _line_reader(path, text, first_line, skip))
            first_line += text.count(b"\n")
            if not block:
                return


def _arrow_json(text: bytes) -> pa.Table | None:
    """Arrow's table of a run of JSON Lines, or None when it is not one record per line as Arrow reads it."""
    import pyarrow as pa
    import pyarrow.json as pj

    lines = text.count(b"\n") + (not text.endswith(b"\n"))
    try:
        table = pj.read_json(pa.BufferReader(text), read_options=pj.ReadOptions(use_threads=True))
    except (pa.ArrowException, ValueError):  # a parse error, or bytes that are not UTF-8
        return None
    # Arrow skips blank lines and reads two objects on one line as two records; the line reader
    # treats both differently (a skip, an error), so any difference in count goes the exact way.
    return table if table.num_rows == lines else None


def _line_reader(path: Path, text: bytes, first_line: int,
                 skip: SkippedRecords | None = None) -> Callable[[], Iterator[Located]]:
    def records() -> Iterator[Located]:
        return jsonl_line_records(path, enumerate(io.BytesIO(text), start=first_line), skip)

    return records


def _parquet_chunks(path: Path) -> Iterator[Chunk]:
    return _batch_chunks(parquet_batches(path), "")


def _hf_dir_chunks(path: Path) -> Iterator[Chunk]:
    where_prefix, batches = hf_dir_batches(path)
    yield from _batch_chunks(batches, where_prefix)


def _batch_chunks(batches: Iterable[ArrowBatch], where_prefix: str) -> Iterator[Chunk]:
    # A batch is already Arrow's reading; its records are the exact reader's, placed alike.
    done = 0
    for batch in batches:
        yield Chunk(partial(_same, batch), partial(batch_records, [batch], where_prefix, done))
        done += batch.num_rows


def _same(value: T) -> T:
    return value
