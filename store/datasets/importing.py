"""Importing a dataset file or folder into the store: find the data, recognise it, store it in one go.

`import_dataset` is the one entry point the CLI and the TUI call. A folder is either one written by
`datasets`' `save_to_disk`, or a folder holding one data file and, optionally, a companion test-prompt
file (a name with "test" in it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from itertools import chain
from pathlib import Path
from typing import Any

from store.datasets import pair_batches
from store.datasets.chunks import ARROW_CONTAINERS, Chunk, iter_chunks
from store.datasets.feedback_formats import FeedbackReader, classify_feedback
from store.datasets.files import (
    DATA_SUFFIXES,
    DatasetImportError,
    Located,
    is_hf_dir,
    iter_records,
    sniff_container,
)
from store.datasets.formats import (
    FEEDBACK_SCHEMAS,
    SchemaReader,
    companion_prompt_rows,
    detect_schema,
    kind_of,
    parse_format,
)
from store.datasets.skipped import SkippedRecords
from store.datasets.store_mixin import ImportReport
from store.studio_store import Store


def find_data_files(folder: Path) -> tuple[Path, Path | None]:
    """The data file and the companion test-prompt file (or None) of a folder of JSON/parquet files."""
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in DATA_SUFFIXES and not p.name.startswith("."))
    tests = [p for p in files if "test" in p.stem.lower()]
    data = [p for p in files if p not in tests]
    if not data:
        found = f" (only {', '.join(p.name for p in tests)})" if tests else ""
        raise DatasetImportError(
            f"{folder} holds no data file (.json, .jsonl or .parquet){found}: import a FILE, or a folder "
            "written by datasets' save_to_disk."
        )
    if len(data) > 1 or len(tests) > 1:
        names = ", ".join(p.name for p in files)
        raise DatasetImportError(
            f"{folder} holds several data files ({names}): import one FILE at a time (with --name and "
            "--test-prompts)."
        )
    return data[0], tests[0] if tests else None


def _chunks_and_first_record(source: Path, container: str, skip: SkippedRecords | None = None
                             ) -> tuple[Iterator[Chunk], Located]:
    """The file's chunks (all of them, from the start) and its first record, read exactly, to detect
    the schema from. The file is opened once: the first record comes from the first chunk."""
    chunks = iter_chunks(source, container, skip)
    head = next(chunks, None)
    first = next(head.records(), None) if head is not None else None
    if first is None:  # nothing in the first chunk: the record reader finds the first record, or says why not
        with closing(iter_records(source, container, skip)) as records:
            first = next(records)
    return (chain([head], chunks) if head is not None else chunks), first


def default_name(path: Path) -> str:
    """The dataset name an import gets without --name: the file's stem, or the folder's name."""
    return path.name if path.is_dir() else path.stem


def import_dataset(
    store: Store,
    path: Path,
    name: str | None = None,
    fmt: str | None = None,
    test_prompts_path: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    skip_bad: bool = False,
    **staging: Any,
) -> ImportReport:
    """Import `path` (a file or folder) into dataset `name` and report what was stored.

    `fmt` forces a schema (stance-json, trl-standard, trl-conversational, hh, or a feedback kind's:
    trl-unpaired, trl-prompt-completion, trl-messages, helpsteer, ranking-raw), a file type (json, jsonl,
    parquet, hf-dir), or both ("hh,jsonl"); anything not forced is detected. The file is streamed in,
    all or nothing, without holding the database while it is read: any bad record discards the whole
    import and raises DatasetImportError naming the file and the records, unless `skip_bad` leaves malformed
    records (and JSON Lines that are not JSON) out and reports them. Well-formed records that cannot become a
    pair are always left out and reported (`ImportReport.skips`). `on_progress` gets the number
    of records read so far. `staging` passes `stage_rows`, `stage_bytes` and `claim_wait_s` on to
    `Store.import_records`.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetImportError(f"{path}: no such file or folder.")
    choice = parse_format(fmt)
    source = path
    if path.is_dir() and choice.container != "hf-dir" and not is_hf_dir(path):
        source, found_tests = find_data_files(path)
        test_prompts_path = test_prompts_path or found_tests
    if choice.container == "hf-dir" and not path.is_dir():
        raise DatasetImportError(f"{path}: --format hf-dir needs a folder written by save_to_disk.")
    container = choice.container or sniff_container(source)
    skips = SkippedRecords()
    line_skips = skips if skip_bad else None
    if container in ARROW_CONTAINERS:
        chunks, first = _chunks_and_first_record(source, container, line_skips)
    else:
        records = iter_records(source, container, line_skips)
        first = next(records)  # every reader raises a DatasetImportError for a file without records
    schema = choice.schema or classify_feedback(first[1]) or detect_schema(source, *first)
    kind = kind_of(schema)
    if schema in FEEDBACK_SCHEMAS:  # labels, demonstrations, ratings, rankings: one JSON row per item
        feedback = FeedbackReader(source, schema, auto=choice.schema is None, skip_bad=skip_bad, skips=skips)
        if container in ARROW_CONTAINERS:
            records = chain.from_iterable(chunk.records() for chunk in chunks)
        else:
            records = chain([first], records)
        report = store.import_records(name or default_name(path), kind, schema, path.resolve(),
                                      feedback_items=feedback.rows(records), on_progress=on_progress, **staging)
        return replace(report, n_skipped=skips.total, skipped=tuple(skips.order), skips=skips.groups())
    reader = SchemaReader(source, schema, auto=choice.schema is None, skip_bad=skip_bad, skips=skips)
    reader.problems.outcome = "Nothing was imported. Fix them, or pass --skip-bad to import the rest."
    if kind == "preference" and container in ARROW_CONTAINERS:
        reader.begin(*first)
        pairs, stance_items = reader.pair_batches(chunks), None
    else:
        if container in ARROW_CONTAINERS:
            records = chain.from_iterable(chunk.records() for chunk in chunks)
        else:
            records = chain([first], records)
        rows = reader.rows(records)
        pairs = pair_batches.input_batches(rows) if kind == "preference" else None
        stance_items = rows if kind == "stance" else None
    tests = None
    if test_prompts_path is not None:
        test_path = Path(test_prompts_path).expanduser()
        if not test_path.exists():
            raise DatasetImportError(f"{test_path}: no such test-prompt file.")
        tests = companion_prompt_rows(test_path, iter_records(test_path, sniff_container(test_path)))
    report = store.import_records(
        name or default_name(path), kind, schema, path.resolve(),
        stance_items=stance_items,
        pairs=pairs,
        test_prompts=tests,
        on_progress=on_progress,
        **staging,
    )
    return replace(report, n_skipped=reader.n_skipped, skipped=tuple(reader.skipped), skips=skips.groups())
