"""The record schemas the studio imports, how they are recognised, and their rows for the store.

| schema             | a record                                                             | kind       |
|--------------------|----------------------------------------------------------------------|------------|
| stance-json        | `{id, prompt, support, oppose}` (the DPO homework's labelled items)   | stance     |
| trl-standard       | `prompt`, `chosen`, `rejected` strings; no `prompt`: the shared prefix | preference |
| trl-conversational | the same as lists of `{role, content}` messages                       | preference |
| hh                 | `chosen` / `rejected` transcripts of `\\n\\nHuman: …\\n\\nAssistant: …`  | preference |

The schema is recognised from the first record and every later record must agree (a record of another
schema is a "mixed schemas" error). Problems with single records (missing fields, fields that are not
text, support equal to oppose) are collected over the whole file and raised together at the end, naming
the records, so one import run shows the user everything to fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from store.datasets.chunks import Chunk
from store.datasets.files import CONTAINERS, DatasetImportError, Located, iter_records, sniff_container
from store.datasets.pair_batches import as_input_batch, input_batches
from store.datasets.skipped import SkippedRecords

SCHEMAS = ("stance-json", "trl-standard", "trl-conversational", "hh")
# The other feedback kinds' schemas and the kind each holds (read by store/datasets/feedback_formats.py).
FEEDBACK_SCHEMAS = {"trl-unpaired": "labels", "trl-prompt-completion": "demonstrations",
                    "trl-messages": "demonstrations", "helpsteer": "ratings", "ranking-raw": "rankings"}
FORMAT_NAMES = SCHEMAS + tuple(FEEDBACK_SCHEMAS) + CONTAINERS
KINDS = ("stance", "preference", "labels", "demonstrations", "ratings", "rankings")

_FAMILY = {"stance-json": "stance", "trl-standard": "standard", "hh": "standard",
           "trl-conversational": "conversational"}
_EXPECTED = (
    "expected one of: stance-json {id, prompt, support, oppose}; trl-standard {prompt, chosen, rejected} "
    "strings (prompt optional); trl-conversational {prompt, chosen, rejected} message lists; hh {chosen, "
    "rejected} Human/Assistant transcripts; trl-unpaired {prompt, completion, label}; trl-prompt-completion "
    "{prompt, completion}; trl-messages {messages}; helpsteer {prompt, response, a 0-4 column per attribute}; "
    "ranking-raw {prompt, responses, ranking}"
)
_SHOWN_PROBLEMS = 10

# The rows readers hand to `Store.import_records`: plain tuples, because a large import builds one per
# record and a tuple costs a fraction of a dict or a dataclass.
PairRow = tuple[str, str, str, "list[dict[str, str]] | None"]  # prompt, chosen, rejected, prompt messages
StanceRow = tuple[str, str, str, str]  # item_key, prompt, support, oppose
TestRow = tuple[str, str]  # item_key, prompt


def kind_of(schema: str) -> str:
    """'stance' for labelled stance items, 'preference' for every pair schema, else the feedback kind."""
    if schema in FEEDBACK_SCHEMAS:
        return FEEDBACK_SCHEMAS[schema]
    return "stance" if schema == "stance-json" else "preference"


@dataclass(frozen=True)
class FormatChoice:
    """What `--format` asked for: a schema, a container, or both ("hh,jsonl"); None parts are detected."""

    schema: str | None = None
    container: str | None = None


def parse_format(fmt: str | None) -> FormatChoice:
    """Read a `--format` value: one of FORMAT_NAMES, or a schema and a container joined by ','."""
    if not fmt:
        return FormatChoice()
    schema = container = None
    for part in (p.strip().lower() for p in fmt.split(",") if p.strip()):
        if (part in SCHEMAS or part in FEEDBACK_SCHEMAS) and schema is None:
            schema = part
        elif part in CONTAINERS and container is None:
            container = part
        else:
            raise DatasetImportError(
                f"unknown or repeated format {part!r} in {fmt!r}; expected a schema "
                f"({', '.join(SCHEMAS + tuple(FEEDBACK_SCHEMAS))}) and/or a file type ({', '.join(CONTAINERS)})"
            )
    return FormatChoice(schema, container)


# Recognising a record


def _looks_hh(text: object) -> bool:
    return isinstance(text, str) and "\n\nAssistant:" in text and (
        "\n\nHuman:" in text or text.startswith("Human:")
    )


def classify(record: object) -> str | None:
    """The schema a record looks like; 'test-prompts' or 'unpaired' for those; None if unknown."""
    if not isinstance(record, dict):
        return None
    if "support" in record or "oppose" in record:
        return "stance-json"
    if "chosen" in record or "rejected" in record:
        prompt, chosen = record.get("prompt"), record.get("chosen")
        if isinstance(chosen, list) or isinstance(prompt, list) or isinstance(record.get("rejected"), list):
            return "trl-conversational"
        if prompt is None and _looks_hh(chosen):
            return "hh"
        return "trl-standard"
    if "prompt" in record and ("completion" in record or "label" in record):
        return "unpaired"
    if "prompt" in record and set(record) <= {"id", "prompt"}:
        return "test-prompts"
    return None


def _fields(record: object) -> str:
    if isinstance(record, dict):
        return ", ".join(str(key) for key in list(record)[:12]) or "none"
    return f"a {type(record).__name__}, not an object"


def detect_schema(path: Path, where: str, record: object) -> str:
    """The schema of a file from its first record, or a DatasetImportError saying why there is none."""
    schema = classify(record)
    if schema in SCHEMAS:
        return schema
    if schema == "test-prompts":
        raise DatasetImportError(
            f"{path} looks like a test-prompt file ({where} has only id and prompt): import the labelled "
            "items and pass this file with --test-prompts."
        )
    raise DatasetImportError(f"{path}: unknown schema: {where} has fields {_fields(record)}; {_EXPECTED}.")


# Collecting problems over a whole file


@dataclass
class RecordProblems:
    """Problems with single records, grouped by what is wrong, shown up to ten per group."""

    path: Path
    groups: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    outcome: str = "Nothing was imported."  # the closing sentence: what became of the file
    skip_into: SkippedRecords | None = None  # --skip-bad: each problem skips its record instead

    def add(self, what: str, entry: str) -> None:
        if self.skip_into is not None:
            self.skip_into.add(what, entry, malformed=True)
            return
        self.counts[what] = self.counts.get(what, 0) + 1
        shown = self.groups.setdefault(what, [])
        if len(shown) < _SHOWN_PROBLEMS:
            shown.append(entry)

    def raise_if_any(self) -> None:
        if not self.counts:
            return
        sentences = []
        for what, shown in self.groups.items():
            total = self.counts[what]
            more = f"; and {total - len(shown)} more" if total > len(shown) else ""
            sentences.append(f"{total} record(s) with {what}: {'; '.join(shown)}{more}")
        raise DatasetImportError(f"{self.path}: " + ". ".join(sentences) + ". " + self.outcome)


def _record_name(record: dict, where: str) -> str:
    key = record.get("id")
    return f"id {key}" if isinstance(key, str | int) and not isinstance(key, bool) else where


def _check_text(record: dict, names: Iterable[str], name: str, problems: RecordProblems,
                allow_empty: bool) -> bool:
    missing, wrong, broken = [], [], []
    for key in names:
        value = record.get(key)
        if value is None or (not allow_empty and isinstance(value, str) and not value.strip()):
            missing.append(key)
        elif not isinstance(value, str):
            wrong.append(f"{key} ({type(value).__name__})")
        elif not _is_unicode(value):
            broken.append(key)
    if missing:
        problems.add("missing fields", f"{name}: {', '.join(missing)}")
    if wrong:
        problems.add("fields that are not text", f"{name}: {', '.join(wrong)}")
    if broken:
        problems.add("text with an unpaired surrogate escape such as \\ud800 (not Unicode)",
                     f"{name}: {', '.join(broken)}")
    return not missing and not wrong and not broken


def _is_unicode(text: str) -> bool:
    """False for text holding a lone surrogate, which JSON's \\uD800-style escapes can produce but UTF-8
    (and so SQLite and Arrow) cannot store."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Messages and the prompt shown for them


def flatten_messages(messages: list[dict[str, str]]) -> str:
    """A readable prompt for a message list: a lone user message is its text, else 'Role: text' blocks."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def message_list(value: object) -> list[dict[str, str]] | None:
    """`value` as [{role, content}] with text contents, or None if it is not such a list."""
    if not isinstance(value, list):
        return None
    out = []
    for message in value:
        if not isinstance(message, dict):
            return None
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str) or not _is_unicode(content):
            return None
        out.append({"role": role, "content": content})
    return out


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_messages(text: str) -> list[dict[str, str]] | None:
    """An HH transcript as role/content messages (contents stripped), or None if it is not one."""
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        return None
    return [{"role": _HH_ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def _shared_prefix(chosen: str, rejected: str) -> int:
    # TRL's extract_prompt: the longest common prefix, with a space before the split left to the replies.
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):  # noqa: B007
        if chosen[idx] != rejected[idx]:
            if idx and chosen[idx - 1] == " ":
                idx -= 1
            break
    else:
        idx = min(len(chosen), len(rejected))
    # A split inside a word ("I like ca" + "ts" / "rs") would leave the prompt ending in half a token, which
    # tokenises differently from how the whole word was seen: move the split back to the word's start.
    ends = (chosen[idx:idx + 1], rejected[idx:idx + 1])
    if idx and not chosen[idx - 1].isspace() and all(e and not e.isspace() for e in ends):
        # A space goes to the replies (as above); a newline stays with the prompt, as a template's does.
        space, newline = chosen.rfind(" ", 0, idx), chosen.rfind("\n", 0, idx)
        if space > newline and space > 0:
            idx = space
        elif newline >= 0:
            idx = newline + 1
    return idx


# From records to rows


class SchemaReader:
    """Turns a file's located records into the rows `Store.import_records` takes.

    `auto` says whether the schema was detected (then a record of another schema is a mixed-schemas
    error) or forced by `--format` (then every record is read as that schema). Well-formed records that
    cannot become a pair (equal replies; chosen and rejected differing before the final reply) are skipped
    and reported in `skips` (`skip_unpairable=False`, as a training file is read, makes them problems).
    Malformed records are problems that refuse the file, unless `skip_bad` skips them too.
    """

    def __init__(self, path: Path, schema: str, auto: bool, problems: RecordProblems | None = None,
                 text_replies: bool = False, skip_bad: bool = False, skip_unpairable: bool = True,
                 skips: SkippedRecords | None = None) -> None:
        self.path = path
        self.schema = schema
        self.auto = auto
        self.problems = problems or RecordProblems(path)
        self.text_replies = text_replies  # conversational replies may be plain text (what a training file may hold)
        self.skips = skips if skips is not None else SkippedRecords()
        self.skip_unpairable = skip_unpairable
        if skip_bad:
            self.problems.skip_into = self.skips
        self._first: str | None = None

    @property
    def n_skipped(self) -> int:
        """How many records were left out (for any reason)."""
        return self.skips.total

    @property
    def skipped(self) -> list[str]:
        """Where the first skipped records were, in file order."""
        return list(self.skips.order)

    def _unpairable(self, reason: str, where: str, name: str) -> None:
        if self.skip_unpairable:
            self.skips.add(reason, where)
        else:
            self.problems.add(reason, name)

    def begin(self, where: str, record: object) -> None:
        """Take the file's first record as the one later records are checked against (see `pair_batches`)."""
        if isinstance(record, dict):
            self._check_schema(where, record)

    def rows(self, records: Iterable[Located]) -> Iterator[StanceRow | PairRow]:
        """Rows in file order; at the end, every collected problem is raised in one error."""
        yield from self._rows(records)
        self.problems.raise_if_any()

    def pair_batches(self, chunks: Iterable[Chunk]) -> Iterator[pa.RecordBatch]:
        """`pair_batches.INPUT_SCHEMA` batches of a file read in chunks, in file order; at the end, every
        collected problem is raised in one error. Call `begin` with the first record first.

        A chunk of plain standard pairs goes straight from Arrow to the store; any other chunk is read
        record by record, so the rows and the messages are those of `rows`.
        """
        for chunk in chunks:
            table = chunk.arrow() if self.schema == "trl-standard" else None  # only plain text skips records
            clean = self.arrow_pairs(table) if table is not None else None
            if clean is not None:
                yield clean
            else:
                yield from input_batches(self._rows(chunk.records()))
        self.problems.raise_if_any()

    def arrow_pairs(self, table: pa.Table) -> pa.RecordBatch | None:
        """A chunk as standard pairs when nothing in it needs the record path: explicit text prompts and
        replies with no nulls, no stance fields, no equal replies. None otherwise."""
        if self.schema != "trl-standard" or self._first is None:
            return None
        names = set(table.column_names)
        if not {"prompt", "chosen", "rejected"} <= names or names & {"support", "oppose"}:
            return None
        columns = [table.column(name) for name in ("prompt", "chosen", "rejected")]
        if any(column.null_count or not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type))
               for column in columns):
            return None
        try:
            for column in columns:
                column.validate(full=True)  # Arrow's JSON and parquet readers leave UTF-8 unchecked
        except pa.ArrowInvalid:
            return None
        if pc.any(pc.equal(columns[1], columns[2])).as_py():
            return None
        return as_input_batch(table.select(["prompt", "chosen", "rejected"]))

    def _rows(self, records: Iterable[Located]) -> Iterator[StanceRow | PairRow]:
        convert = self._stance_row if self.schema == "stance-json" else self._pair_row
        plain = self.schema == "trl-standard"
        for where, record in records:
            if plain and self._first is not None and type(record) is dict:
                # The common case of a large standard file, checked inline: text fields, nothing of
                # another schema, replies that differ. Anything else takes the full path below.
                prompt, chosen, rejected = record.get("prompt"), record.get("chosen"), record.get("rejected")
                if (type(prompt) is str and type(chosen) is str and type(rejected) is str and chosen != rejected
                        and "support" not in record and "oppose" not in record
                        and _is_unicode(prompt) and _is_unicode(chosen) and _is_unicode(rejected)):
                    yield (prompt, chosen, rejected, None)
                    continue
            if not isinstance(record, dict):
                self.problems.add("records that are not JSON objects", where)
                continue
            self._check_schema(where, record)
            row = convert(where, record)
            if row is not None:
                yield row

    def _check_schema(self, where: str, record: dict) -> None:
        found = classify(record)
        if self._first is None:
            self._first = where
            if not self.auto and found in _FAMILY and _FAMILY[found] != _FAMILY[self.schema]:
                raise DatasetImportError(
                    f"{self.path}: --format {self.schema} does not fit: {where} looks like {found} "
                    f"(fields: {_fields(record)})."
                )
            return
        if self.auto and found in _FAMILY and _FAMILY[found] != _FAMILY[self.schema]:
            raise DatasetImportError(
                f"{self.path}: mixed schemas: {self._first} is {self.schema} but {where} is {found} "
                f"(fields: {_fields(record)}). Split the file, or pass --format to read every record as one."
            )

    def _stance_row(self, where: str, record: dict) -> StanceRow | None:
        name = _record_name(record, where)
        ok = True
        key = record.get("id")
        if key is None:
            self.problems.add("missing fields", f"{name}: id")
            ok = False
        elif isinstance(key, bool) or not isinstance(key, str | int):
            self.problems.add("fields that are not text", f"{name}: id ({type(key).__name__})")
            ok = False
        if not _check_text(record, ("prompt", "support", "oppose"), name, self.problems, allow_empty=False):
            return None
        if record["support"].strip() == record["oppose"].strip():
            self.problems.add("support equal to oppose", name)
            return None
        if not ok:
            return None
        return (str(key), record["prompt"], record["support"], record["oppose"])

    def _pair_row(self, where: str, record: dict) -> PairRow | None:
        row = self.pair_row(where, record)
        if row is None:
            return None
        if row[1] == row[2]:  # chosen == rejected
            self.skips.add("chosen equal to rejected", where)
            return None
        return row

    def pair_row(self, where: str, record: dict) -> PairRow | None:
        """One record of this reader's pair schema as a row (None, with the problem collected, if it has one);
        equal replies are kept here."""
        if self.schema == "trl-conversational":
            return self._conversational(where, record)
        if self.schema == "hh":
            return self._hh(where, record)
        return self._standard(where, record)

    def _standard(self, where: str, record: dict) -> PairRow | None:
        name = _record_name(record, where)
        explicit = record.get("prompt") is not None
        names = ("prompt", "chosen", "rejected") if explicit else ("chosen", "rejected")
        if not _check_text(record, names, name, self.problems, allow_empty=True):
            return None
        chosen, rejected = record["chosen"], record["rejected"]
        if explicit:
            return (record["prompt"], chosen, rejected, None)
        idx = _shared_prefix(chosen, rejected)
        return (chosen[:idx], chosen[idx:], rejected[idx:], None)

    def _conversational(self, where: str, record: dict) -> PairRow | None:
        name = _record_name(record, where)
        missing = [key for key in ("chosen", "rejected") if record.get(key) is None]
        if missing:
            self.problems.add("missing fields", f"{name}: {', '.join(missing)}")
            return None
        lists = {key: message_list(record.get(key)) for key in ("prompt", "chosen", "rejected")}
        for key in ("chosen", "rejected"):
            reply = record.get(key)
            if self.text_replies and isinstance(reply, str) and _is_unicode(reply):
                lists[key] = [{"role": "assistant", "content": reply}]
        # A text prompt beside full conversations (UltraFeedback's layout) is read from the conversations.
        loose_prompt = record.get("prompt") is None or isinstance(record.get("prompt"), str)
        bad = [key for key in ("prompt", "chosen", "rejected")
               if lists[key] is None and (key != "prompt" or not loose_prompt)]
        if bad:
            self.problems.add("fields that are not {role, content} message lists", f"{name}: {', '.join(bad)}")
            return None
        prompt, chosen, rejected = lists["prompt"], lists["chosen"], lists["rejected"]
        if prompt is not None and chosen[: len(prompt)] == prompt and rejected[: len(prompt)] == prompt:
            chosen, rejected = chosen[len(prompt):], rejected[len(prompt):]  # replies repeating the prompt
        if prompt is None:  # implicit prompt: the messages chosen and rejected share
            shared = 0
            while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
                shared += 1
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        return self._one_reply(where, name, prompt, chosen, rejected)

    def _hh(self, where: str, record: dict) -> PairRow | None:
        name = _record_name(record, where)
        if not _check_text(record, ("chosen", "rejected"), name, self.problems, allow_empty=True):
            return None
        chosen, rejected = hh_messages(record["chosen"]), hh_messages(record["rejected"])
        if chosen is None or rejected is None:
            which = [key for key, value in (("chosen", chosen), ("rejected", rejected)) if value is None]
            self.problems.add("text that is not a Human/Assistant transcript", f"{name}: {', '.join(which)}")
            return None
        if chosen[:-1] != rejected[:-1]:  # well-formed, but no one prompt both replies answer
            self._unpairable("chosen and rejected differing before the final Assistant reply", where, name)
            return None
        return self._one_reply(where, name, chosen[:-1], chosen[-1:], rejected[-1:])

    def _one_reply(self, where: str, name: str, prompt: list[dict], chosen: list[dict], rejected: list[dict]
                   ) -> PairRow | None:
        if not prompt:
            self._unpairable("no prompt messages", where, name)
            return None
        replies = []
        for side, messages in (("chosen", chosen), ("rejected", rejected)):
            if len(messages) != 1 or messages[0]["role"] != "assistant":
                self._unpairable("replies that are not one assistant message", where,
                                 f"{name}: {side} ({len(messages)} message(s) after the prompt)")
                return None
            replies.append(messages[0]["content"])
        return (flatten_messages(prompt), replies[0], replies[1], prompt)


def companion_prompt_rows(path: Path, records: Iterable[Located]) -> Iterator[TestRow]:
    """Rows of a companion test-prompt file: `{id, prompt}` records (labelled items also do: their prompt)."""
    problems = RecordProblems(path)
    for number, (where, record) in enumerate(records, start=1):
        if not isinstance(record, dict):
            problems.add("records that are not JSON objects", where)
            continue
        if "chosen" in record or "rejected" in record:
            raise DatasetImportError(
                f"{path} holds preference pairs ({where} has chosen/rejected), not test prompts: import it "
                "as a dataset of its own."
            )
        name = _record_name(record, where)
        if not _check_text(record, ("prompt",), name, problems, allow_empty=False):
            continue
        key = record.get("id")
        yield (str(key) if key is not None else str(number), record["prompt"])
    problems.raise_if_any()


# TRL rows for training


PAIR_SCHEMAS = ("trl-standard", "trl-conversational", "hh")


def read_trl_rows(path: Path) -> Iterator[tuple[str, PairRow]]:
    """The preference rows of a file a run trains on (``prefstudio train --dataset FILE``), in file order, each
    with where it was found ("line 3"): the one reader of TRL rows, the import's own.

    Read as an import reads them (JSON Lines, a JSON array or parquet; standard rows, where a missing prompt is
    the replies' shared prefix; conversational ones; HH transcripts), with two differences a training file
    needs: rows may mix the standard and the conversational form, and a conversational reply may be plain text.
    Rows whose replies are equal are kept (the run's selection counts them). A record that is not a preference
    row stops the reading at once; problems inside rows are collected and raised together at the end, naming
    the file and the lines (``DatasetImportError``). An empty file has no rows.
    """
    with path.open("rb") as handle:
        if not handle.read(1 << 16).strip() and not handle.read(1):
            return
    problems = RecordProblems(path, outcome="Fix them and train again.")
    readers: dict[str, SchemaReader] = {}
    for where, record in iter_records(path, sniff_container(path)):
        schema = classify(record)
        if schema not in PAIR_SCHEMAS:
            raise DatasetImportError(f"{path} {where} is not a preference row with prompt, chosen and rejected "
                                     f"(fields: {_fields(record)})")
        reader = readers.get(schema)
        if reader is None:
            reader = readers[schema] = SchemaReader(path, schema, auto=False, problems=problems, text_replies=True,
                                                    skip_unpairable=False)
        row = reader.pair_row(where, record)
        if row is not None:
            yield where, row
    problems.raise_if_any()
