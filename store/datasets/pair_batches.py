"""Imported preference pairs as Arrow record batches: one SQLite row holds a batch of pairs.

Why batches: a dataset of 100k pairs stored a row per pair cost a third of a second in SQLite alone
(binding, B-tree inserts and twice the text through the WAL), several times what reading the same file
with `datasets` costs. A batch is one compressed Arrow IPC blob, written and read in C, so an import is
bounded by reading the file and hashing its records, and an export to parquet never builds a Python
object per pair. The studio's own judgements stay rows: they are written one at a time.

A stored batch has the columns of `STORED_SCHEMA`: each pair's id (unique across datasets, never
reused; a run's held-out ids name pairs as "d<id>"), its text, the prompt messages as JSON for pairs
imported as conversations, and a 16-byte content digest that keeps a dataset free of duplicates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from xxhash import xxh3_128_digest

# What an import hands the store: the text of each pair; prompt_messages_json is null for plain text.
INPUT_SCHEMA = pa.schema([
    ("prompt", pa.string()),
    ("chosen", pa.string()),
    ("rejected", pa.string()),
    ("prompt_messages_json", pa.string()),
])
STORED_SCHEMA = pa.schema([("pair_id", pa.int64()), *INPUT_SCHEMA, ("content_hash", pa.binary(16))])

# lz4: 26 MB of imported text is stored in 3 MB, at a fraction of the cost of writing it uncompressed
# (zstd stores 2 MB but takes twice as long).
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")
_SEPARATOR = b"\xff"
ROWS_PER_BATCH = 4096


def pair_digest(prompt_key: str, chosen: str, rejected: str, conversational: bool) -> bytes:
    """The content digest of one pair: XXH3-128 of a tag and its texts joined by 0xFF, a byte that never
    occurs in UTF-8 text, so two different pairs never hash the same bytes. `prompt_key` is the prompt
    text, or the prompt messages' JSON for a conversational pair (whose prompt text is only a
    flattening of the messages).

    XXH3 rather than a cryptographic hash: the digest only tells a dataset's own records apart, and a
    large import hashes every record. 128 bits make an accidental collision vanishingly unlikely.
    `batch_digests` computes the same for whole batches.
    """
    tag = b"messages" if conversational else b"pair"
    return xxh3_128_digest(_SEPARATOR.join((tag, prompt_key.encode(), chosen.encode(), rejected.encode())))


def batch_digests(batch: pa.RecordBatch) -> list[bytes]:
    """`pair_digest` of every row of an INPUT_SCHEMA batch, in order; the bytes are joined by Arrow."""
    prompt, chosen, rejected, messages = (batch.column(name) for name in INPUT_SCHEMA.names)
    if messages.null_count == len(messages):
        tag, key = pa.scalar(b"pair"), prompt
    else:
        tag = pc.if_else(messages.is_valid(), pa.scalar(b"messages"), pa.scalar(b"pair"))
        key = pc.coalesce(messages, prompt)
    joined = pc.binary_join_element_wise(tag, *(column.cast(pa.binary()) for column in (key, chosen, rejected)),
                                         pa.scalar(_SEPARATOR))
    return [xxh3_128_digest(value) for value in joined.to_pylist()]


def input_batches(rows: Iterable[tuple[str, str, str, list[dict[str, str]] | None]], size: int = ROWS_PER_BATCH
                  ) -> Iterator[pa.RecordBatch]:
    """INPUT_SCHEMA batches of `size` rows from (prompt, chosen, rejected, prompt messages or None) tuples."""
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        prompts, chosen, rejected, messages = zip(*chunk, strict=True)
        messages_json = [json.dumps(m, ensure_ascii=False) if m is not None else None for m in messages]
        yield text_batch(prompts, chosen, rejected, messages_json)


def text_batch(*columns: Sequence[str | None]) -> pa.RecordBatch:
    """An INPUT_SCHEMA batch from its four columns of Python text (prompt_messages_json may hold None)."""
    return pa.RecordBatch.from_arrays([pa.array(column, pa.string()) for column in columns], schema=INPUT_SCHEMA)


def as_input_batch(table: pa.Table | pa.RecordBatch) -> pa.RecordBatch:
    """A table or batch with prompt, chosen, rejected (and maybe prompt_messages_json) text columns as
    one INPUT_SCHEMA batch."""
    n = table.num_rows
    columns = []
    for field in INPUT_SCHEMA:
        if field.name in table.column_names:
            column = table.column(field.name)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            columns.append(column.cast(pa.string()))
        else:
            columns.append(pa.nulls(n, pa.string()))
    return pa.RecordBatch.from_arrays(columns, schema=INPUT_SCHEMA)


def stored_batch(batch: pa.RecordBatch, first_id: int, digests: list[bytes]) -> pa.RecordBatch:
    """An INPUT_SCHEMA batch with its pair ids (first_id, first_id + 1, …) and digests added."""
    ids = pa.array(np.arange(first_id, first_id + batch.num_rows, dtype=np.int64))
    return pa.RecordBatch.from_arrays([ids, *batch.columns, pa.array(digests, pa.binary(16))],
                                      schema=STORED_SCHEMA)


def encode(batch: pa.RecordBatch) -> bytes:
    """A stored batch as compressed Arrow IPC stream bytes, for a BLOB column."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, STORED_SCHEMA, options=_IPC_OPTIONS) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def decode(blob: bytes, columns: list[str] | None = None) -> pa.RecordBatch:
    """The stored batch in `blob` (only `columns`, when given)."""
    with pa.ipc.open_stream(pa.py_buffer(blob)) as reader:
        batch = reader.read_next_batch()  # `encode` writes exactly one
    return batch.select(columns) if columns is not None else batch


def rows_of(batch: pa.RecordBatch) -> Iterator[tuple[Any, ...]]:
    """A stored batch's rows as (pair_id, prompt, chosen, rejected, prompt_messages_json) tuples."""
    return zip(*(batch.column(name).to_pylist()
                 for name in ("pair_id", "prompt", "chosen", "rejected", "prompt_messages_json")), strict=True)
