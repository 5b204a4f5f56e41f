"""Exporting every feedback kind beyond pairs, in the format its trainer reads (store/datasets/feedback_formats.py):
labels for KTO, demonstrations for SFT, HelpSteer-style ratings, raw rankings.

Sources: the studio's own feedback (read out by store/feedback_yield.py, optionally one session's) and imported
datasets of the same kind. Written as JSON Lines, parquet or a `save_to_disk` folder by export.py's atomic
writers, so a reader (or a crash) never sees half an export, and importing the export gives the same items.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

from store import feedback_yield
from store.datasets.export import write_rows
from store.datasets.feedback_formats import (
    FEEDBACK_KINDS,
    FeedbackItem,
    demonstration_row,
    export_schema,
    label_row,
    ranking_row,
    rating_attributes,
    rating_row,
)
from store.datasets.store_mixin import DatasetRecord
from store.studio_store import Store

StudioFeedback = (feedback_yield.UnpairedLabel | feedback_yield.Demonstration | feedback_yield.RatedResponse
                  | feedback_yield.RankedResponses)
"""The studio's own feedback of one kind, as store/feedback_yield.py reads it out."""
ExportableFeedback = StudioFeedback | FeedbackItem
"""What an export writes: the studio's records or imported items (the row builders take both)."""


def studio_feedback(store: Store, kind: str, session: int | None = None,
                    from_judgements: bool = False) -> list[StudioFeedback]:
    """The studio's own feedback of one kind (feedback_yield's records), optionally one session's."""
    with store.lock:  # one consistent read of the store's rows
        if kind == "labels":
            return list(feedback_yield.unpaired_labels(store.db, session, from_judgements=from_judgements))
        if kind == "demonstrations":
            return list(feedback_yield.demonstrations(store.db, session))
        if kind == "ratings":
            return list(feedback_yield.rated_responses(store.db, session))
        if kind == "rankings":
            return list(feedback_yield.ranked_responses(store.db, session))
    raise ValueError(f"unknown feedback kind {kind!r}; expected one of {', '.join(FEEDBACK_KINDS)}")


def dataset_feedback(store: Store, datasets: Iterable[DatasetRecord], kind: str) -> Iterator[FeedbackItem]:
    """The items of imported datasets, each of which must hold `kind`."""
    for record in datasets:
        if record.kind != kind:
            raise ValueError(f"dataset '{record.name}' holds {record.kind}, not {kind}: export it with --kind "
                             f"{record.kind if record.kind in FEEDBACK_KINDS else 'pairs'}")
        yield from store.feedback_items(record)


def write_feedback(items: Iterable[ExportableFeedback], kind: str, out: Path, fmt: str = "jsonl", conversational: bool = False) -> int:
    """Write one kind's items (studio records or imported items) to `out` in that kind's format; return how many.

    `conversational`: labels with message lists, demonstrations as TRL's `messages` rows.
    """
    if kind == "ratings":
        chosen = list(items)  # the attribute columns are the union over every row
        attributes = rating_attributes(chosen)
        integer = all(isinstance(value, int) for item in chosen for value in item.ratings.values())
        rows = (rating_row(item, attributes) for item in chosen)
        return write_rows(rows, out, fmt, export_schema(kind, False, attributes, integer))
    if kind == "labels":
        rows = (label_row(item, conversational) for item in items)
    elif kind == "demonstrations":
        rows = (demonstration_row(item, conversational) for item in items)
    elif kind == "rankings":
        rows = (ranking_row(item) for item in items)
    else:
        raise ValueError(f"unknown feedback kind {kind!r}; expected one of {', '.join(FEEDBACK_KINDS)}")
    return write_rows(rows, out, fmt, export_schema(kind, conversational))


def export_feedback(store: Store, kind: str, out: Path, fmt: str = "jsonl", *, datasets: Iterable[DatasetRecord] = (),
                    studio: bool = False, session: int | None = None, from_judgements: bool = False,
                    conversational: bool = False) -> int:
    """Export one feedback kind from imported datasets and/or (`studio`) the studio's own feedback."""
    sources: list[Iterable[ExportableFeedback]] = [dataset_feedback(store, list(datasets), kind)]
    if studio:
        sources.append(studio_feedback(store, kind, session, from_judgements))
    return write_feedback(chain.from_iterable(sources), kind, out, fmt, conversational)
