"""What an SFT or KTO run trains on: demonstrations or good/bad labels, read, cleaned, split, counted.

DPO (and any method that trains on pairs) selects pairs (``trainers/pair_selection.py``); a method that learns
from single replies selects *examples* here, the same way: read (``store/feedback_yield.py`` for the store, the
store's imported datasets, a preference file), cleaned with counts, sampled, split with a seed, measured with
the model's tokenizer (``plan_examples``), and recorded by id with a hash so the run process reads back exactly
these (``run_examples``). Which kind a method needs is ``trainers.methods.registry.feedback_of``.

| method | feedback          | from the store                                    | from a dataset                     |
|--------|-------------------|---------------------------------------------------|------------------------------------|
| sft    | demonstrations    | written / corrected replies and edits;            | a demonstrations dataset; with     |
|        |                   | with --sft-include-chosen each pair's chosen reply | --sft-include-chosen a preference  |
|        |                   |                                                   | dataset's or file's chosen replies |
| kto    | labels            | thumbs up / down; with --kto-from-pairs the labels | a labels dataset; with             |
|        |                   | comparisons imply (feedback_yield's table)        | --kto-from-pairs pairs unpaired    |

Every problem a user can fix (no demonstrations, only good labels, a dataset the method cannot learn from) is a
``PairSelectionError`` raised before anything is written, saying what there is and what to collect.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from store import feedback_yield
from store.datasets.feedback_formats import DemonstrationItem, LabelItem
from trainers.methods.registry import feedback_of
from trainers.pair_selection import (
    PairSelectionError,
    SelectionReport,
    TrainingPair,
    at_token_boundary,
    dataset_file,
    find_dataset,
    from_store_pairs,
    read_dataset_file,
    render_conversation,
    store_dataset_pairs,
)
from trainers.prompt_format import ChatTurn
from trainers.run.plan import auto_max_length, planned_steps

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from store.datasets.store_mixin import DatasetRecord
    from store.records import RunRecord
    from store.studio_store import Store
    from trainers.prompt_format import PromptFormat
    from trainers.run_config import RunConfig

# The KTO paper's recommended balance: desirable weight x good / (undesirable weight x bad) in [1, 4/3].
KTO_RATIO_RANGE = (1.0, 4.0 / 3.0)
UNITS = {"demonstrations": "demonstration", "labels": "label"}


@dataclass(frozen=True)
class TrainingExample:
    """One row for TRL: a rendered prompt and one reply, with its label for KTO (None for SFT).

    ``example_id`` names where it came from, so the run can read it back: a demonstration (``m<id>``, ``e<j>``),
    a label (``l<j>c<cand>``, ``l<j>e``), a pair's chosen or rejected reply (``chosen:<pair id>``,
    ``rejected:<pair id>``) or an imported item (``i<dataset>:<index>:<digest>``).
    """

    example_id: str
    prompt: str
    completion: str
    label: bool | None = None
    origin: str = ""  # where it came from, for the counts: written, edited, chosen, thumbs, comparison, dataset

    def __post_init__(self) -> None:
        prompt, completion, _ = at_token_boundary(self.prompt, self.completion, self.completion)
        object.__setattr__(self, "prompt", prompt)
        object.__setattr__(self, "completion", completion)

    def to_trl(self) -> dict[str, str | bool]:
        """TRL's prompt-completion row (SFT) or unpaired preference row (KTO, with ``label``)."""
        row: dict[str, str | bool] = {"prompt": self.prompt, "completion": self.completion}
        if self.label is not None:
            row["label"] = self.label
        return row


@dataclass
class ExampleReport(SelectionReport):
    """A ``SelectionReport`` counting examples (demonstrations or labels) instead of pairs, with KTO's balance.

    ``good`` / ``bad`` and the weights are the training split's, after ``plan_examples``."""

    unit: str = "demonstration"
    origins: dict[str, int] = field(default_factory=dict)
    good: int = 0
    bad: int = 0
    heldout_good: int = 0
    heldout_bad: int = 0
    desirable_weight: float | None = None
    undesirable_weight: float | None = None
    weights_auto: bool = False

    @property
    def weight_ratio(self) -> float | None:
        """desirable weight x good / (undesirable weight x bad): the paper wants it in [1, 4/3]."""
        if not (self.desirable_weight and self.undesirable_weight and self.bad):
            return None
        return self.desirable_weight * self.good / (self.undesirable_weight * self.bad)

    def kto_balance(self) -> str | None:
        """The weights and why, in one phrase (None for SFT)."""
        if self.desirable_weight is None or self.undesirable_weight is None:
            return None
        how = "set from the data's balance" if self.weights_auto else "as given"
        ratio = self.weight_ratio
        low, high = KTO_RATIO_RANGE
        advice = "" if ratio is None or low - 1e-9 <= ratio <= high + 1e-9 else \
            " (outside the KTO paper's recommended 1 to 4/3: leave the weights unset to balance them)"
        return (f"KTO weights: desirable {self.desirable_weight:g}, undesirable {self.undesirable_weight:g} ({how}: "
                f"{self.good} good, {self.bad} bad in training, weighted ratio {ratio or 0:.2f}{advice})")

    def describe(self) -> str:
        unit = self.unit
        where = ", ".join(f"{n} {origin}" for origin, n in self.origins.items() if n)
        parts = [f"{self.total} {unit}(s) from {self.source}" + (f" ({where})" if where else "")]
        for label, count in (("duplicate(s) dropped", self.duplicates), ("empty dropped", self.empty),
                             ("left out by --data-size", self.sampled_out)):
            if count:
                parts.append(f"{count} {label}")
        if self.max_length is not None:
            how = f" (auto: the longest {unit} is {self.longest_tokens} tokens)" if self.max_length_auto else ""
            parts.append(f"max length {self.max_length}{how}")
            if self.too_long:
                parts.append(f"prompt too long for it: {self.too_long_train} training and {self.too_long_heldout} "
                             f"held-out {unit}(s) dropped")
            if self.truncated:
                parts.append(f"{self.truncated} {unit}(s) with a reply cut at max length")
        split = f"{self.train} for training, {self.heldout} held out"
        if self.unit == "label":
            split += f" (training: {self.good} good, {self.bad} bad; held out: {self.heldout_good} good, " \
                     f"{self.heldout_bad} bad)"
        parts.append(split)
        balance = self.kto_balance()
        if balance:
            parts.append(balance)
        if self.steps is not None:
            parts.append(f"{self.steps} step(s)" + (f" ({self.steps_per_epoch} per epoch)" if self.steps_per_epoch
                                                    else ""))
        return "; ".join(parts)

    def counts(self) -> list[tuple[str, int | str]]:
        rows: list[tuple[str, int | str]] = [(f"{self.unit}s read", self.total)]
        rows += [(f"{origin}", n) for origin, n in self.origins.items() if n]
        for label, value in (("duplicates dropped", self.duplicates), ("empty dropped", self.empty),
                             ("left out by --data-size", self.sampled_out)):
            if value:
                rows.append((label, value))
        if self.max_length is not None:
            rows.append(("max length", f"{self.max_length}" + (" (auto)" if self.max_length_auto else "")))
            rows += [(f"too long: training {self.unit}s dropped", self.too_long_train),
                     (f"too long: held-out {self.unit}s dropped", self.too_long_heldout)]
        rows += [(f"training {self.unit}s", self.train), (f"held-out {self.unit}s", self.heldout)]
        if self.unit == "label":
            rows += [("good / bad (training)", f"{self.good} / {self.bad}"),
                     ("desirable / undesirable weight", f"{self.desirable_weight:g} / {self.undesirable_weight:g}")]
        if self.steps is not None:
            rows.append(("steps", self.steps))
        return rows

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExampleReport:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class ExampleSelection:
    """The examples of one run, split, with the hash recorded with the run and the report (``PairSelection``'s
    shape, so preparing and recording a run is the same code for both)."""

    train: list[TrainingExample]
    heldout: list[TrainingExample]
    dataset_hash: str
    report: ExampleReport

    @property
    def train_ids(self) -> list[str]:
        return [e.example_id for e in self.train]

    @property
    def heldout_ids(self) -> list[str]:
        return [e.example_id for e in self.heldout]


def kto_weights(good: int, bad: int) -> tuple[float, float]:
    """(desirable, undesirable) weights putting desirable x good / (undesirable x bad) in the paper's [1, 4/3]:
    the minority's weight raised to the nearest end of the range, the other kept at 1 (3 decimals, rounded so
    the ratio stays inside)."""
    if good <= 0 or bad <= 0:
        raise ValueError("KTO weights need at least one good and one bad example")
    low, high = KTO_RATIO_RANGE
    ratio = good / bad
    if ratio < low:
        return _ceil3(bad / good), 1.0
    if ratio > high:
        return 1.0, _ceil3(good / (bad * high))
    return 1.0, 1.0


def _ceil3(value: float) -> float:
    return math.ceil(round(value * 1000, 6)) / 1000


def examples_hash(examples: Sequence[TrainingExample]) -> str:
    """sha256 over the examples' ids, text and labels, in order."""
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e.example_id, e.prompt, e.completion, e.label], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


# Reading each source


def prompt_of(context: feedback_yield.PromptContext, render: Callable[[], PromptFormat]) -> str:
    """The prompt the candidates saw; a prompt stored without candidates is rendered from its conversation."""
    if context.rendered is not None:
        return context.rendered
    turns = [ChatTurn(m["role"], m["content"]) for m in context.messages]
    system = " ".join(t.content for t in turns if t.role == "system")
    return render().render(system, [t for t in turns if t.role != "system"])


def _store_demonstrations(store: Store, config: RunConfig, render: Callable[[], PromptFormat]) -> list[TrainingExample]:
    out = [TrainingExample(d.demo_id, prompt_of(d.context, render), render().as_completion(d.text), None, d.origin)
           for d in feedback_yield.demonstrations(store.db, config.session_id)]
    if config.sft_include_chosen:
        out += _chosen_of(from_store_pairs(store.pairs(session_id=config.session_id)))
    return out


def _chosen_of(pairs: Sequence[TrainingPair]) -> list[TrainingExample]:
    return [TrainingExample(f"chosen:{p.pair_id}", p.prompt, p.chosen, None, "chosen") for p in pairs]


def _unpaired(pairs: Sequence[TrainingPair]) -> list[TrainingExample]:
    out = []
    for p in pairs:
        out.append(TrainingExample(f"chosen:{p.pair_id}", p.prompt, p.chosen, True, "from pairs"))
        out.append(TrainingExample(f"rejected:{p.pair_id}", p.prompt, p.rejected, False, "from pairs"))
    return out


def _store_labels(store: Store, config: RunConfig, render: Callable[[], PromptFormat]) -> list[TrainingExample]:
    out = []
    for label in feedback_yield.unpaired_labels(store.db, config.session_id, from_judgements=config.kto_from_pairs):
        # A candidate keeps the model's own spacing; an edit is stored stripped and gets the model's convention.
        completion = render().as_completion(label.completion) if label.label_id.endswith("e") else label.completion
        origin = "thumbs" if label.verdict in ("good", "bad") else "from comparisons"
        out.append(TrainingExample(label.label_id, prompt_of(label.context, render), completion, label.label,
                                   origin))
    return out


def _item_id(record: DatasetRecord, index: int, prompt: str, completion: str) -> str:
    digest = hashlib.sha256(json.dumps([prompt, completion]).encode()).hexdigest()[:12]
    return f"i{record.id}:{index}:{digest}"


def _rendered_item(item: DemonstrationItem | LabelItem, render: Callable[[], PromptFormat],
                   where: str) -> tuple[str, str]:
    if not item.prompt_messages:
        return item.prompt, item.completion
    try:
        prompt, completion, _ = render_conversation(render(), item.prompt_messages, item.completion, item.completion)
    except ValueError as exc:  # a role the prompt format has no place for
        raise PairSelectionError(f"{where} cannot be rendered: {exc}") from exc
    return prompt, completion


def _dataset_examples(store: Store, config: RunConfig, kind: str,
                      render: Callable[[], PromptFormat]) -> tuple[list[TrainingExample], str]:
    """The examples of ``config.dataset`` (a preference file, or a dataset in the store) and its description."""
    method = config.method
    from_pairs = config.sft_include_chosen if kind == "demonstrations" else config.kto_from_pairs
    pairs_flag = "--sft-include-chosen" if kind == "demonstrations" else "--kto-from-pairs"
    given = [name for name, value in (("--support-ratio", config.support_ratio),
                                      ("--shuffle-seed", config.shuffle_seed),
                                      ("--system-prompt", config.system_prompt)) if value is not None]
    if given:
        raise PairSelectionError(f"{', '.join(given)} only apply to a labelled-stance dataset with --method dpo")
    path = dataset_file(config.dataset)
    if path is not None:
        if not from_pairs:
            raise PairSelectionError(
                f"--method {method} cannot learn from {path}, a file of preference pairs, as it is: pass {pairs_flag} "
                f"to {_from_pairs_effect(kind)}, or import a {kind} file with `prefstudio datasets import` and "
                "name that dataset")
        pairs = read_dataset_file(path)
        return (_chosen_of(pairs) if kind == "demonstrations" else _unpaired(pairs)), str(path)
    record = find_dataset(store, config.dataset)
    source = f"{record.kind} dataset '{record.name}'"
    if record.kind == kind:
        out = []
        for index, item in enumerate(store.feedback_items(record), start=1):
            if not isinstance(item, DemonstrationItem | LabelItem):  # the kind says which; a guard for the type
                continue
            prompt, completion = _rendered_item(item, render, f"item {index} of {source}")
            label = item.label if isinstance(item, LabelItem) else None
            out.append(TrainingExample(_item_id(record, index, prompt, completion), prompt, completion, label,
                                       "dataset"))
        return out, source
    if record.kind == "preference" and from_pairs:
        pairs = store_dataset_pairs(store, record)
        return (_chosen_of(pairs) if kind == "demonstrations" else _unpaired(pairs)), source
    if record.kind == "preference":
        hint = f"pass {pairs_flag} to {_from_pairs_effect(kind)}, or train it with --method dpo"
    else:
        hint = f"choose a {kind} dataset" + (f" or a preference one with {pairs_flag}" if kind else "")
    raise PairSelectionError(f"--method {method} learns from {kind}, and {source} holds none: {hint}")


def _from_pairs_effect(kind: str) -> str:
    return "learn each pair's chosen reply" if kind == "demonstrations" else \
        "use each pair's chosen reply as good and its rejected one as bad"


# Selecting, splitting, planning


def select_examples(store: Store, config: RunConfig, model: str | None = None) -> ExampleSelection:
    """The examples ``config`` asks for, cleaned, sampled and split (not yet measured: ``plan_examples``).

    Raises ``PairSelectionError`` with what there is and what to collect when the method has nothing to learn."""
    kind = feedback_of(config.method)
    if kind == "ratings":  # --method attributes: rated replies, selected the same way (trainers/rating_selection.py)
        from trainers.rating_selection import select_ratings

        return select_ratings(store, config, model)  # type: ignore[return-value]
    examples, source = available_examples(store, config, model)
    report = ExampleReport(source=source, unit=UNITS[kind], total=len(examples))
    seen: set[tuple[str, str, bool | None]] = set()
    kept: list[TrainingExample] = []
    for e in examples:
        if not e.prompt.strip() or not e.completion.strip():
            report.empty += 1
            continue
        key = (e.prompt, e.completion.strip(), e.label)
        if key in seen:
            report.duplicates += 1
            continue
        seen.add(key)
        kept.append(e)
    report.origins = dict(Counter(e.origin for e in kept))
    _check_enough(kind, kept, config, source, store)
    rng = random.Random(config.seed)
    order = list(range(len(kept)))
    rng.shuffle(order)
    if config.data_size is not None and config.data_size < len(order):
        report.sampled_out = len(order) - config.data_size
        order = order[:config.data_size]
        _check_enough(kind, [kept[i] for i in order], config, source, store, after="--data-size")
    # KTO: each label held out in the same share, so the held-out margin compares good with bad.
    groups = [[i for i in order if kept[i].label is value] for value in ((True, False) if kind == "labels" else (None,))]
    heldout_idx: set[int] = set()
    for group in groups:
        n = min(int(len(group) * config.heldout_fraction), len(group) - 1)
        heldout_idx.update(group[:max(0, n)])
    used = sorted(order)
    train = [kept[i] for i in used if i not in heldout_idx]
    heldout = [kept[i] for i in used if i in heldout_idx]
    report.used, report.train, report.heldout = len(used), len(train), len(heldout)
    _count_labels(report, train, heldout)
    return ExampleSelection(train, heldout, examples_hash(train + heldout), report)


def available_examples(store: Store, config: RunConfig, model: str | None = None
                       ) -> tuple[list[TrainingExample], str]:
    """Every example a run on ``config`` may name (its training and held-out ones among them), and their source."""
    kind = feedback_of(config.method)
    if kind not in UNITS:
        raise ValueError(f"--method {config.method} trains on {kind}, not on demonstrations or labels")
    formats: list[PromptFormat] = []

    def render() -> PromptFormat:  # the model's prompt format, read only when a prompt or reply needs it
        if not formats:
            from trainers.model_prompt_format import prompt_format_for_model

            formats.append(prompt_format_for_model(config.train_model or model))
        return formats[0]

    if config.dataset:
        return _dataset_examples(store, config, kind, render)
    source = f"session {config.session_id}" if config.session_id is not None else "the store"
    if kind == "demonstrations":
        return _store_demonstrations(store, config, render), source
    return _store_labels(store, config, render), source


def _check_enough(kind: str, examples: Sequence[TrainingExample], config: RunConfig, source: str, store: Store,
                  after: str = "") -> None:
    cut = f" (after {after} {config.data_size})" if after else ""
    if kind == "demonstrations" and not examples:
        hint = "write one: in the chat, `e` edits a reply (the edit is stored as a demonstration)"
        if not config.sft_include_chosen and not config.dataset:
            n_pairs = len(store.pairs(session_id=config.session_id))
            if n_pairs:
                hint += f", or pass --sft-include-chosen to learn the chosen reply of your {n_pairs} pair(s)"
        raise PairSelectionError(f"SFT needs demonstrations, and {source} has none{cut}: {hint}")
    if kind == "labels":
        good = sum(1 for e in examples if e.label)
        bad = sum(1 for e in examples if e.label is False)
        if good and bad:
            return
        missing = "thumbs down (`-` on a single reply in the chat)" if not bad else \
            "thumbs up (`+` on a single reply in the chat)"
        hint = f"give {missing}"
        if not config.kto_from_pairs and not config.dataset and store.pairs(session_id=config.session_id):
            hint += ", or pass --kto-from-pairs to count your comparisons' chosen replies good and rejected ones bad"
        raise PairSelectionError(f"KTO needs both good and bad labels: {source} has {good} good, {bad} bad{cut}; "
                                 f"{hint}")


def _count_labels(report: ExampleReport, train: Sequence[TrainingExample], heldout: Sequence[TrainingExample]) -> None:
    if report.unit != "label":
        return
    report.good = sum(1 for e in train if e.label)
    report.bad = sum(1 for e in train if e.label is False)
    report.heldout_good = sum(1 for e in heldout if e.label)
    report.heldout_bad = sum(1 for e in heldout if e.label is False)


@dataclass(frozen=True)
class ExampleLength:
    """Token counts of one example as TRL tokenises it: the prompt (with BOS) and the reply with its EOS."""

    prompt: int
    completion: int

    @property
    def longest(self) -> int:
        return self.prompt + self.completion


def measure_examples(examples: Sequence[TrainingExample], tokenizer: PreTrainedTokenizerBase) -> list[ExampleLength]:
    if not examples:
        return []
    eos = tokenizer.eos_token or ""
    prompt_ids = tokenizer([e.prompt for e in examples])["input_ids"]
    full_ids = tokenizer([e.prompt + e.completion + eos for e in examples])["input_ids"]
    return [ExampleLength(len(p), len(f) - len(p)) for p, f in zip(prompt_ids, full_ids, strict=True)]


def plan_examples(selection: ExampleSelection, tokenizer: PreTrainedTokenizerBase,
                  config: RunConfig) -> ExampleSelection:
    """``trainers.run.plan.plan_selection`` for examples: too-long ones dropped per split, the max length and
    steps filled in, and for KTO the weights set (from the training split's balance unless given)."""
    from trainers.rating_selection import RatingSelection, plan_ratings

    if isinstance(selection, RatingSelection):
        return plan_ratings(selection, tokenizer, config)  # type: ignore[return-value]
    train_lengths = measure_examples(selection.train, tokenizer)
    heldout_lengths = measure_examples(selection.heldout, tokenizer)
    auto = config.max_length is None
    max_length = auto_max_length(train_lengths + heldout_lengths) if auto else int(config.max_length)

    def keep(examples: list[TrainingExample], lengths: list[ExampleLength]) -> tuple[list[TrainingExample], int, int]:
        kept = [e for e, n in zip(examples, lengths, strict=True) if n.prompt < max_length]
        truncated = sum(1 for n in lengths if n.prompt < max_length < n.longest)
        return kept, len(examples) - len(kept), truncated

    train, too_long_train, truncated_train = keep(selection.train, train_lengths)
    heldout, too_long_heldout, truncated_heldout = keep(selection.heldout, heldout_lengths)
    report = selection.report
    if not train:
        shortest = min(n.prompt for n in train_lengths)
        raise PairSelectionError(
            f"--max-length {max_length} is shorter than every training prompt (the shortest is {shortest} tokens), "
            f"so none of the {len(selection.train)} training {report.unit}(s) fits: --max-length {shortest + 64} "
            "or more")
    report.max_length, report.max_length_auto = max_length, auto
    report.longest_tokens = max(n.longest for n in train_lengths + heldout_lengths)
    report.too_long_train, report.too_long_heldout = too_long_train, too_long_heldout
    report.too_long = too_long_train + too_long_heldout
    report.truncated = truncated_train + truncated_heldout
    report.train, report.heldout = len(train), len(heldout)
    _count_labels(report, train, heldout)
    if report.unit == "label":
        if not (report.good and report.bad):
            raise PairSelectionError(
                f"KTO needs both good and bad labels in training, and at --max-length {max_length} it keeps "
                f"{report.good} good, {report.bad} bad: raise --max-length")
        auto_d, auto_u = kto_weights(report.good, report.bad)
        report.weights_auto = config.desirable_weight is None and config.undesirable_weight is None
        report.desirable_weight = config.desirable_weight or (auto_d if report.weights_auto else 1.0)
        report.undesirable_weight = config.undesirable_weight or (auto_u if report.weights_auto else 1.0)
    report.steps = planned_steps(len(train), config)
    report.steps_per_epoch = None if config.max_steps else report.steps // int(config.epochs)
    return ExampleSelection(train, heldout, examples_hash(train + heldout), report)


def run_examples(store: Store, run: RunRecord, config: RunConfig) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """The run's recorded training and held-out examples, checked against its hash (``recorded_pairs.run_pairs``
    for examples)."""
    available, _source = available_examples(store, config)
    return recorded_examples(run, available)


def recorded_examples(run: RunRecord, available: Sequence[TrainingExample], unit: str = "example"
                      ) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """The run's training and held-out ``unit``s picked by id out of ``available``, checked against its hash."""
    by_id = {e.example_id: e for e in available}
    missing = [i for i in [*run.pair_ids, *run.heldout_ids] if i not in by_id]
    if missing:
        raise PairSelectionError(f"{len(missing)} {unit}(s) of run {run.id} are no longer available (e.g. "
                                 f"{missing[0]}); start a new run")
    train = [by_id[i] for i in run.pair_ids]
    heldout = [by_id[i] for i in run.heldout_ids]
    if run.dataset_hash and examples_hash(train + heldout) != run.dataset_hash:
        raise PairSelectionError(f"the {unit}s of run {run.id} changed since it was prepared; start a new run")
    if not train:
        raise PairSelectionError(f"run {run.id} has no training {unit}s")
    return train, heldout


def planned_report(run: RunRecord) -> ExampleReport:
    """The counts recorded when the run was prepared (max length, steps, KTO's weights)."""
    stored = (run.summary or {}).get("selection") or {}
    return ExampleReport.from_dict(stored) if stored.get("source") else ExampleReport(source="the run")
