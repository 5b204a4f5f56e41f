"""Which pairs a run trains on: read, cleaned (with counts), sampled and split, deterministically.

The store already leaves ties and both-bad verdicts out of its pairs. Here duplicates (same prompt,
chosen and rejected) and pairs whose chosen equals its rejected are dropped and counted, an optional
seeded sample keeps ``data_size`` pairs, and a seeded split holds ``heldout_fraction`` of them out. The
ids of both parts and a sha256 over their content are recorded with the run, so a resumed run can check
that it sees the same data.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store.datasets.files import DatasetImportError
from store.datasets.formats import read_trl_rows
from store.pair_ids import file_pair_id
from store.safety_checks import prompt_reply_hash
from trainers.prompt_format import ChatTurn, TranscriptFormat

if TYPE_CHECKING:
    from store.datasets.store_mixin import DatasetRecord
    from store.pairs import PreferencePair
    from store.studio_store import Store
    from trainers.prompt_format import PromptFormat


class PairSelectionError(ValueError):
    """No usable pairs for a run; the message says why and what to do."""


@dataclass(frozen=True)
class TrainingPair:
    """One row for TRL: the rendered prompt and the two completions, exactly as the model saw them."""

    pair_id: str
    prompt: str
    chosen: str
    rejected: str

    def __post_init__(self) -> None:
        prompt, chosen, rejected = at_token_boundary(self.prompt, self.chosen, self.rejected)
        object.__setattr__(self, "prompt", prompt)
        object.__setattr__(self, "chosen", chosen)
        object.__setattr__(self, "rejected", rejected)

    def to_trl(self) -> dict[str, str]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


@dataclass
class SelectionReport:
    """What happened to the pairs on their way to a run (shown to the user and stored in the summary)."""

    source: str
    total: int = 0
    excluded_judgements: int = 0  # ties and both-bad: kept in the store, never pairs
    duplicates: int = 0
    chosen_equals_rejected: int = 0
    empty: int = 0
    flagged: int = 0  # --drop-flagged: the chosen reply was flagged by a safety checker (stored verdicts)
    sampled_out: int = 0
    used: int = 0
    train: int = 0
    heldout: int = 0
    # Filled in by ``trainers.run.plan`` with the tokenizer, before the run starts; ``train`` and ``heldout``
    # are then the pairs the run really uses.
    too_long: int = 0  # both splits
    too_long_train: int = 0
    too_long_heldout: int = 0
    truncated: int = 0  # fit, but the longer reply is cut at max_length
    max_length: int | None = None
    max_length_auto: bool = False
    longest_tokens: int | None = None
    steps: int | None = None
    steps_per_epoch: int | None = None
    # A named dataset from the store: name, id, kind; for a stance dataset also the exercise's settings and
    # counts (data_size, support_ratio, support_preferred, oppose_preferred, heldout_items, shuffle_seed).
    dataset: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        exercise = self.dataset if self.dataset and self.dataset.get("kind") == "stance" else None
        if exercise:
            parts = [f"{self.total} item(s) in {self.source}",
                     f"{exercise['support_preferred']} prefer support and {exercise['oppose_preferred']} prefer "
                     f"oppose (--support-ratio {exercise['support_ratio']}, --data-size {exercise['data_size']})"]
        else:
            parts = [f"{self.total} pair(s) from {self.source}"]
        for label, count in (
            ("tie/both-bad judgement(s) excluded", self.excluded_judgements),
            ("duplicate(s) dropped", self.duplicates),
            ("with chosen = rejected dropped", self.chosen_equals_rejected),
            ("empty dropped", self.empty),
            ("with a flagged chosen reply dropped (--drop-flagged)", self.flagged),
            ("left out by --data-size", self.sampled_out),
        ):
            if count:
                parts.append(f"{count} {label}")
        if self.max_length is not None:
            how = ""
            if self.max_length_auto:
                capped = bool(self.longest_tokens and self.longest_tokens > self.max_length)
                how = f" (auto: the longest pair is {self.longest_tokens} tokens{', over the cap' if capped else ''})"
            parts.append(f"max length {self.max_length}{how}")
            if self.too_long:
                parts.append(f"prompt too long for it: {self.too_long_train} training and {self.too_long_heldout} "
                             "held-out pair(s) dropped")
            if self.truncated:
                parts.append(f"{self.truncated} pair(s) with a reply cut at max length")
        parts.append(f"{self.train} for training, {self.heldout} held out")
        if self.steps is not None:
            parts.append(f"{self.steps} step(s)" + (f" ({self.steps_per_epoch} per epoch)" if self.steps_per_epoch
                                                    else ""))
        return "; ".join(parts)

    def counts(self) -> list[tuple[str, int | str]]:
        """The numbers a report shows, labelled, in the order a reader follows them."""
        rows: list[tuple[str, int | str]] = [("pairs read", self.total)]
        for label, value in (
            ("tie/both-bad judgements excluded", self.excluded_judgements),
            ("duplicates dropped", self.duplicates),
            ("chosen = rejected dropped", self.chosen_equals_rejected),
            ("empty dropped", self.empty),
            ("flagged chosen reply dropped", self.flagged),
            ("left out by --data-size", self.sampled_out),
        ):
            if value:
                rows.append((label, value))
        if self.max_length is not None:
            rows.append(("max length", f"{self.max_length}" + (" (auto)" if self.max_length_auto else "")))
            rows += [("too long: training pairs dropped", self.too_long_train),
                     ("too long: held-out pairs dropped", self.too_long_heldout)]
            if self.truncated:
                rows.append(("replies cut at max length", self.truncated))
        rows += [("training pairs", self.train), ("held-out pairs", self.heldout)]
        if self.steps is not None:
            rows.append(("steps", self.steps))
        return rows

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SelectionReport:
        """A report stored with a run (keys it does not know, from older or newer runs, are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class PairSelection:
    """The pairs of one run, split, with the dataset hash and the report."""

    train: list[TrainingPair]
    heldout: list[TrainingPair]
    dataset_hash: str
    report: SelectionReport
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def train_ids(self) -> list[str]:
        return [p.pair_id for p in self.train]

    @property
    def heldout_ids(self) -> list[str]:
        return [p.pair_id for p in self.heldout]


def at_token_boundary(prompt: str, chosen: str, rejected: str) -> tuple[str, str, str]:
    """Put the space between a prompt and its replies where the engine puts it: at the start of each reply.

    The engine evaluates a prompt ending at its last visible character (``…Assistant:``) and the model's
    first token carries the space (Gemma's ``▁Sure``, byte-level BPE's ``ĠSure``). A prompt that ends in
    a space instead (``…Assistant: `` + ``Sure``, as some imported files split it) tokenises differently
    alone than followed by its reply: the trailing ``▁`` merges into the reply's first token, so TRL warns
    that the tokenized prompt is not a prefix of prompt+completion and trains on a context cut short. Moving
    the trailing spaces into both replies keeps the text and makes the boundary a token boundary. Newlines
    stay in the prompt: a chat template's turn header ends in one, and its tokens are the template's, not the
    model's to generate.
    """
    kept = prompt.rstrip(" \t")
    moved = prompt[len(kept):]
    if not moved or not kept:
        return prompt, chosen, rejected
    return kept, moved + chosen, moved + rejected


def _leading_ws(text: str) -> str:
    return text[: len(text) - len(text.lstrip())]


def completion_like(reply: str, model_reply: str) -> str:
    """Put a human-written reply into the whitespace convention of a reply the model generated.

    Edited replies are stored stripped, while generated ones keep the model's leading space (``" Hi"``
    after ``"Assistant:"``); training must tokenise both the way generation did.
    """
    return _leading_ws(model_reply) + reply.strip()


def from_store_pairs(pairs: Iterable[PreferencePair]) -> list[TrainingPair]:
    """Turn the store's ``PreferencePair`` records into training pairs (edits get the model's spacing)."""
    out = []
    for p in pairs:
        chosen = completion_like(p.chosen, p.rejected) if p.verdict == "edited" else p.chosen
        out.append(TrainingPair(pair_id=p.pair_id, prompt=p.prompt, chosen=chosen, rejected=p.rejected))
    return out


def read_dataset_file(path: Path, prompt_format: PromptFormat | None = None) -> list[TrainingPair]:
    """The pairs of a TRL preference file (``--dataset FILE``), read by the store's reader of TRL rows
    (``store.datasets.formats.read_trl_rows``: JSON Lines, a JSON array or parquet, problems named by line).

    A text ``prompt`` is used as the rendered prompt. A conversational prompt (a list of ``{"role", "content"}``)
    or an HH transcript is rendered with ``prompt_format`` (default: the transcript format), and its replies
    (text or one assistant message) put in that format's whitespace convention. Each pair's id names the file,
    the line and its content (``store.pair_ids.file_pair_id``).
    """
    fmt = prompt_format or TranscriptFormat()
    path = Path(path).expanduser()
    try:
        rows = list(read_trl_rows(path))
    except OSError as exc:
        raise PairSelectionError(f"cannot read dataset {path}: {exc.strerror or exc}") from exc
    except DatasetImportError as exc:
        raise PairSelectionError(str(exc)) from exc
    out: list[TrainingPair] = []
    for where, (prompt, chosen, rejected, messages) in rows:
        if messages is not None:
            try:
                prompt, chosen, rejected = render_conversation(fmt, messages, chosen, rejected)
            except ValueError as exc:  # a role the prompt format has no place for
                raise PairSelectionError(f"{path} {where} cannot be rendered: {exc}") from exc
        digest = hashlib.sha256(json.dumps([prompt, chosen, rejected]).encode()).hexdigest()[:12]
        number = int(where.rsplit(" ", 1)[-1])  # "line 3" (JSON Lines), "record 3", "row 3"
        out.append(TrainingPair(pair_id=file_pair_id(path.stem, number, digest), prompt=prompt, chosen=chosen,
                                rejected=rejected))
    return out


def render_conversation(fmt: PromptFormat, messages: Sequence[dict[str, str]], chosen: str, rejected: str) -> tuple[str, str, str]:
    """A conversational prompt (``[{"role", "content"}]``) rendered with ``fmt``, and the two replies in its
    completion convention: (prompt, chosen, rejected)."""
    turns = [ChatTurn(m["role"], m["content"]) for m in messages]
    system = " ".join(t.content for t in turns if t.role == "system")
    prompt = fmt.render(system, [t for t in turns if t.role != "system"])
    return prompt, fmt.as_completion(chosen), fmt.as_completion(rejected)


def flagged_pair_ids(store: Store, pairs: Sequence[TrainingPair]) -> set[str]:
    """The ids of ``pairs`` whose chosen reply a safety checker flagged, read from the store's verdicts (the studio
    checks the chosen replies before it prepares a run with --drop-flagged, under the same key:
    ``store.safety_checks.prompt_reply_hash`` of the pair's prompt and chosen reply)."""
    keys = {pair.pair_id: prompt_reply_hash(pair.prompt, pair.chosen) for pair in pairs}
    unsafe = store.unsafe_text_hashes(keys.values())
    return {pair_id for pair_id, key in keys.items() if key in unsafe}


def dataset_hash(pairs: Sequence[TrainingPair]) -> str:
    """sha256 over the pairs' ids and content, in order."""
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(json.dumps([p.pair_id, p.prompt, p.chosen, p.rejected], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def select_pairs(
    pairs: Sequence[TrainingPair],
    *,
    seed: int,
    heldout_fraction: float,
    data_size: int | None = None,
    source: str = "the store",
    excluded_judgements: int = 0,
    flagged: Collection[str] = (),
) -> PairSelection:
    """Clean, sample and split ``pairs``; those whose id is in ``flagged`` (a flagged chosen reply) are dropped and
    counted first. Raises ``PairSelectionError`` when nothing usable is left."""
    report = SelectionReport(source=source, total=len(pairs), excluded_judgements=excluded_judgements)
    if not pairs:
        hint = "judge some candidates in the studio first (A/B or an edit; ties and both-bad make no pairs)"
        if excluded_judgements:
            hint = (f"all {excluded_judgements} judgement(s) there are ties or both-bad, which make no pairs; "
                    "pick a better reply (A/B) or edit one")
        raise PairSelectionError(f"no preference pairs in {source}: {hint}")
    seen: set[tuple[str, str, str]] = set()
    kept: list[TrainingPair] = []
    for p in pairs:
        if p.pair_id in flagged:
            report.flagged += 1
            continue
        if not p.chosen.strip() or not p.rejected.strip() or not p.prompt.strip():
            report.empty += 1
            continue
        if p.chosen.strip() == p.rejected.strip():
            report.chosen_equals_rejected += 1
            continue
        key = (p.prompt, p.chosen.strip(), p.rejected.strip())
        if key in seen:
            report.duplicates += 1
            continue
        seen.add(key)
        kept.append(p)
    if not kept:
        raise PairSelectionError(
            f"all {report.total} pair(s) in {source} were filtered out ({report.duplicates} duplicate, "
            f"{report.chosen_equals_rejected} with chosen = rejected, {report.empty} empty, {report.flagged} with a "
            "flagged chosen reply); judge pairs whose replies differ"
        )
    rng = random.Random(seed)
    order = list(range(len(kept)))
    rng.shuffle(order)
    if data_size is not None and data_size < len(kept):
        report.sampled_out = len(kept) - data_size
        order = order[:data_size]
    n_heldout = int(len(order) * heldout_fraction)
    if n_heldout >= len(order):
        n_heldout = len(order) - 1
    heldout_idx = set(order[:n_heldout])
    used_idx = sorted(order)  # keep judgement order within each part
    train = [kept[i] for i in used_idx if i not in heldout_idx]
    heldout = [kept[i] for i in used_idx if i in heldout_idx]
    report.used, report.train, report.heldout = len(used_idx), len(train), len(heldout)
    return PairSelection(train=train, heldout=heldout, dataset_hash=dataset_hash(train + heldout), report=report)


def select_from_store(store: Store, *, session_id: int | None, seed: int, heldout_fraction: float,
                      data_size: int | None = None, drop_flagged: bool = False) -> PairSelection:
    """Read a store's pairs (one session's or all) and select them (without those whose chosen reply was flagged,
    with ``drop_flagged``)."""
    source = f"session {session_id}" if session_id is not None else "the store"
    excluded = sum(1 for j in store.judgements(session_id=session_id) if j.verdict in ("tie", "both_bad", "all_bad"))
    pairs = from_store_pairs(store.pairs(session_id=session_id))
    return select_pairs(pairs, seed=seed, heldout_fraction=heldout_fraction, data_size=data_size, source=source,
                        excluded_judgements=excluded,
                        flagged=flagged_pair_ids(store, pairs) if drop_flagged else ())


def dataset_file(value: str) -> Path | None:
    """The JSONL file a ``--dataset`` value names, or None when it names a dataset in the store.

    An existing path is a file; so is an absolute one (``prepare_run`` records files that way, so a run
    whose file has gone fails as a missing file rather than as an unknown name).
    """
    path = Path(value).expanduser()
    return path if path.exists() or path.is_absolute() else None


def find_dataset(store: Store, name: str) -> DatasetRecord:
    """The store's dataset record called ``name`` (or with that id); a clear error when there is none."""
    detail = "this store holds no datasets"
    getter = getattr(store, "get_dataset", None)
    if getter is not None:
        try:
            return getter(name)
        except LookupError as exc:  # the store's message lists the names it knows
            detail = str(exc).rstrip(".")
    raise PairSelectionError(
        f"--dataset {name}: no file at that path, and no dataset of that name in the store ({detail}); "
        "import one with `prefstudio datasets import FILE|DIR`"
    )


def store_dataset_pairs(store: Store, record: DatasetRecord, prompt_format: PromptFormat | None = None) -> list[TrainingPair]:
    """A preference dataset's pairs for training: text prompts as stored (TRL's standard format, like a
    JSONL file's), conversational and HH prompts rendered with ``prompt_format`` (default: transcript)."""
    fmt = prompt_format or TranscriptFormat()
    conversations = {row["pair_id"]: row for row in store.dataset_pair_messages(record)}
    out = []
    for pair in store.dataset_pairs(record):
        row = conversations.get(pair.pair_id)
        if row is None:
            out.append(TrainingPair(pair.pair_id, pair.prompt, pair.chosen, pair.rejected))
            continue
        try:
            prompt, chosen, rejected = render_conversation(fmt, row["prompt_messages"], row["chosen"], row["rejected"])
        except ValueError as exc:  # a role the prompt format has no place for, a prompt ending in a reply
            raise PairSelectionError(f"pair {pair.pair_id} of dataset '{record.name}' cannot be rendered: {exc}") \
                from exc
        out.append(TrainingPair(pair.pair_id, prompt, chosen, rejected))
    return out
