"""What an ``attributes`` run trains on: rated replies (0–4 per attribute), read, cleaned, split, counted.

The ``feedback_selection`` shape for ratings: the user's ratings (``store.feedback_yield.rated_responses``) or
an imported ratings dataset (HelpSteer-style columns, ``--dataset NAME``), each reply keyed by an id the run
reads back (``c<candidate>``, or ``i<dataset>:<index>:<digest>``) under a hash. An item need not carry every
attribute: the missing ones are masked out of the loss. An attribute nobody rated is dropped with a note;
no ratings at all is a ``PairSelectionError`` saying how to rate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from store import feedback_yield
from store.datasets.feedback_formats import RatingItem
from trainers.pair_selection import PairSelectionError, SelectionReport, at_token_boundary, find_dataset
from trainers.run.plan import auto_max_length, planned_steps, seeded_split

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from store.records import RunRecord
    from store.studio_store import Store
    from trainers.run_config import RunConfig

RATING_RANGE = (0.0, 4.0)
HOW_TO_RATE = ("rate some replies first: in the chat, `a` opens the rating row under a candidate (0–4 per "
               "attribute), or import a ratings dataset (HelpSteer-style columns) with `prefstudio datasets import` "
               "and pass --dataset NAME")


@dataclass(frozen=True)
class RatedExample:
    """One rated reply: the rendered prompt, the reply, and the value (0–4) of each attribute it was rated on."""

    example_id: str
    prompt: str
    completion: str
    ratings: dict[str, float]
    origin: str = "rated"  # "rated" (the user's) or "dataset"

    def __post_init__(self) -> None:
        prompt, completion, _ = at_token_boundary(self.prompt, self.completion, self.completion)
        object.__setattr__(self, "prompt", prompt)
        object.__setattr__(self, "completion", completion)


@dataclass
class RatingReport(SelectionReport):
    """What happened to the rated replies on their way to a run, with the attributes trained and those dropped
    for lack of ratings (``feedback_selection.ExampleReport``'s counts, for ratings)."""

    unit: str = "rated reply"
    origins: dict[str, int] = field(default_factory=dict)
    attributes: list[str] = field(default_factory=list)
    dropped_attributes: list[str] = field(default_factory=list)
    rated_per_attribute: dict[str, int] = field(default_factory=dict)  # training and held out together

    def describe(self) -> str:
        where = ", ".join(f"{n} {origin}" for origin, n in self.origins.items() if n)
        parts = [f"{self.total} rated repl(ies) from {self.source}" + (f" ({where})" if where else "")]
        for label, count in (("duplicate(s) dropped", self.duplicates), ("empty dropped", self.empty),
                             ("left out by --data-size", self.sampled_out), ("prompt too long: dropped", self.too_long),
                             ("cut at max length", self.truncated)):
            if count:
                parts.append(f"{count} {label}")
        if self.max_length is not None:
            parts.append(f"max length {self.max_length}" + (" (auto)" if self.max_length_auto else ""))
        parts.append(f"{self.train} for training, {self.heldout} held out")
        rated = ", ".join(f"{name} ({self.rated_per_attribute.get(name, 0)} rated)" for name in self.attributes)
        parts.append(f"attributes {rated}")
        if self.dropped_attributes:
            parts.append(f"{', '.join(self.dropped_attributes)} dropped: no reply is rated on it")
        if self.steps is not None:
            parts.append(f"{self.steps} step(s)")
        return "; ".join(parts)

    def counts(self) -> list[tuple[str, int | str]]:
        rows: list[tuple[str, int | str]] = [("rated replies read", self.total), ("training", self.train),
                                             ("held out", self.heldout)]
        rows += [(f"rated on {name}", self.rated_per_attribute.get(name, 0)) for name in self.attributes]
        rows += [(f"dropped: {name} (rated nowhere)", 0) for name in self.dropped_attributes]
        if self.steps is not None:
            rows.append(("steps", self.steps))
        return rows


@dataclass(frozen=True)
class _Length:
    prompt: int
    longest: int


def _measured(examples: Sequence[RatedExample], tokenizer: PreTrainedTokenizerBase) -> list[_Length]:
    """Token counts as the attribute model reads a reply: the prompt with BOS, and prompt + reply + EOS."""
    if not examples:
        return []
    eos = tokenizer.eos_token or ""
    prompt_ids = tokenizer([e.prompt for e in examples])["input_ids"]
    full_ids = tokenizer([e.prompt + e.completion + eos for e in examples])["input_ids"]
    return [_Length(len(p), len(f)) for p, f in zip(prompt_ids, full_ids, strict=True)]


@dataclass
class RatingSelection:
    """The rated replies of one run, split, hashed, reported (``ExampleSelection``'s shape)."""

    train: list[RatedExample]
    heldout: list[RatedExample]
    dataset_hash: str
    report: RatingReport

    @property
    def train_ids(self) -> list[str]:
        return [e.example_id for e in self.train]

    @property
    def heldout_ids(self) -> list[str]:
        return [e.example_id for e in self.heldout]


def ratings_hash(examples: Sequence[RatedExample]) -> str:
    """sha256 over the examples' ids, text and ratings, in order."""
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.example_id, e.prompt, e.completion, sorted(e.ratings.items())],
                                 ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def wanted_attributes(config: RunConfig) -> list[str] | None:
    """The attributes ``--attributes`` names (None: every attribute the ratings carry)."""
    value = getattr(config, "attributes", None)
    if not value:
        return None
    return [name.strip() for name in str(value).split(",") if name.strip()]


def available_ratings(store: Store, config: RunConfig, model: str | None = None) -> tuple[list[RatedExample], str]:
    """Every rated reply a run on ``config`` (training ``config.train_model``, else ``model``) may name, and where
    they came from. An imported item's prompt is a bare question: it is rendered as one user turn in the model's
    prompt format, as the chat renders what the user types, so the attribute model and SteerLM learn on the prompt
    they will meet (SteerLM's attribute string then goes where the chat puts it, ``steer_format``)."""
    if config.dataset:
        from trainers.model_prompt_format import prompt_format_for_model
        from trainers.prompt_format import ChatTurn

        record = find_dataset(store, config.dataset)
        source = f"{record.kind} dataset '{record.name}'"
        if record.kind != "ratings":
            raise PairSelectionError(f"--method {config.method} learns from ratings, and {source} holds none: choose a "
                                     "ratings dataset (HelpSteer-style: prompt, response, one 0–4 column per "
                                     "attribute)")
        out = []
        fmt = None
        for index, item in enumerate(store.feedback_items(record), start=1):
            if isinstance(item, RatingItem):
                fmt = fmt or prompt_format_for_model(config.train_model or model)
                digest = hashlib.sha256(json.dumps([item.prompt, item.response]).encode()).hexdigest()[:12]
                out.append(RatedExample(f"i{record.id}:{index}:{digest}",
                                        fmt.render("", [ChatTurn("user", item.prompt)]), item.response,
                                        {k: float(v) for k, v in item.ratings.items()}, "dataset"))
        return out, source
    source = f"session {config.session_id}" if config.session_id is not None else "the store"
    rated = [RatedExample(f"c{r.candidate_id}", r.context.prompt, r.response,
                          {k: float(v) for k, v in r.ratings.items()})
             for r in feedback_yield.rated_responses(store.db, config.session_id)]
    if config.method == "steerlm":  # SteerLM: replies nobody rated are learnt with an attribute model's values
        rated += predicted_examples(store, config.session_id, {int(e.example_id[1:]) for e in rated})
    return rated, source


def predicted_examples(store: Store, session_id: int | None, rated_ids: set[int]) -> list[RatedExample]:
    """Candidates no person rated, with the values an attributes run predicted for them (``p<candidate>``,
    origin "predicted"); where several runs predicted one, the latest prediction of each attribute wins."""
    values: dict[int, dict[str, float]] = {}
    for p in store.predicted_ratings(kind="candidate"):
        if p.target_id not in rated_ids:
            values.setdefault(p.target_id, {})[p.attribute] = p.value
    if not values:
        return []
    marks = ",".join("?" * len(values))
    rows = store.db.execute(
        f"SELECT c.id, c.rendered_prompt, c.text FROM candidates c JOIN prompts p ON p.id = c.prompt_id "
        f"WHERE c.id IN ({marks}) AND (? IS NULL OR p.session_id = ?) ORDER BY c.id",
        [*values, session_id, session_id]).fetchall()
    return [RatedExample(f"p{cid}", prompt, text, values[cid], "predicted") for cid, prompt, text in rows if prompt]


def select_ratings(store: Store, config: RunConfig, model: str | None = None) -> RatingSelection:
    """The rated replies ``config`` asks for (on ``config.train_model``, else ``model``), cleaned, sampled and
    split; the attributes settled.

    Raises ``PairSelectionError`` when nothing is rated (saying how to rate) or no wanted attribute is."""
    examples, source = available_ratings(store, config, model)
    wanted = wanted_attributes(config)
    report = RatingReport(source=source, total=len(examples))
    if not examples:
        raise PairSelectionError(f"--method {config.method} needs rated replies, and {source} has none: {HOW_TO_RATE}")
    present = list(dict.fromkeys(name for e in examples for name in e.ratings))
    attributes = wanted if wanted is not None else present
    report.dropped_attributes = [name for name in attributes if name not in present]
    report.attributes = [name for name in attributes if name in present]
    if not report.attributes:
        raise PairSelectionError(f"none of the attributes {', '.join(attributes)} is rated in {source} (rated: "
                                 f"{', '.join(present)}): {HOW_TO_RATE}")
    seen: set[tuple[str, str]] = set()
    kept: list[RatedExample] = []
    for e in examples:
        ratings = {k: v for k, v in e.ratings.items() if k in report.attributes}
        if not e.prompt.strip() or not e.completion.strip() or not ratings:
            report.empty += 1
            continue
        key = (e.prompt, e.completion.strip())
        if key in seen:
            report.duplicates += 1
            continue
        seen.add(key)
        kept.append(RatedExample(e.example_id, e.prompt, e.completion, ratings, e.origin))
    if not kept:
        raise PairSelectionError(f"{source} has no rated reply with a prompt and a text: {HOW_TO_RATE}")
    report.origins = {origin: sum(e.origin == origin for e in kept) for origin in ("rated", "predicted", "dataset")}
    used, heldout_idx, report.sampled_out = seeded_split(len(kept), config)
    train = [kept[i] for i in used if i not in heldout_idx]
    heldout = [kept[i] for i in used if i in heldout_idx]
    report.used, report.train, report.heldout = len(used), len(train), len(heldout)
    report.rated_per_attribute = {a: sum(a in e.ratings for e in train + heldout) for a in report.attributes}
    return RatingSelection(train, heldout, ratings_hash(train + heldout), report)


def plan_ratings(selection: RatingSelection, tokenizer: PreTrainedTokenizerBase, config: RunConfig) -> RatingSelection:
    """Max length and steps filled in; a reply past the max length is cut (its prompt must fit)."""
    train_lengths = _measured(selection.train, tokenizer)
    heldout_lengths = _measured(selection.heldout, tokenizer)
    auto = config.max_length is None
    max_length = auto_max_length(train_lengths + heldout_lengths) if auto else int(config.max_length)
    train = [e for e, n in zip(selection.train, train_lengths, strict=True) if n.prompt < max_length]
    heldout = [e for e, n in zip(selection.heldout, heldout_lengths, strict=True) if n.prompt < max_length]
    report = selection.report
    if not train:
        raise PairSelectionError(f"--max-length {max_length} is shorter than every training prompt: raise it")
    report.max_length, report.max_length_auto = max_length, auto
    report.longest_tokens = max(n.longest for n in train_lengths + heldout_lengths)
    report.too_long_train = len(selection.train) - len(train)
    report.too_long_heldout = len(selection.heldout) - len(heldout)
    report.too_long = report.too_long_train + report.too_long_heldout
    report.truncated = sum(1 for n in train_lengths + heldout_lengths if n.prompt < max_length < n.longest)
    report.train, report.heldout = len(train), len(heldout)
    report.steps = planned_steps(len(train), config)
    report.steps_per_epoch = None if config.max_steps else report.steps // int(config.epochs)
    return RatingSelection(train, heldout, ratings_hash(train + heldout), report)


def run_ratings(store: Store, run: RunRecord, config: RunConfig) -> tuple[list[RatedExample], list[RatedExample]]:
    """The run's recorded training and held-out rated replies, checked against its hash."""
    available, _source = available_ratings(store, config)
    attributes = set(planned_attributes(run))
    by_id = {e.example_id: RatedExample(e.example_id, e.prompt, e.completion,
                                        {k: v for k, v in e.ratings.items() if k in attributes}, e.origin)
             for e in available}
    missing = [i for i in [*run.pair_ids, *run.heldout_ids] if i not in by_id]
    if missing:
        raise PairSelectionError(f"{len(missing)} rated repl(ies) of run {run.id} are no longer available (e.g. "
                                 f"{missing[0]}); start a new run")
    train = [by_id[i] for i in run.pair_ids]
    heldout = [by_id[i] for i in run.heldout_ids]
    if run.dataset_hash and ratings_hash(train + heldout) != run.dataset_hash:
        raise PairSelectionError(f"the ratings of run {run.id} changed since it was prepared; start a new run")
    if not train:
        raise PairSelectionError(f"run {run.id} has no training ratings")
    return train, heldout


def planned_attributes(run: RunRecord) -> list[str]:
    """The attributes the run was prepared to train (from its recorded selection)."""
    return list(((run.summary or {}).get("selection") or {}).get("attributes") or [])


def planned_rating_report(run: RunRecord) -> RatingReport:
    stored: dict[str, Any] = (run.summary or {}).get("selection") or {}
    known = set(RatingReport.__dataclass_fields__)
    return RatingReport(**{k: v for k, v in stored.items() if k in known}) if stored.get("source") else \
        RatingReport(source="the run")
