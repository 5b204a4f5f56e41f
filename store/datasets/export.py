"""Exporting pairs for other tools: TRL's standard or conversational preference format, as JSON Lines,
parquet, or a `datasets` `save_to_disk` folder.

Sources: an imported dataset's pairs (a stance dataset becomes pairs with chosen = support, or oppose
with `prefer="oppose"`) and the studio's own judged pairs (filtered by session, verdict and date); a
training run's held-out pairs are read back by `trainers.recorded_pairs.heldout_export_pairs`. This is the
one pairs exporter: `prefstudio pairs export` and `prefstudio datasets export` both write through it.
Every writer streams and writes beside its destination, then renames into
place, so a reader (or a crash) never sees half an export. Reading the export back with
`import_dataset` gives the same pairs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import chain, islice
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store.atomic_files import write_lines
from store.datasets.feedback_formats import FEEDBACK_KINDS
from store.datasets.store_mixin import DatasetRecord, ExportPair, TestPrompt
from store.feedback_yield import ranking_index_pairs
from store.output_folders import check_output_file, earlier_export_files, publish_folder
from store.pairs import PAIR_VERDICTS, PreferencePair  # PAIR_VERDICTS: a, b, edited, ranked
from store.studio_store import Store

if TYPE_CHECKING:
    import pyarrow as pa

EXPORT_FORMATS = ("jsonl", "parquet", "hf")
HF_EXPORT_KIND = "hf dataset"  # the marker kind of a save_to_disk folder this module wrote
PREFER = ("support", "oppose")
_BATCH_ROWS = 5000


def _from_preference(pair: PreferencePair) -> ExportPair:
    return ExportPair(pair.pair_id, pair.prompt, pair.chosen, pair.rejected)


# Sources


def dataset_export_pairs(store: Store, dataset: DatasetRecord | str | int,
                         prefer: str = "support") -> Iterator[ExportPair]:
    """A dataset's pairs in file order; a stance dataset's items become pairs preferring `prefer`."""
    if prefer not in PREFER:
        raise ValueError(f"unknown side {prefer!r} to prefer; expected one of {', '.join(PREFER)}")
    record = store.get_dataset(dataset)
    if record.kind == "rankings":  # every ordered pair of each ranking (store/feedback_yield.py's rule)
        for n, item in enumerate(store.feedback_items(record), start=1):
            for better, worse in ranking_index_pairs(item.ranking, len(item.responses)):
                # Not a pair id either (see below): only this export's de-duplication reads it.
                yield ExportPair(f"k{record.id}:{n}:{better}>{worse}", item.prompt, item.responses[better],
                                 item.responses[worse])
        return
    if record.kind in FEEDBACK_KINDS:
        raise ValueError(f"dataset '{record.name}' holds {record.kind}, which make no pairs: export it with --kind "
                         f"{record.kind}")
    if record.kind == "stance":
        for item in store.stance_items(record):
            chosen, rejected = (item.support, item.oppose) if prefer == "support" else (item.oppose, item.support)
            # Not a pair id (store/pair_ids.py): a run never records it. Only this export's de-duplication reads
            # it, and an item preferring oppose is another pair than its held-out stance:<key> (support chosen).
            yield ExportPair(f"s{item.id}", item.prompt, chosen, rejected)
        return
    yield from store.iter_dataset_pairs(record.id)


def parse_date_bound(text: str, end: bool = False) -> datetime:
    """A --since/--until value as an aware UTC datetime; a bare date as --until covers the whole day."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"cannot read the date {text!r}; use YYYY-MM-DD or an ISO date and time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end and len(text.strip()) == 10:  # a date: up to the end of that day
        moment += timedelta(days=1)
    return moment


def judged_export_pairs(store: Store, session: int | None = None, verdicts: Iterable[str] | None = None,
                        since: str | None = None, until: str | None = None) -> list[ExportPair]:
    """The studio's own judged pairs, filtered by session, verdict (a, b, edited) and judgement date.

    `since` is inclusive; `until` is inclusive of a whole day when given as a date, else exclusive.
    """
    wanted = set(verdicts or PAIR_VERDICTS)
    unknown = wanted - set(PAIR_VERDICTS)
    if unknown:
        raise ValueError(f"verdicts {', '.join(sorted(unknown))} give no pairs; choose from {', '.join(PAIR_VERDICTS)}")
    start = parse_date_bound(since) if since else None
    stop = parse_date_bound(until, end=True) if until else None
    if start and stop and stop <= start:
        raise ValueError(f"--until {until} is not after --since {since}")
    chosen = []
    for pair in store.pairs(session_id=session):
        if pair.verdict not in wanted:
            continue
        when = datetime.fromisoformat(pair.created_at)
        if (start and when < start) or (stop and when >= stop):
            continue
        chosen.append(_from_preference(pair))
    return chosen


def write_dataset_pairs(store: Store, datasets: Iterable[DatasetRecord], out: Path, fmt: str = "jsonl",
                        conversational: bool = False, prefer: str = "support") -> int:
    """Write the pairs of imported datasets to `out`; return how many.

    Preference datasets in TRL's standard format go straight from their stored Arrow batches to the
    file, without a Python object per pair; anything else goes through `write_pairs`.
    """
    chosen = list(datasets)
    if not conversational and all(record.kind == "preference" for record in chosen):
        batches = (batch.select(["prompt", "chosen", "rejected"])
                   for record in chosen for batch in store.iter_pair_batches(record.id))
        return write_standard_batches(batches, out, fmt)
    return write_pairs(chain.from_iterable(dataset_export_pairs(store, record, prefer) for record in chosen),
                       out, fmt, conversational)


# Where an export may go (store/output_folders.py holds the rule)

# pairs, test prompts, and the other feedback kinds (store/datasets/feedback_formats.py); ratings add a column
# per attribute to prompt and response
_EXPORT_COLUMNS = ({"prompt", "chosen", "rejected"}, {"id", "prompt"}, {"prompt", "completion", "label"},
                   {"prompt", "completion"}, {"messages"}, {"prompt", "responses", "ranking", "all_bad"})


def _export_columns(names: set[str]) -> bool:
    return names in _EXPORT_COLUMNS or {"prompt", "response"} <= names


def _is_jsonl_export(path: Path) -> bool:
    with path.open("rb") as handle:
        first = handle.readline(1 << 20)
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and _export_columns(set(row))


def _is_parquet_export(path: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(path).names)
    except Exception:  # noqa: BLE001 - anything pyarrow cannot read as parquet is not our export
        return False
    return _export_columns(names)


def check_export_target(out: Path, fmt: str) -> None:
    """Refuse an ``--out`` this export would overwrite without having written it (OutputFolderError)."""
    if fmt == "hf":
        earlier_export_files(out, HF_EXPORT_KIND)
    elif fmt == "parquet":
        check_output_file(out, _is_parquet_export, "parquet export of pairs, feedback or test prompts")
    else:
        check_output_file(out, _is_jsonl_export, "jsonl export of pairs, feedback or test prompts")


# Writers


def sibling_path(out: Path, label: str) -> Path:
    """The path beside `out` for a companion export: x.jsonl → x_test_prompts.jsonl, dir x → x_test_prompts."""
    return out.with_name(f"{out.stem}_{label}{out.suffix}")


def write_pairs(pairs: Iterable[ExportPair], out: Path, fmt: str = "jsonl", conversational: bool = False) -> int:
    """Write pairs to `out` in TRL's standard (or conversational) format; return how many."""
    if conversational:
        rows = (pair.to_conversational() for pair in pairs)
        return write_rows(rows, out, fmt, _pair_schema(conversational))
    return write_standard_batches(_standard_batches(pairs, _pair_schema(conversational)), out, fmt)


def write_pairs_jsonl(pairs: Iterable[PreferencePair], out: Path) -> int:
    """Write the store's pairs as TRL standard JSONL (prompt, chosen, rejected), atomically; return the count."""
    return write_pairs(map(_from_preference, pairs), out, "jsonl")


def write_standard_batches(batches: Iterable[pa.RecordBatch], out: Path, fmt: str = "jsonl") -> int:
    """Write Arrow batches of prompt, chosen and rejected strings in TRL's standard format; return the rows."""
    schema = _pair_schema(conversational=False)
    if fmt == "jsonl":
        return write_lines(chain.from_iterable(map(_batch_lines, batches)), out)
    return write_batches((batch.cast(schema) for batch in batches), out, fmt, schema)


def _batch_lines(batch: pa.RecordBatch) -> list[str]:
    # The C string encoder gives the same text as json.dumps(row, ensure_ascii=False) at a fraction of
    # its per-call cost, which is most of a large export's time.
    prompts, chosen, rejected = (batch.column(name).to_pylist() for name in ("prompt", "chosen", "rejected"))
    encode = encode_basestring
    return [f'{{"prompt": {encode(p)}, "chosen": {encode(c)}, "rejected": {encode(r)}}}\n'
            for p, c, r in zip(prompts, chosen, rejected, strict=True)]


def write_test_prompts(prompts: Iterable[TestPrompt], out: Path, fmt: str = "jsonl") -> int:
    """Write test prompts as `{id, prompt}` records (the companion file `import --test-prompts` reads)."""
    rows = ({"id": p.item_key, "prompt": p.prompt} for p in prompts)
    return write_rows(rows, out, fmt, _prompt_schema())


def write_rows(rows: Iterable[dict[str, Any]], out: Path, fmt: str, schema: pa.Schema) -> int:
    """Write dict rows to `out` as jsonl, parquet or hf (save_to_disk), atomically; return the count."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "jsonl":
        return write_lines((json.dumps(row, ensure_ascii=False) + "\n" for row in rows), out)
    return write_batches(_batches(rows, schema), out, fmt, schema)


def write_batches(batches: Iterable[pa.RecordBatch], out: Path, fmt: str, schema: pa.Schema) -> int:
    """Write Arrow record batches to `out` as parquet or hf (save_to_disk), atomically; return the rows."""
    if fmt not in ("parquet", "hf"):
        raise ValueError(f"unknown Arrow export format {fmt!r}; expected parquet or hf")
    out = Path(out).expanduser()
    if fmt == "parquet" and out.is_dir():
        raise ValueError(f"{out} is a folder; --format parquet writes a file")
    if fmt == "hf":
        earlier_export_files(out, HF_EXPORT_KIND)  # refuse a folder we did not write, before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        return _write_hf(batches, out, schema)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        count = _write_parquet(batches, tmp, schema)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def _pair_schema(conversational: bool) -> pa.Schema:
    import pyarrow as pa

    if conversational:
        messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
        return pa.schema([("prompt", messages), ("chosen", messages), ("rejected", messages)])
    return pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())])


def _prompt_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("prompt", pa.string())])


def _batches(rows: Iterable[dict[str, Any]], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa

    iterator = iter(rows)
    while batch := list(islice(iterator, _BATCH_ROWS)):
        yield pa.RecordBatch.from_pylist(batch, schema=schema)


def _standard_batches(pairs: Iterable[ExportPair], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa

    iterator = iter(pairs)
    while batch := list(islice(iterator, _BATCH_ROWS)):
        columns = [pa.array([p.prompt for p in batch], pa.string()), pa.array([p.chosen for p in batch], pa.string()),
                   pa.array([p.rejected for p in batch], pa.string())]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def _write_parquet(batches: Iterable[pa.RecordBatch], path: Path, schema: pa.Schema) -> int:
    import pyarrow.parquet as pq

    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
            count += batch.num_rows
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())
    return count


def _write_hf(batches: Iterable[pa.RecordBatch], out: Path, schema: pa.Schema) -> int:
    """A save_to_disk folder: batches streamed to an Arrow file, mapped by `datasets`, saved, renamed in."""
    import datasets
    import pyarrow as pa

    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    scratch = staging / "rows.arrow"
    saved = staging / "dataset"
    try:
        count = 0
        with pa.OSFile(str(scratch), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
                count += batch.num_rows
        table = datasets.Dataset.from_file(str(scratch))
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # the CLI prints its own one line; tqdm would fill stderr
        try:
            table.save_to_disk(str(saved))
        finally:
            if bars:
                datasets.enable_progress_bars()
        del table
        publish_folder(saved, out, HF_EXPORT_KIND)  # replaces only the files an earlier export wrote
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return count
