"""The labelling queue, headless: prompts enqueued ahead, candidates generated in the background, judged later.

A queue is a store session (store/labelling_queue.py) with a system prompt; each queued prompt wants N
candidates (1–4). ``QueueGenerator`` fills waiting prompts one at a time through the judging core's own
path (``draft_round`` / ``generate_round``: the same context fitting, seeds and engine hold as the chat, so
it gains whatever that path gains, batched candidates included) and stores each prompt with its candidates
in one transaction. It stops between prompts and within one when asked (the prompt being generated is then
not stored and stays waiting); what is stored stays, and the next run goes on with the rest. The seeds of an
item depend on its id alone (with a base seed), so a resumed run draws what an uninterrupted one would.

``QueueJudge`` turns the studio's queue keys into the store's judgements: N = 1 thumbs, N = 2 A/B (tie,
both bad), N ≥ 3 a ranking. Queued prompts stand alone: a judgement adds no conversation turns.
No Textual, no typer: the CLI and the queue screen are clients.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from store.labelling_queue import EnqueueCounts, QueueCounts, QueueItemRecord
from store.records import CandidateRecord, Verdict
from store.studio_store import Store
from studio.evaluation.comparison import ComparisonError, load_prompts_file
from studio.evaluation.prompts import find_bank
from studio.inference.engine import ChatEngine, EngineError, SamplingSettings
from studio.judging import candidate_rows, draft_round, generate_round

QUEUE_SOURCE = "queue"  # the judgements' source: judged in the studio's queue mode


class QueueError(ValueError):
    """A prompt source the queue cannot take (a bad file, an unknown bank or dataset); says what to do."""


# --- where prompts come from: (text, origin) pairs ---


def prompts_from_file(path: Path | str) -> list[tuple[str, str]]:
    """A prompts file as ``--prompts`` reads it everywhere (.txt one per line, .jsonl, .json); QueueError names
    the file and the line of a problem."""
    try:
        texts = load_prompts_file(path)
    except ComparisonError as exc:
        raise QueueError(str(exc)) from None
    name = Path(path).name
    return [(text, f"{name} #{number}") for number, text in enumerate(texts, start=1)]


def prompts_from_bank(name: str) -> list[tuple[str, str]]:
    """A bundled prompt bank's prompts (``prefstudio queue add --bank NAME``)."""
    try:
        bank = find_bank(name)
    except ComparisonError as exc:
        raise QueueError(str(exc)) from None
    return [(text, f"bank:{bank.path.stem} #{number}") for number, text in enumerate(bank.prompts, start=1)]


def prompts_from_dataset(store: Store, name: str) -> list[tuple[str, str]]:
    """An imported dataset's prompts: a stance dataset's test prompts and items; a preference dataset's
    prompts (the last user message of a conversational pair, else the prompt text), each once."""
    try:
        dataset = store.get_dataset(name)
    except (LookupError, ValueError) as exc:
        raise QueueError(str(exc)) from None
    if dataset.kind == "stance":
        texts = [p.prompt for p in store.test_prompts(dataset)] + [i.prompt for i in store.stance_items(dataset)]
    else:
        by_messages = {pair["pair_id"]: pair["prompt_messages"] for pair in store.dataset_pair_messages(dataset)}
        texts = []
        for pair in store.dataset_pairs(dataset):
            messages = by_messages.get(pair.pair_id)
            users = [m["content"] for m in messages or [] if m.get("role") == "user"]
            texts.append(users[-1] if users else pair.prompt_text)
    unique = [t for t in dict.fromkeys(texts) if t.strip()]
    if not unique:
        raise QueueError(f"dataset '{dataset.name}' holds no prompts")
    return [(text, f"dataset:{dataset.name} #{number}") for number, text in enumerate(unique, start=1)]


def enqueue(store: Store, prompts: Sequence[tuple[str, str]], n_candidates: int, system_prompt: str,
            model_id: str | None = None) -> tuple[int, EnqueueCounts]:
    """Add prompts to the newest queue with this system prompt (a new queue when there is none); returns the
    queue's session id and what was added (a prompt already queued there is not added again)."""
    if not prompts:
        raise QueueError("no prompts to queue")
    queue_id = store.find_queue(system_prompt)
    if queue_id is None:
        queue_id = store.create_queue(system_prompt, model_id)
    return queue_id, store.enqueue(queue_id, prompts, n_candidates)


# --- progress ---


class RateMeter:
    """Items per minute over the last few minutes of this sitting (a break does not drag the rate down for
    ever, and a restart starts afresh)."""

    def __init__(self, window_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.started = clock()
        self._done: deque[float] = deque()

    def tick(self) -> None:
        self._done.append(self.clock())

    def per_minute(self) -> float | None:
        """None until the first item is done."""
        now = self.clock()
        while self._done and now - self._done[0] > self.window_s:
            self._done.popleft()
        if not self._done:
            return None
        span = max(now - max(self.started, now - self.window_s), 1e-6)
        return len(self._done) * 60.0 / span


def progress_line(counts: QueueCounts, generated_rate: float | None = None, judged_rate: float | None = None) -> str:
    """One line of progress: generated / left, judged / left, and the rates when known."""
    gen = f"generated {counts.generated}/{counts.total} ({counts.waiting} left)"
    if generated_rate is not None:
        gen += f", {generated_rate:.1f}/min"
    judged = f"judged {counts.judged}/{counts.total} ({counts.to_judge} left)"
    if judged_rate is not None:
        judged += f", {judged_rate:.1f}/min"
    return f"{gen} · {judged}"


# --- generating ---


@dataclass
class GenerationReport:
    """What one generator run did."""

    generated: int = 0
    cancelled: bool = False
    skipped: list[tuple[QueueItemRecord, str]] = field(default_factory=list)  # (item, why) e.g. too long


# on_progress(item just stored, its prompt id) after each committed item; on_item_start(item) before each.
ItemDone = Callable[[QueueItemRecord, int], None]


class QueueGenerator:
    """Fills waiting queue items with candidates, one committed transaction per item. Thread use: ``run``
    in one worker; ``cancel`` from any thread."""

    def __init__(self, store: Store, engine: ChatEngine, sampling: SamplingSettings,
                 base_seed: int | None = None, session_id: int | None = None) -> None:
        self.store = store
        self.engine = engine
        self.sampling = sampling
        self.base_seed = base_seed
        self.session_id = session_id  # one queue, or None for every queue in order
        self.rate = RateMeter()
        self._cancelled = False

    def cancel(self) -> None:
        """Stop at the next token; the item being generated stays waiting, the stored ones stay."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def run(self, should_stop: Callable[[], bool] | None = None, on_item_done: ItemDone | None = None,
            on_item_start: Callable[[QueueItemRecord], None] | None = None, limit: int | None = None) -> GenerationReport:
        """Generate waiting items in queue order until none is left, ``limit`` are done, or a stop."""
        report = GenerationReport()
        systems: dict[int, str] = {}
        skipped: set[int] = set()

        def stopping() -> bool:
            return self._cancelled or (should_stop is not None and should_stop())

        while not stopping() and (limit is None or report.generated < limit):
            # One at a time, read fresh: items queued meanwhile are picked up, and another generator's work
            # is not redone.
            waiting = [i for i in self.store.queue_items("waiting", self.session_id, limit=len(skipped) + 1)
                       if i.id not in skipped]
            if not waiting:
                break
            item = waiting[0]
            if on_item_start is not None:
                on_item_start(item)
            if item.session_id not in systems:
                systems[item.session_id] = self.store.get_session(item.session_id).system_prompt
            try:
                # The round number is the item id, so a base seed gives each item the same seeds however the
                # runs are split.
                round_ = draft_round(self.engine, systems[item.session_id], [], item.text, self.sampling,
                                     item.n_candidates, self.base_seed, number=item.id)
            except EngineError as exc:  # the prompt alone does not fit, or the template refuses it
                skipped.add(item.id)
                report.skipped.append((item, str(exc)))
                continue
            if generate_round(self.engine, round_, self.sampling, should_stop=stopping) is None:
                break
            stored = self.store.store_queue_candidates(item.id, candidate_rows(self.engine, round_))
            if stored is None:  # another generator stored it first
                continue
            report.generated += 1
            self.rate.tick()
            if on_item_done is not None:
                on_item_done(item, stored[0])
        report.cancelled = stopping()
        return report


# --- judging ---


@dataclass(frozen=True)
class QueueEntry:
    """A generated, unjudged item with its candidates, ready to judge."""

    item: QueueItemRecord
    candidates: list[CandidateRecord]

    @property
    def prompt_id(self) -> int:
        assert self.item.prompt_id is not None
        return self.item.prompt_id


def next_entries(store: Store, limit: int = 2, skip: Sequence[int] = ()) -> list[QueueEntry]:
    """The next unjudged items (queue order) with their candidates; ``skip`` leaves out item ids."""
    items = [i for i in store.queue_items("unjudged", limit=limit + len(skip)) if i.id not in set(skip)][:limit]
    return [QueueEntry(item, store.candidates(item.prompt_id)) for item in items if item.prompt_id is not None]


class QueueJudge:
    """The verdicts of the queue mode, each stored as one committed judgement (no conversation turns)."""

    def __init__(self, store: Store, source: str = QUEUE_SOURCE) -> None:
        self.store = store
        self.source = source

    def prefer(self, entry: QueueEntry, slot: int) -> int:
        """N = 2: candidate ``slot`` (0 = A) over the other."""
        ids = [c.id for c in entry.candidates]
        if len(ids) != 2:
            raise ValueError(f"A/B needs two candidates; this item has {len(ids)}")
        return self.store.record_judgement(entry.prompt_id, Verdict.A if slot == 0 else Verdict.B,
                                           chosen_candidate_id=ids[slot], rejected_candidate_id=ids[1 - slot],
                                           source=self.source, adapter=entry.candidates[0].adapter)

    def tie(self, entry: QueueEntry) -> int:
        return self.store.record_judgement(entry.prompt_id, Verdict.TIE, source=self.source,
                                           adapter=entry.candidates[0].adapter)

    def all_bad(self, entry: QueueEntry) -> int:
        """Every candidate bad: both_bad for two, a ranking's all_bad for three or more, thumbs down for one."""
        if len(entry.candidates) == 1:
            return self.label(entry, good=False)
        if len(entry.candidates) == 2:
            return self.store.record_judgement(entry.prompt_id, Verdict.BOTH_BAD, source=self.source,
                                               adapter=entry.candidates[0].adapter)
        return self.store.record_ranking(entry.prompt_id, [], all_bad=True, source=self.source,
                                         adapter=entry.candidates[0].adapter)

    def label(self, entry: QueueEntry, good: bool) -> int:
        """N = 1: the reply is good (+) or bad (-)."""
        candidate = entry.candidates[0]
        return self.store.record_label(candidate.id, good, source=self.source, adapter=candidate.adapter)

    def rate(self, entry: QueueEntry, slot: int, ratings: Mapping[str, int]) -> list[int]:
        """Attribute ratings (0–4) of candidate ``slot``, standalone (before or after the item's verdict)."""
        return self.store.record_ratings(entry.candidates[slot].id, dict(ratings), source=self.source)

    def rank(self, entry: QueueEntry, slots_best_first: Sequence[int]) -> int:
        """N ≥ 3 (or 2): the slots best first; slots left out share the last place."""
        ids = [entry.candidates[slot].id for slot in slots_best_first]
        return self.store.record_ranking(entry.prompt_id, ids, source=self.source,
                                         adapter=entry.candidates[0].adapter)
