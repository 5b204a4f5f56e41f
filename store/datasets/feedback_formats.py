"""The formats of every feedback kind beyond pairs: their rows for export, their records for import.

| kind           | schema                | a row / record                                                       | trainer     |
|----------------|-----------------------|----------------------------------------------------------------------|-------------|
| labels         | trl-unpaired          | `prompt`, `completion`, `label` (bool); prompt and completion may be | KTO         |
|                |                       | message lists (TRL's conversational unpaired preference)             |             |
| demonstrations | trl-prompt-completion | `prompt`, `completion` (text, or message lists)                      | SFT         |
| demonstrations | trl-messages          | `messages`: the whole conversation, ending in the assistant's reply  | SFT         |
| ratings        | helpsteer             | `prompt`, `response`, one numeric column (0–4) per attribute         | SteerLM     |
| rankings       | ranking-raw           | `prompt`, `responses` (list), `ranking` (indices best first, those   | reward/DPO  |
|                |                       | left out tie last), `all_bad` (optional bool)                        |             |

Rankings also export as pairs (`datasets export --judged --verdict ranked`: every ordered pair). An imported
item is kept as one canonical JSON row of `dataset_feedback_items` (its digest dedupes re-imports); the
typed items below are what readers get back. Problems are collected over the whole file and raised
together (store/datasets/formats.py `RecordProblems`), or skipped with `--skip-bad`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store.datasets.files import DatasetImportError, Located
from store.datasets.formats import FEEDBACK_SCHEMAS, RecordProblems, flatten_messages, message_list
from store.datasets.skipped import SkippedRecords
from store.feedback_yield import Demonstration, PromptContext, RankedResponses, RatedResponse, UnpairedLabel

if TYPE_CHECKING:
    import pyarrow as pa

FEEDBACK_KINDS = ("labels", "demonstrations", "ratings", "rankings")
RATING_RANGE = (0, 4)
# An attribute's name: it is a column of the ratings export (HelpSteer-style) and a key of SteerLM's attribute
# string, so a plain lower-case word (studio/attributes.py checks the user's own attribute set by the same rule).
ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_RATING_SKIP = {"prompt", "response", "id"}  # a ratings record's columns that are not attributes

Messages = list[dict[str, str]]


def classify_feedback(record: object) -> str | None:
    """The feedback schema a record looks like, or None."""
    if not isinstance(record, dict) or "chosen" in record or "rejected" in record:
        return None
    if "messages" in record and set(record) <= {"messages", "id"}:
        return "trl-messages"
    if "prompt" in record and "responses" in record:
        return "ranking-raw"
    if "prompt" in record and "response" in record:
        return "helpsteer"
    if "prompt" in record and "label" in record:
        return "trl-unpaired"
    if "prompt" in record and "completion" in record:
        return "trl-prompt-completion"
    return None


# Typed items (what an imported feedback dataset holds)


@dataclass(frozen=True)
class LabelItem:
    """A reply marked good or bad."""

    prompt: str
    prompt_messages: Messages | None
    completion: str
    label: bool


@dataclass(frozen=True)
class DemonstrationItem:
    """A reply to learn from, for a prompt (a text, or the conversation before it)."""

    prompt: str
    prompt_messages: Messages | None
    completion: str


@dataclass(frozen=True)
class RatingItem:
    """A response rated on attributes."""

    prompt: str
    response: str
    ratings: dict[str, float | int]


@dataclass(frozen=True)
class RankingItem:
    """Responses to one prompt and their ranking (indices best first; those left out tie last)."""

    prompt: str
    responses: list[str]
    ranking: list[int]
    all_bad: bool


FeedbackItem = LabelItem | DemonstrationItem | RatingItem | RankingItem
_ITEM_TYPES: dict[str, type] = {"labels": LabelItem, "demonstrations": DemonstrationItem, "ratings": RatingItem,
                                "rankings": RankingItem}


def item_json(item: FeedbackItem) -> str:
    """The canonical JSON an item is stored as (sorted keys, so equal items have equal digests)."""
    return json.dumps(item.__dict__, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def item_from_json(kind: str, text: str) -> FeedbackItem:
    """A stored item back as its typed record."""
    return _ITEM_TYPES[kind](**json.loads(text))


# Rows for export


def _conversation(context: PromptContext) -> Messages:
    return [dict(message) for message in context.messages]


def label_row(label: UnpairedLabel | LabelItem, conversational: bool = False) -> dict[str, Any]:
    """TRL's unpaired preference row: prompt, completion, label (conversational: message lists)."""
    if isinstance(label, UnpairedLabel):
        prompt, messages, completion, good = label.context.prompt, _conversation(label.context), label.completion, \
            label.label
    else:
        prompt, messages, completion, good = label.prompt, label.prompt_messages, label.completion, label.label
    if conversational:
        return {"prompt": messages or [{"role": "user", "content": prompt}],
                "completion": [{"role": "assistant", "content": completion}], "label": good}
    return {"prompt": prompt, "completion": completion, "label": good}


def demonstration_row(demo: Demonstration | DemonstrationItem, conversational: bool = False) -> dict[str, Any]:
    """TRL's prompt-completion row, or (conversational) its `messages` row: the conversation and the reply."""
    if isinstance(demo, Demonstration):
        prompt, messages, completion = demo.context.prompt, _conversation(demo.context), demo.text
    else:
        prompt, messages, completion = demo.prompt, demo.prompt_messages, demo.completion
    if conversational:
        return {"messages": [*(messages or [{"role": "user", "content": prompt}]),
                             {"role": "assistant", "content": completion}]}
    return {"prompt": prompt, "completion": completion}


def rating_row(rated: RatedResponse | RatingItem, attributes: list[str]) -> dict[str, Any]:
    """A HelpSteer-style row: prompt, response, one column per attribute (None where not rated)."""
    if isinstance(rated, RatedResponse):
        prompt, response, ratings = rated.context.prompt, rated.response, rated.ratings
    else:
        prompt, response, ratings = rated.prompt, rated.response, rated.ratings
    return {"prompt": prompt, "response": response, **{name: ratings.get(name) for name in attributes}}


def ranking_row(ranked: RankedResponses | RankingItem) -> dict[str, Any]:
    """The raw ranking record: prompt, responses, ranking (indices best first), all_bad."""
    if isinstance(ranked, RankedResponses):
        return {"prompt": ranked.context.prompt, "responses": list(ranked.responses),
                "ranking": list(ranked.ranking), "all_bad": ranked.all_bad}
    return {"prompt": ranked.prompt, "responses": list(ranked.responses), "ranking": list(ranked.ranking),
            "all_bad": ranked.all_bad}


def rating_attributes(items: Iterable[RatedResponse | RatingItem]) -> list[str]:
    """Every attribute the items are rated on, in the order first seen."""
    return list(dict.fromkeys(name for item in items for name in item.ratings))


def export_schema(kind: str, conversational: bool, attributes: list[str] | None = None,
                  integer_ratings: bool = True) -> pa.Schema:
    """The Arrow schema of a kind's rows (for parquet and save_to_disk)."""
    import pyarrow as pa

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    text = messages if conversational else pa.string()
    if kind == "labels":
        return pa.schema([("prompt", text), ("completion", text), ("label", pa.bool_())])
    if kind == "demonstrations":
        if conversational:
            return pa.schema([("messages", messages)])
        return pa.schema([("prompt", pa.string()), ("completion", pa.string())])
    if kind == "ratings":
        value = pa.int64() if integer_ratings else pa.float64()
        return pa.schema([("prompt", pa.string()), ("response", pa.string()),
                          *((name, value) for name in attributes or [])])
    if kind == "rankings":
        return pa.schema([("prompt", pa.string()), ("responses", pa.list_(pa.string())),
                          ("ranking", pa.list_(pa.int64())), ("all_bad", pa.bool_())])
    raise ValueError(f"unknown feedback kind {kind!r}; expected one of {', '.join(FEEDBACK_KINDS)}")


# Records for import


def _messages(value: object) -> Messages | None:
    """A non-empty [{role, content}] list (the pairs reader's rule, unpaired surrogates refused too), or None."""
    return message_list(value) or None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class FeedbackReader:
    """Turns a feedback file's located records into stored items (canonical JSON), in file order.

    Malformed records (missing fields, wrong types, ratings outside 0–4, rankings naming a response twice
    or one that is not there) are collected and raised together at the end, or, with `skip_bad`, left out
    and noted in `skips`.
    """

    def __init__(self, path: Path, schema: str, auto: bool, skip_bad: bool = False,
                 skips: SkippedRecords | None = None) -> None:
        self.path = path
        self.schema = schema
        self.kind = FEEDBACK_SCHEMAS[schema]
        self.auto = auto
        self.skips = skips if skips is not None else SkippedRecords()
        self.problems = RecordProblems(path, outcome="Nothing was imported. Fix them, or pass --skip-bad to import "
                                                     "the rest.", skip_into=self.skips if skip_bad else None)
        self._first: str | None = None

    def rows(self, records: Iterable[Located]) -> Iterator[tuple[str]]:
        """(item JSON,) per good record; at the end every collected problem is raised in one error."""
        convert = {"trl-unpaired": self._label, "trl-prompt-completion": self._prompt_completion,
                   "trl-messages": self._messages_record, "helpsteer": self._rating,
                   "ranking-raw": self._ranking}[self.schema]
        for where, record in records:
            if not isinstance(record, dict):
                self.problems.add("records that are not JSON objects", where)
                continue
            self._check_schema(where, record)
            item = convert(where, record)
            if item is not None:
                yield (item_json(item),)
        self.problems.raise_if_any()

    def _check_schema(self, where: str, record: dict) -> None:
        if self._first is None:
            self._first = where
            return
        found = classify_feedback(record)
        if self.auto and found is not None and found != self.schema:
            raise DatasetImportError(
                f"{self.path}: mixed schemas: {self._first} is {self.schema} but {where} is {found}. Split the file.")

    def _text_or_messages(self, where: str, record: dict, key: str) -> tuple[str, Messages | None] | None:
        value = record.get(key)
        if value is None:
            self.problems.add("missing fields", f"{where}: {key}")
            return None
        if isinstance(value, str):
            return value, None
        messages = _messages(value)
        if messages is None:
            self.problems.add("fields that are not text or {role, content} message lists",
                              f"{where}: {key} ({type(value).__name__})")
            return None
        return flatten_messages(messages), messages

    def _reply(self, where: str, record: dict, key: str) -> str | None:
        found = self._text_or_messages(where, record, key)
        if found is None:
            return None
        text, messages = found
        if messages is not None:
            if len(messages) != 1 or messages[0]["role"] != "assistant":
                self.problems.add("completions that are not one assistant message", f"{where}: {key}")
                return None
            return messages[0]["content"]
        return text

    def _label(self, where: str, record: dict) -> LabelItem | None:
        prompt, completion = self._text_or_messages(where, record, "prompt"), self._reply(where, record, "completion")
        label = record.get("label")
        if not isinstance(label, bool):
            self.problems.add("labels that are not true or false", f"{where}: label ({label!r})")
            return None
        if prompt is None or completion is None:
            return None
        return LabelItem(prompt[0], prompt[1], completion, label)

    def _prompt_completion(self, where: str, record: dict) -> DemonstrationItem | None:
        prompt, completion = self._text_or_messages(where, record, "prompt"), self._reply(where, record, "completion")
        if prompt is None or completion is None:
            return None
        return DemonstrationItem(prompt[0], prompt[1], completion)

    def _messages_record(self, where: str, record: dict) -> DemonstrationItem | None:
        messages = _messages(record.get("messages"))
        if messages is None:
            self.problems.add("fields that are not {role, content} message lists", f"{where}: messages")
            return None
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            self.problems.add("conversations that do not end in an assistant reply", where)
            return None
        return DemonstrationItem(flatten_messages(messages[:-1]), messages[:-1], messages[-1]["content"])

    def _rating(self, where: str, record: dict) -> RatingItem | None:
        texts = [record.get(key) for key in ("prompt", "response")]
        if not all(isinstance(text, str) for text in texts):
            wrong = [key for key, text in zip(("prompt", "response"), texts, strict=True) if not isinstance(text, str)]
            self.problems.add("missing fields or fields that are not text", f"{where}: {', '.join(wrong)}")
            return None
        ratings: dict[str, float | int] = {}
        low, high = RATING_RANGE
        for name, value in record.items():
            if name in _RATING_SKIP or value is None:
                continue
            if not ATTRIBUTE_NAME.fullmatch(name):
                self.problems.add("unknown attributes (an attribute is a lower-case word: letters, digits, _)",
                                  f"{where}: {name!r}")
                return None
            if not _is_number(value):
                self.problems.add("attribute values that are not numbers", f"{where}: {name} ({value!r})")
                return None
            if not low <= value <= high:
                self.problems.add(f"ratings outside {low}–{high}", f"{where}: {name} ({value!r})")
                return None
            ratings[name] = value
        if not ratings:
            self.problems.add("no attribute ratings", where)
            return None
        return RatingItem(texts[0], texts[1], ratings)

    def _ranking(self, where: str, record: dict) -> RankingItem | None:
        prompt, responses, ranking = record.get("prompt"), record.get("responses"), record.get("ranking", [])
        all_bad = record.get("all_bad", False)
        if not isinstance(prompt, str):
            self.problems.add("missing fields or fields that are not text", f"{where}: prompt")
            return None
        if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
            self.problems.add("responses that are not a list of two or more texts", f"{where}: responses")
            return None
        if not isinstance(ranking, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ranking):
            self.problems.add("rankings that are not lists of response indices", f"{where}: ranking")
            return None
        if len(set(ranking)) != len(ranking) or any(not 0 <= i < len(responses) for i in ranking):
            self.problems.add("rankings naming a response twice or one that is not there",
                              f"{where}: ranking {ranking} over {len(responses)} responses")
            return None
        if not isinstance(all_bad, bool) or (all_bad and ranking):
            self.problems.add("all_bad that is not true or false, or true beside a ranking", f"{where}: all_bad")
            return None
        return RankingItem(prompt, list(responses), list(ranking), all_bad)
