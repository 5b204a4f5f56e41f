"""Pair ids: the one codec for the ids that name preference pairs, and that a run records for its pairs.

| kind      | id                                   | names                                                      |
|-----------|--------------------------------------|------------------------------------------------------------|
| judged    | `j<judgement>`, `j<judgement>c<cand>` | a pair read out of a judgement (an edit: one per candidate) |
| judged    | `r<judgement>:<better>><worse>`      | one ordered pair of a ranking judgement, by candidate ids   |
| dataset   | `d<pair>`                            | a pair of an imported preference dataset (ids never reused) |
| stance    | `stance:<item key>`                  | an exercise pair: a labelled-stance item, by its own key    |
| file      | `<stem>:<line>:<digest>`             | a row of a `--dataset` JSONL file (12 hex digits of sha256) |

Every id is built by one of the ``*_pair_id`` functions and read back by ``parse_pair_id``, which names an
id it cannot read rather than guessing its kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

PairKind = Literal["judged", "dataset", "stance", "file"]
STANCE_PREFIX = "stance:"
_JUDGED = re.compile(r"j(\d+)(?:c(\d+))?")
_RANKED = re.compile(r"r(\d+):(\d+)>(\d+)")
_DATASET = re.compile(r"d(\d+)")
_FILE = re.compile(r"(.+):(\d+):([0-9a-f]{12})")
_EXPECTED = "j<judgement>[c<candidate>], r<judgement>:<better>><worse>, d<pair>, stance:<item key> or <file stem>:<line>:<digest>"


class PairIdError(ValueError):
    """A text that is not a pair id of any kind; the message quotes it and says what ids look like."""


@dataclass(frozen=True)
class PairId:
    """A parsed pair id. Only the fields of its ``kind`` are set."""

    kind: PairKind
    judgement_id: int | None = None  # judged
    candidate_id: int | None = None  # judged: an edited judgement's or a ranking's rejected candidate
    chosen_candidate_id: int | None = None  # judged: a ranking's chosen candidate (set only for rankings)
    row_id: int | None = None  # dataset: the stored pair's id
    item_key: str | None = None  # stance
    file_stem: str | None = None  # file
    line: int | None = None  # file
    digest: str | None = None  # file

    def __str__(self) -> str:
        if self.kind == "judged" and self.chosen_candidate_id is not None:
            return ranked_pair_id(self.judgement_id or 0, self.chosen_candidate_id, self.candidate_id or 0)
        if self.kind == "judged":
            return judged_pair_id(self.judgement_id or 0, self.candidate_id)
        if self.kind == "dataset":
            return dataset_pair_id(self.row_id or 0)
        if self.kind == "stance":
            return stance_pair_id(self.item_key or "")
        return file_pair_id(self.file_stem or "", self.line or 0, self.digest or "")


def judged_pair_id(judgement_id: int, candidate_id: int | None = None) -> str:
    """``j<judgement>``, or ``j<judgement>c<candidate>`` for one of an edited judgement's pairs."""
    return f"j{judgement_id}" if candidate_id is None else f"j{judgement_id}c{candidate_id}"


def ranked_pair_id(judgement_id: int, chosen_candidate_id: int, rejected_candidate_id: int) -> str:
    """``r<judgement>:<better>><worse>``: the pair of a ranking that puts one candidate above another.

    Its own form because one ranking of K yields up to K(K-1)/2 pairs, each named by both of its candidates;
    its kind is still "judged" (read out of a judgement), so every reader of judged pairs takes it.
    """
    return f"r{judgement_id}:{chosen_candidate_id}>{rejected_candidate_id}"


def dataset_pair_id(row_id: int) -> str:
    """``d<pair>``: a pair of an imported dataset, by its stored id."""
    return f"d{row_id}"


def stance_pair_id(item_key: str) -> str:
    """``stance:<item key>``: the exercise pair of a labelled-stance item."""
    return STANCE_PREFIX + item_key


def file_pair_id(stem: str, line: int, digest: str) -> str:
    """``<stem>:<line>:<digest>``: a row of a dataset file, with 12 hex digits of its content's sha256."""
    return f"{stem}:{line}:{digest}"


def parse_pair_id(text: str) -> PairId:
    """The kind and parts of a pair id; ``PairIdError`` naming ``text`` when it is none of the kinds."""
    if not isinstance(text, str):
        raise PairIdError(f"pair id {text!r} is not text; expected {_EXPECTED}")
    if text.startswith(STANCE_PREFIX) and len(text) > len(STANCE_PREFIX):
        return PairId("stance", item_key=text[len(STANCE_PREFIX):])
    if match := _JUDGED.fullmatch(text):
        candidate = match.group(2)
        return PairId("judged", judgement_id=int(match.group(1)),
                      candidate_id=int(candidate) if candidate is not None else None)
    if match := _RANKED.fullmatch(text):
        return PairId("judged", judgement_id=int(match.group(1)), chosen_candidate_id=int(match.group(2)),
                      candidate_id=int(match.group(3)))
    if match := _DATASET.fullmatch(text):
        return PairId("dataset", row_id=int(match.group(1)))
    if match := _FILE.fullmatch(text):
        return PairId("file", file_stem=match.group(1), line=int(match.group(2)), digest=match.group(3))
    raise PairIdError(f"unknown pair id {text!r}; expected {_EXPECTED}")


def pair_kind(text: str) -> PairKind | None:
    """The kind of a pair id, or None when ``text`` is not one (for sorting mixed ids without raising)."""
    try:
        return parse_pair_id(text).kind
    except PairIdError:
        return None


def stance_item_key(text: str) -> str | None:
    """The item key of a ``stance:<key>`` id, else None."""
    return text[len(STANCE_PREFIX):] if pair_kind(text) == "stance" else None
