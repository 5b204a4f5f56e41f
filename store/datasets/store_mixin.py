"""Imported datasets in the store: labelled stance items, test prompts and preference pairs.

A mixin of `Store` (like `RunLog`). Records are deduplicated by a digest of their content, never their
id, so importing a file twice adds nothing and a re-import into the same dataset adds only the new
records. An import is stored whole or not at all, without holding the database while it reads the file:
it writes staged rows in short transactions and makes them visible in one (store/datasets/import_staging.py).
Stance items and test prompts are rows; preference pairs are Arrow batches (store/datasets/pair_batches.py),
since pair datasets run to 100k+.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import sqlite_utils

from store.datasets import import_staging, pair_batches
from store.datasets.feedback_formats import FEEDBACK_KINDS, FeedbackItem, item_from_json
from store.datasets.files import DatasetImportError
from store.datasets.formats import KINDS, StanceRow, TestRow
from store.datasets.skipped import SkipGroup, describe_skips
from store.errors import RecordNotFoundError
from store.pair_ids import dataset_pair_id, parse_pair_id
from store.pairs import PreferencePair
from store.transactions import StoreLock, serialized

_INSERT_BATCH = 1000
STAGE_ROWS = 5000  # stance items or test prompts written per staged transaction
STAGE_BYTES = 4 << 20  # Arrow bytes of pairs written (compressed) per staged transaction
DATASET_VERDICT = "dataset"


@dataclass(frozen=True)
class DatasetRecord:
    """One imported dataset and how much it holds (items are stance items or pairs, by kind)."""

    id: int
    name: str
    kind: str  # 'stance' | 'preference'
    format: str  # the schema it was read as: stance-json, trl-standard, trl-conversational, hh
    source_path: str | None
    created_at: str
    n_items: int
    n_test_prompts: int


@dataclass(frozen=True)
class StanceItem:
    """A labelled item of the DPO homework schema: a prompt with a support and an oppose answer."""

    id: int
    item_key: str  # the record's own id, as text
    prompt: str
    support: str
    oppose: str


@dataclass(frozen=True)
class TestPrompt:
    """A prompt to compare answers on before and after training."""

    __test__ = False  # not a pytest test class, despite the name

    item_key: str
    prompt: str


@dataclass(frozen=True)
class ImportReport:
    """What an import did: records read, stored and already present."""

    dataset_id: int
    name: str
    kind: str
    format: str
    n_read: int
    n_added: int
    n_duplicates: int
    n_test_prompts: int  # test prompts stored by this import
    n_test_duplicates: int = 0
    n_skipped: int = 0  # records left out (see store/datasets/skipped.py)
    skipped: tuple[str, ...] = field(default_factory=tuple)  # where the first skipped ones were
    skips: tuple[SkipGroup, ...] = field(default_factory=tuple)  # why, grouped

    def describe(self) -> str:
        """One line for the user, e.g. "stored 50 items (0 duplicates) in dataset 'x' (stance)"."""
        unit = {"stance": "items", "preference": "pairs"}.get(self.kind, self.kind)  # labels, ratings, …
        text = f"stored {self.n_added} {unit} ({self.n_duplicates} duplicates) in dataset '{self.name}' ({self.kind})"
        if self.n_test_prompts or self.n_test_duplicates:
            text += f", and {self.n_test_prompts} test prompts ({self.n_test_duplicates} duplicates)"
        if self.skips:
            text += "; " + describe_skips(self.skips)
        elif self.n_skipped:
            shown = ", ".join(self.skipped)
            more = ", …" if self.n_skipped > len(self.skipped) else ""
            text += f"; skipped {self.n_skipped} ({shown}{more})"
        return text


class ExportPair(NamedTuple):
    """A pair as export writes it; `prompt_messages` is set for pairs imported as conversations.

    A NamedTuple rather than a frozen dataclass: exports build one per row, and a frozen dataclass's
    __init__ costs several times a tuple's.
    """

    pair_id: str
    prompt: str
    chosen: str
    rejected: str
    prompt_messages: list[dict[str, str]] | None = None

    def to_standard(self) -> dict[str, str]:
        """TRL's standard preference row: prompt, chosen and rejected strings."""
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}

    def to_conversational(self) -> dict[str, list[dict[str, str]]]:
        """TRL's conversational preference row: the prompt messages and one assistant reply each."""
        prompt = self.prompt_messages or [{"role": "user", "content": self.prompt}]
        return {"prompt": prompt, "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}


_canonical = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode


def content_hash(content: list[object]) -> str:
    """sha256 of the canonical JSON of a record's content (sorted keys, no spaces, UTF-8), as hex."""
    return _content_digest(content).hex()


def _content_digest(content: list[object]) -> bytes:
    return hashlib.sha256(_canonical(content).encode("utf-8")).digest()


def _text_digest(tag: str, *texts: str) -> bytes:
    # The same bytes as content_hash([tag, *texts]), built from the C string encoder: imports hash
    # every record, and json.dumps' generic path is most of an import's Python time.
    body = ",".join(map(encode_basestring, (tag, *texts)))
    return hashlib.sha256(f"[{body}]".encode()).digest()


# An import keeps a set of the raw sha256 digests it has seen (32 bytes each, half the hex text) and
# stores the hex text, so rows stay readable in any SQLite browser.


def _stance_digest(row: StanceRow) -> bytes:
    return _text_digest("stance", row[1], row[2], row[3])


def _test_digest(row: TestRow) -> bytes:
    return _text_digest("test", row[1])


def _feedback_digest(row: tuple[str]) -> bytes:
    return _text_digest("feedback", row[0])  # the item's canonical JSON (feedback_formats.item_json)


class _Table(NamedTuple):
    """How one row table takes rows: reading a dataset's stored hashes, its INSERT (dataset_id, the row's
    fields, its hash), and a row's content digest."""

    digests: str
    insert: str
    digest: Callable[[Any], bytes]


_TABLES = {
    "stance": _Table("SELECT content_hash FROM dataset_stance_items WHERE dataset_id = ? AND "
                     "(import_id IS NULL OR import_id NOT IN "
                     "(SELECT id FROM dataset_imports WHERE state = 'staging'))",
                     "INSERT INTO dataset_stance_items (import_id, dataset_id, item_key, prompt, support, oppose, "
                     "content_hash) VALUES (?, ?, ?, ?, ?, ?, ?)", _stance_digest),
    "test": _Table("SELECT content_hash FROM dataset_test_prompts WHERE dataset_id = ? AND "
                   "(import_id IS NULL OR import_id NOT IN "
                   "(SELECT id FROM dataset_imports WHERE state = 'staging'))",
                   "INSERT INTO dataset_test_prompts (import_id, dataset_id, item_key, prompt, content_hash) "
                   "VALUES (?, ?, ?, ?, ?)", _test_digest),
    "feedback": _Table("SELECT content_hash FROM dataset_feedback_items WHERE dataset_id = ? AND "
                       "(import_id IS NULL OR import_id NOT IN "
                       "(SELECT id FROM dataset_imports WHERE state = 'staging'))",
                       "INSERT INTO dataset_feedback_items (import_id, dataset_id, item_json, content_hash) "
                       "VALUES (?, ?, ?, ?)", _feedback_digest),
}

# Every read shows only what finished imports wrote (see store/datasets/import_staging.py): a row is visible
# when no import wrote it or its import is no longer 'staging'. The condition is written out in each query
# (plain literals, no SQL assembled at run time); an unqualified import_id is the innermost table's.
# Callers add "AND ..." conditions and an ORDER BY.
_DATASETS_SQL = """
SELECT d.*,
  CASE d.kind WHEN 'stance' THEN (SELECT COUNT(*) FROM dataset_stance_items s WHERE s.dataset_id = d.id
                                  AND (import_id IS NULL
       OR import_id NOT IN (SELECT id FROM dataset_imports WHERE state = 'staging')))
              WHEN 'preference' THEN (SELECT COALESCE(SUM(n_pairs), 0) FROM dataset_pair_batches p
                                      WHERE p.dataset_id = d.id AND (import_id IS NULL
       OR import_id NOT IN (SELECT id FROM dataset_imports WHERE state = 'staging')))
              ELSE (SELECT COUNT(*) FROM dataset_feedback_items f WHERE f.dataset_id = d.id
                    AND (import_id IS NULL
       OR import_id NOT IN (SELECT id FROM dataset_imports WHERE state = 'staging')))
              END AS n_items,
  (SELECT COUNT(*) FROM dataset_test_prompts t WHERE t.dataset_id = d.id
   AND (import_id IS NULL
       OR import_id NOT IN (SELECT id FROM dataset_imports WHERE state = 'staging'))) AS n_test_prompts
FROM datasets d
WHERE (import_id IS NULL
       OR import_id NOT IN (SELECT id FROM dataset_imports WHERE state = 'staging'))
"""

class Datasets:
    """The dataset methods of `Store`."""

    db: sqlite_utils.Database
    path: Path
    lock: StoreLock

    # Writing

    def import_records(
        self,
        name: str,
        kind: str,
        fmt: str,
        source_path: str | Path | None,
        stance_items: Iterable[StanceRow] | None = None,
        test_prompts: Iterable[TestRow] | None = None,
        pairs: Iterable[pa.RecordBatch] | None = None,
        on_progress: Callable[[int], None] | None = None,
        *,
        feedback_items: Iterable[tuple[str]] | None = None,
        stage_rows: int = STAGE_ROWS,
        stage_bytes: int = STAGE_BYTES,
        claim_wait_s: float = import_staging.CLAIM_WAIT_S,
    ) -> ImportReport:
        """Store rows into dataset `name` (created if new), all or nothing, and say what was added.

        Stance items and test prompts are tuples (item_key, prompt, support, oppose) and (item_key,
        prompt); pairs come as Arrow batches of `pair_batches.INPUT_SCHEMA` (`pair_batches.input_batches`
        makes them from tuples); the other feedback kinds' items are 1-tuples of their canonical JSON
        (store/datasets/feedback_formats.py). A record whose content the dataset already holds (or that came earlier
        in this import) is counted, not stored. The iterables are consumed outside any transaction;
        what they yield is written in short staged transactions (`stage_rows` rows, `stage_bytes` of
        pairs each) that stay invisible until the import finishes, so other writers wait at most one of
        them. An error the iterables raise (a bad record found late in a file) discards everything this
        import wrote, the dataset row included. `on_progress` gets the number of records read so far
        after each batch. Another import of the same name that is still running is waited for, up to
        `claim_wait_s` seconds.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown dataset kind {kind!r}; expected one of {', '.join(KINDS)}")
        if not name or not name.strip():
            raise DatasetImportError("a dataset needs a name")
        if (kind == "stance" and pairs is not None) or (kind == "preference" and stance_items is not None):
            raise ValueError(f"a {kind} dataset takes {'stance items' if kind == 'stance' else 'pairs'}")
        if kind in ("stance", "preference") and feedback_items is not None:
            raise ValueError(f"a {kind} dataset takes no feedback items")
        import_staging.sweep_dead(self)
        import_id, dataset_id = import_staging.claim(self, name, kind, fmt, source_path, claim_wait_s)
        try:
            if kind == "stance":
                n_read, n_added = self._stage_rows("stance", import_id, dataset_id, stance_items or (),
                                                   on_progress, stage_rows)
            elif kind != "preference":
                n_read, n_added = self._stage_rows("feedback", import_id, dataset_id, feedback_items or (),
                                                   on_progress, stage_rows)
            else:
                n_read, n_added = self._stage_pair_batches(import_id, dataset_id, pairs or (), on_progress,
                                                           stage_bytes)
            n_test, n_test_added = self._stage_rows("test", import_id, dataset_id, test_prompts or (), None,
                                                    stage_rows)
            import_staging.finish(self, import_id)
        except BaseException:
            import_staging.discard_quietly(self, import_id)
            raise
        return ImportReport(
            dataset_id=dataset_id, name=name, kind=kind, format=fmt, n_read=n_read, n_added=n_added,
            n_duplicates=n_read - n_added, n_test_prompts=n_test_added, n_test_duplicates=n_test - n_test_added,
        )

    def _stage_rows(self, table: str, import_id: int, dataset_id: int, rows: Iterable[tuple],
                    on_progress: Callable[[int], None] | None, stage_rows: int) -> tuple[int, int]:
        # Content is kept unique here rather than by a unique index (see schema v4): the dataset's
        # hashes are read once, after this import claimed the dataset, so no other import can add rows
        # to it between this read and the inserts (see store/datasets/import_staging.py).
        spec = _TABLES[table]
        conn = self.db.conn
        seen = import_staging.locked_read(
            self, lambda: {bytes.fromhex(digest) for (digest,) in conn.execute(spec.digests, [dataset_id])})
        digest_of = spec.digest
        n_read = n_added = 0
        fresh: list[tuple] = []
        iterator: Iterator[tuple] = iter(rows)
        while batch := list(islice(iterator, _INSERT_BATCH)):
            for row in batch:
                digest = digest_of(row)
                if digest not in seen:
                    seen.add(digest)
                    fresh.append((import_id, dataset_id, *row, digest.hex()))
            if len(fresh) >= stage_rows:
                self._write_staged_rows(spec.insert, fresh)
                n_added += len(fresh)
                fresh = []
            n_read += len(batch)
            if on_progress is not None:
                on_progress(n_read)
        if fresh:
            self._write_staged_rows(spec.insert, fresh)
            n_added += len(fresh)
        return n_read, n_added

    def _write_staged_rows(self, insert: str, rows: list[tuple]) -> None:
        import_staging.short_write(self, "importing a dataset", lambda: self.db.conn.executemany(insert, rows))

    def _stored_digests(self, dataset_id: int) -> set[bytes]:
        seen: set[bytes] = set()
        for batch in self.iter_pair_batches(dataset_id, ["content_hash"]):
            seen.update(batch.column(0).to_pylist())
        return seen

    def _stage_pair_batches(self, import_id: int, dataset_id: int, batches: Iterable[pa.RecordBatch],
                            on_progress: Callable[[int], None] | None, stage_bytes: int) -> tuple[int, int]:
        seen = self._stored_digests(dataset_id)
        pending: list[tuple[pa.RecordBatch, list[bytes]]] = []
        pending_bytes = 0
        n_read = n_added = 0
        for batch in batches:
            digests = pair_batches.batch_digests(batch)
            n_read += batch.num_rows
            if seen.isdisjoint(digests) and len(set(digests)) == len(digests):  # the usual case, checked in C
                seen.update(digests)
            else:
                keep = [not (digest in seen or seen.add(digest)) for digest in digests]  # the first of each
                batch = batch.filter(pa.array(keep))
                digests = [digest for digest, kept in zip(digests, keep, strict=True) if kept]
            if batch.num_rows:
                pending.append((batch, digests))
                pending_bytes += batch.nbytes
                n_added += batch.num_rows
            if pending_bytes >= stage_bytes:
                self._write_staged_pairs(import_id, dataset_id, pending)
                pending, pending_bytes = [], 0
            if on_progress is not None:
                on_progress(n_read)
        if pending:
            self._write_staged_pairs(import_id, dataset_id, pending)
        return n_read, n_added

    def _write_staged_pairs(self, import_id: int, dataset_id: int,
                            pending: list[tuple[pa.RecordBatch, list[bytes]]]) -> None:
        conn = self.db.conn

        def write() -> None:
            # Ids follow every stored batch, staged ones of other imports included, so they never clash.
            next_id = (conn.execute("SELECT MAX(last_pair_id) FROM dataset_pair_batches").fetchone()[0] or 0) + 1
            for batch, digests in pending:
                stored = pair_batches.stored_batch(batch, next_id, digests)
                conn.execute(
                    "INSERT INTO dataset_pair_batches (import_id, dataset_id, first_pair_id, last_pair_id, n_pairs, "
                    "arrow) VALUES (?, ?, ?, ?, ?, ?)",
                    [import_id, dataset_id, next_id, next_id + batch.num_rows - 1, batch.num_rows,
                     pair_batches.encode(stored)])
                next_id += batch.num_rows

        import_staging.short_write(self, "importing a dataset", write)

    # Reading

    @serialized
    def list_datasets(self) -> list[DatasetRecord]:
        """Every imported dataset, oldest first."""
        return [_dataset_record(row) for row in self.db.query(_DATASETS_SQL + " ORDER BY d.id")]

    @serialized
    def get_dataset(self, name_or_id: DatasetRecord | str | int) -> DatasetRecord:
        """The dataset with this name (or id); RecordNotFoundError listing the known names otherwise."""
        if isinstance(name_or_id, DatasetRecord):
            name_or_id = name_or_id.id
        rows = []
        if isinstance(name_or_id, str):
            rows = list(self.db.query(_DATASETS_SQL + " AND d.name = ?", [name_or_id]))
            if not rows and name_or_id.strip().isdigit():
                name_or_id = int(name_or_id)
        if not rows and isinstance(name_or_id, int):
            rows = list(self.db.query(_DATASETS_SQL + " AND d.id = ?", [name_or_id]))
        if rows:
            return _dataset_record(rows[0])
        names = [row[0] for row in self.db.execute(
            "SELECT name FROM datasets WHERE (import_id IS NULL OR import_id NOT IN "
            "(SELECT id FROM dataset_imports WHERE state = 'staging')) ORDER BY id")]
        known = (f"known: {', '.join(names)}" if names
                 else "none imported yet: import one with `prefstudio datasets import FILE`")
        raise RecordNotFoundError(f"No dataset {name_or_id!r} in {self.path} ({known}).")

    @serialized
    def stance_items(self, dataset: DatasetRecord | str | int) -> list[StanceItem]:
        """A stance dataset's labelled items in file order."""
        record = self._dataset_of_kind(dataset, "stance")
        rows = self.db.execute(
            "SELECT id, item_key, prompt, support, oppose FROM dataset_stance_items WHERE dataset_id = ? "
            "AND (import_id IS NULL OR import_id NOT IN "
            "(SELECT id FROM dataset_imports WHERE state = 'staging')) ORDER BY id", [record.id])
        return [StanceItem(*row) for row in rows]

    @serialized
    def feedback_items(self, dataset: DatasetRecord | str | int) -> list[FeedbackItem]:
        """An imported labels, demonstrations, ratings or rankings dataset's items in file order, typed."""
        record = self.get_dataset(dataset)
        if record.kind not in FEEDBACK_KINDS:
            raise ValueError(f"dataset '{record.name}' is a {record.kind} dataset, not one of "
                             f"{', '.join(FEEDBACK_KINDS)}")
        rows = self.db.execute(
            "SELECT item_json FROM dataset_feedback_items WHERE dataset_id = ? "
            "AND (import_id IS NULL OR import_id NOT IN "
            "(SELECT id FROM dataset_imports WHERE state = 'staging')) ORDER BY id",
            [record.id])
        return [item_from_json(record.kind, text) for (text,) in rows]

    @serialized
    def test_prompts(self, dataset: DatasetRecord | str | int) -> list[TestPrompt]:
        """A dataset's test prompts in file order (empty when it was imported without them)."""
        record = self.get_dataset(dataset)
        rows = self.db.execute(
            "SELECT item_key, prompt FROM dataset_test_prompts WHERE dataset_id = ? AND "
            "(import_id IS NULL OR import_id NOT IN "
            "(SELECT id FROM dataset_imports WHERE state = 'staging')) ORDER BY id",
            [record.id])
        return [TestPrompt(*row) for row in rows]

    @serialized
    def dataset_pairs(self, dataset: DatasetRecord | str | int) -> list[PreferencePair]:
        """A preference dataset's pairs in file order, as `PreferencePair`s.

        pair_id is `d<pair id>` (store/pair_ids.py), verdict 'dataset', session_id and judgement_id -1, and `prompt` the
        prompt as stored (for conversational and HH records a readable flattening of the messages;
        `dataset_pair_messages` gives the messages to render). A stance dataset raises ValueError: its
        pairs depend on the exercise's support ratio.
        """
        record = self._dataset_of_kind(dataset, "preference")
        return [
            PreferencePair(pair_id=dataset_pair_id(pair_id), prompt=prompt, prompt_text=prompt, chosen=chosen,
                           rejected=rejected, session_id=-1, judgement_id=-1, verdict=DATASET_VERDICT,
                           created_at=record.created_at)
            for batch in self.iter_pair_batches(record.id)
            for pair_id, prompt, chosen, rejected, _ in pair_batches.rows_of(batch)
        ]

    @serialized
    def dataset_pair_messages(self, dataset: DatasetRecord | str | int) -> list[dict[str, Any]]:
        """The conversational pairs of a dataset, raw: {pair_id, prompt_messages, chosen, rejected}.

        `prompt_messages` is the [{role, content}] list as imported; chosen and rejected are the reply
        texts. Pairs imported as plain text are not included.
        """
        record = self._dataset_of_kind(dataset, "preference")
        return [{"pair_id": dataset_pair_id(pair_id), "prompt_messages": json.loads(messages), "chosen": chosen,
                 "rejected": rejected}
                for batch in self.iter_pair_batches(record.id)
                for pair_id, _, chosen, rejected, messages in pair_batches.rows_of(batch) if messages is not None]

    @serialized
    def dataset_pairs_by_row_ids(self, row_ids: Iterable[int]) -> list[ExportPair]:
        """Dataset pairs by pair id (ids "d<id>", as a run's held-out ids name them), in id order."""
        wanted = set(row_ids)
        if not wanted:
            return []
        blobs = self.db.execute(
            "SELECT arrow FROM dataset_pair_batches WHERE last_pair_id >= ? AND first_pair_id <= ? AND "
            "(import_id IS NULL OR import_id NOT IN "
            "(SELECT id FROM dataset_imports WHERE state = 'staging')) ORDER BY id",
            [min(wanted), max(wanted)])
        found = [_export_pair(row) for (blob,) in blobs for row in pair_batches.rows_of(pair_batches.decode(blob))
                 if row[0] in wanted]
        return sorted(found, key=lambda pair: parse_pair_id(pair.pair_id).row_id or 0)

    def iter_pair_batches(self, dataset_id: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Stream a preference dataset's stored batches (only `columns`, when given) in file order, one
        query each under the lock.

        An export of 100k pairs never holds them all, and never holds the lock between batches.
        """
        last = 0
        while True:
            with self.lock:
                row = self.db.execute(
                    "SELECT id, arrow FROM dataset_pair_batches WHERE dataset_id = ? AND id > ? AND "
                    "(import_id IS NULL OR import_id NOT IN "
                    "(SELECT id FROM dataset_imports WHERE state = 'staging')) ORDER BY id LIMIT 1", [dataset_id, last]).fetchone()
            if row is None:
                return
            last = row[0]
            yield pair_batches.decode(row[1], columns)

    def iter_dataset_pairs(self, dataset_id: int) -> Iterator[ExportPair]:
        """Stream a preference dataset's pairs in file order (see `iter_pair_batches`)."""
        for batch in self.iter_pair_batches(dataset_id):
            yield from map(_export_pair, pair_batches.rows_of(batch))

    def _dataset_of_kind(self, dataset: DatasetRecord | str | int, kind: str) -> DatasetRecord:
        record = self.get_dataset(dataset)
        if record.kind != kind:
            if record.kind in FEEDBACK_KINDS:
                hint = f"it holds {record.kind}, not pairs: use feedback_items, or export it with --kind {record.kind}"
            else:
                hint = ("its pairs come from the exercise's support ratio: use stance_items"
                        if record.kind == "stance" else "it holds preference pairs: use dataset_pairs")
            raise ValueError(f"dataset '{record.name}' is a {record.kind} dataset, not {kind} ({hint}).")
        return record


def _export_pair(row: tuple[Any, ...]) -> ExportPair:
    pair_id, prompt, chosen, rejected, messages = row
    return ExportPair(dataset_pair_id(pair_id), prompt, chosen, rejected, json.loads(messages) if messages is not None else None)


def _dataset_record(row: dict[str, Any]) -> DatasetRecord:
    return DatasetRecord(
        id=row["id"], name=row["name"], kind=row["kind"], format=row["format"],
        source_path=row["source_path"], created_at=row["created_at"], n_items=row["n_items"],
        n_test_prompts=row["n_test_prompts"],
    )
