"""The judging workflow, headless: one prompt → N candidates → what the user says about them → stored.

A ``JudgingSession`` keeps one conversation (a store session and its turns). Each prompt becomes a
``Round``: the conversation fitted to the context (oldest turns dropped when it is full), one seed per
candidate, the candidates streamed under one hold of the engine (so no adapter switch lands between
candidate A and B), then stored — the prompt and its candidates in one transaction. A ``Judgement`` (the
user's verdict on the round) is stored with the turns it adds in one transaction, and the reply it keeps
continues the conversation.

The chat screen and ``prefstudio generate`` are clients: they decide *when* (keys, workers, retries on a
busy database) and show the results; this module decides *what* is generated and stored. No Textual, no
typer. Every verdict kind is a ``Judgement`` constructor: a preference of two (a / b), tie, both bad, an edit,
a ranking of several (or all bad), a thumbs up or down on one; attribute ratings go with ``rate``. An edit is
also stored as a demonstration of the prompt in its context.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

from store.records import Verdict
from store.studio_store import Store
from studio.inference.batched_generation import BatchUnavailable, FinishedCallback, generate_batch
from studio.inference.engine import (
    ChatEngine,
    EngineError,
    FittedPrompt,
    Generation,
    SamplingSettings,
    new_seed,
)
from trainers.prompt_format import ChatTurn
from trainers.steer_format import steered_prompt

# on_token(slot, text so far): called from the generating thread for every streamed piece.
CandidateStream = Callable[[int, str], None]


def candidate_seeds(n: int, base_seed: int | None, round_number: int) -> list[int]:
    """Fresh random seeds, or, with a base seed, the reproducible sequence base + (round − 1)·n + slot."""
    if base_seed is None:
        return [new_seed() for _ in range(n)]
    return [base_seed + (round_number - 1) * n + slot for slot in range(n)]


@dataclass
class Round:
    """One prompt being answered: what the model saw, with which seeds, and what came of it."""

    number: int
    user_text: str
    history: list[ChatTurn]
    fitted: FittedPrompt
    seeds: list[int]
    generations: list[Generation] = field(default_factory=list)
    prompt_id: int | None = None
    candidate_ids: list[int] = field(default_factory=list)
    judged: bool = False
    judgement_ids: list[int] = field(default_factory=list)  # every judgement recorded on it, in order
    # A judgement stored whose demonstration is not yet (a busy database between the two writes): the
    # retry writes only what is missing.
    half_recorded: tuple[Judgement, int] | None = None
    # SteerLM: the attribute values the prompt carries (trainers/steer_format's rule), stored in each
    # candidate's sampling record as "steer"; None when the round is not steered.
    steer: dict[str, int] | None = None

    @property
    def judgement_id(self) -> int | None:
        """The latest judgement recorded on this round (ratings saved now go with it), or None."""
        return self.judgement_ids[-1] if self.judgement_ids else None

    @property
    def stored(self) -> bool:
        return self.prompt_id is not None

    def reply(self, slot: int) -> str:
        return self.generations[slot].text

    def reorder(self, order: Sequence[int]) -> None:
        """Put the generated candidates in ``order`` (old slots, new first): best-of-N shows the reward model's
        best as A. Before the candidates are stored, so slots, stored order and keys agree."""
        if self.stored:
            raise ValueError("the round's candidates are stored already: their order is fixed")
        if sorted(order) != list(range(len(self.generations))):
            raise ValueError(f"{list(order)} is not an order of the round's {len(self.generations)} candidates")
        self.generations = [self.generations[slot] for slot in order]
        self.seeds = [self.seeds[slot] for slot in order]


def draft_round(engine: ChatEngine, system: str, history: list[ChatTurn], user_text: str,
                sampling: SamplingSettings, n_candidates: int, base_seed: int | None, number: int = 1,
                steer: Mapping[str, int] | None = None) -> Round:
    """A round for ``user_text`` after ``history``: the conversation fitted to the context (the oldest
    turns dropped when it is full) and one seed per candidate. EngineError when the prompt alone does
    not fit or the chat template refuses it. Stores nothing (``prefstudio generate`` uses it as is).
    ``steer`` (a SteerLM run's attribute values) is written where the reply starts, by the one rule."""
    # The attribute string is a few dozen tokens at most: room is kept for it when fitting.
    room = 48 if steer else 0
    fitted = engine.fit_prompt(system, [*history, ChatTurn("user", user_text)], sampling.max_tokens + room)
    if steer:
        text = steered_prompt(fitted.text, steer, engine.prompt_format.name)
        fitted = replace(fitted, text=text, n_tokens=len(engine.tokenize(text)))
    return Round(number, user_text, list(history), fitted, candidate_seeds(n_candidates, base_seed, number),
                 steer=dict(steer) if steer else None)


def generate_round(
    engine: ChatEngine,
    round_: Round,
    sampling: SamplingSettings,
    on_token: CandidateStream | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_finished: FinishedCallback | None = None,
) -> list[Generation] | None:
    """Stream every candidate of the round, holding the engine the whole time: an adapter switch asked
    for meanwhile is refused (EngineBusy), never applied between two candidates. None when stopped.
    ``on_finished(slot, text)`` hears of each candidate as it ends, from the generating thread (a reward model
    scores it meanwhile: it must return at once).

    The candidates are decoded side by side in one batch (``inference/batched_generation.py``). Only when
    the context cannot hold them all at once (the prompt plus N × max tokens past n_ctx, more candidates
    than the context's sequences, or a recurrent model) are they generated one after another instead."""
    shown: list[list[str]] = [[] for _ in round_.seeds]

    def stream(slot: int, piece: str) -> None:
        shown[slot].append(piece)
        if on_token is not None:
            on_token(slot, "".join(shown[slot]))

    with engine.session(f"generating candidates for prompt {round_.number}"):
        try:
            results = generate_batch(engine, round_.fitted.text, sampling, round_.seeds, on_piece=stream,
                                     should_stop=should_stop, on_finished=on_finished)
        except BatchUnavailable:
            results = []
            for slot, seed in enumerate(round_.seeds):
                gen = engine.generate(round_.fitted.text, sampling, seed,
                                      on_token=lambda piece, slot=slot: stream(slot, piece), should_stop=should_stop)
                results.append(gen)
                if gen.cancelled or (should_stop is not None and should_stop()):
                    return None
                if on_finished is not None:
                    on_finished(slot, gen.text)
    if any(gen.cancelled for gen in results) or (should_stop is not None and should_stop()):
        return None
    round_.generations = results
    return results


def candidate_rows(engine: ChatEngine, round_: Round) -> list[dict[str, object]]:
    """A generated round's candidates as the store takes them (``add_prompt_with_candidates``; the labelling
    queue's ``store_queue_candidates``): text, the exact rendered prompt, model, sampling, seed and timings."""
    return [
        {
            "text": gen.text, "rendered_prompt": round_.fitted.text, "model_id": engine.identity.model_id,
            "model_sha256": engine.identity.sha256,
            # A candidate decoded beside others drifts from what its seed gives alone (llama.cpp computes a
            # batch row slightly differently): "batched_with" in its sampling record says how it was made.
            "sampling": {**gen.sampling.to_dict(), **gen.extra, **({"steer": round_.steer} if round_.steer else {})},
            "seed": gen.seed,
            "adapter": gen.adapter, "finish_reason": gen.finish_reason, "n_tokens": gen.n_tokens,
            "duration_s": round(gen.duration_s, 3),
        }
        for gen in round_.generations
    ]


@dataclass(frozen=True)
class Judgement:
    """What the user says about a round's candidates, by slot (0 = A). Build one with the constructors."""

    verdict: Verdict
    chosen: int | None = None
    rejected: int | None = None
    edited_text: str | None = None  # the user's own reply (in the model's completion whitespace)
    continues: int | None = None  # the slot whose reply continues the conversation (tie, thumbs)
    order: tuple[int, ...] = ()  # a ranking's slots, best first; slots left out share the last place

    @classmethod
    def prefer(cls, chosen: int, rejected: int) -> Judgement:
        """Candidate ``chosen`` is better than ``rejected``; the chosen reply continues the conversation."""
        if chosen == rejected:
            raise ValueError("the chosen and the rejected candidate must differ")
        # The store names a two-way preference by the winner's letter; more candidates come with ranking.
        return cls(Verdict.A if chosen == 0 else Verdict.B, chosen=chosen, rejected=rejected)

    @classmethod
    def tie(cls, continue_with: int = 0) -> Judgement:
        """No pair is made; the conversation goes on with candidate ``continue_with``'s reply."""
        return cls(Verdict.TIE, continues=continue_with)

    @classmethod
    def both_bad(cls) -> Judgement:
        """Neither is worth keeping: no pair, and the conversation does not move on."""
        return cls(Verdict.BOTH_BAD)

    @classmethod
    def edited(cls, text: str, base: int, rejected: int | None) -> Judgement:
        """The user wrote the better reply (starting from candidate ``base``); it becomes the chosen side."""
        return cls(Verdict.EDITED, chosen=base, rejected=rejected, edited_text=text)

    @classmethod
    def ranking(cls, order: Sequence[int]) -> Judgement:
        """Candidates best first (``order`` by slot); those left out share the last place (a partial
        ranking). The best one continues the conversation."""
        order = tuple(order)
        if not order:
            raise ValueError("a ranking needs at least the best candidate (all bad is its own verdict)")
        if len(set(order)) != len(order):
            raise ValueError(f"a ranking names each candidate once, got slots {list(order)}")
        return cls(Verdict.RANKED, chosen=order[0], order=order)

    @classmethod
    def all_bad(cls) -> Judgement:
        """Every candidate of a ranking round is bad: no pair, and the conversation does not move on."""
        return cls(Verdict.ALL_BAD)

    @classmethod
    def label(cls, slot: int, good: bool) -> Judgement:
        """A thumbs up (``good``) or down on one candidate; its reply continues the conversation either way,
        as in a plain chat (an edit is the way to replace it)."""
        if good:
            return cls(Verdict.GOOD, chosen=slot, continues=slot)
        return cls(Verdict.BAD, rejected=slot, continues=slot)

    def slots(self) -> list[int]:
        """Every candidate slot this judgement names."""
        return sorted({slot for slot in (self.chosen, self.rejected, self.continues, *self.order)
                       if slot is not None})

    def continuing_reply(self, round_: Round) -> str | None:
        """The reply that continues the conversation after this judgement, or None (both / all bad)."""
        if self.verdict == Verdict.EDITED:
            return self.edited_text
        if self.verdict in (Verdict.A, Verdict.B, Verdict.RANKED):
            return round_.reply(self.chosen)
        if self.verdict in (Verdict.TIE, Verdict.GOOD, Verdict.BAD):
            return round_.reply(self.continues or 0)
        return None


class JudgingSession:
    """One conversation being judged. Thread use: ``generate`` and the store calls may run in a worker;
    everything else on the caller's thread. The engine may be attached after the session starts (the
    model loads while the screen is already up)."""

    def __init__(
        self,
        store: Store,
        system_prompt: str,
        model_id: str,
        *,
        sampling: SamplingSettings,
        n_candidates: int = 2,
        base_seed: int | None = None,
        source: str = "tui",
        engine: ChatEngine | None = None,
    ) -> None:
        if n_candidates < 1:
            raise ValueError("a round needs at least one candidate")
        self.store = store
        self.model_id = model_id
        self.sampling = sampling
        self.n_candidates = n_candidates
        self.base_seed = base_seed
        self.source = source
        self.engine = engine
        self.steer: dict[str, int] | None = None  # SteerLM sliders: the values every new round carries
        self.turns: list[ChatTurn] = []
        self.current: Round | None = None
        self._rounds = 0
        self._turns_lock = threading.Lock()  # a judgement saved in a worker continues the conversation
        self.session_id = store.create_session(system_prompt, model_id=model_id)

    # --- the session ---

    @property
    def system_prompt(self) -> str:
        return self.store.get_session(self.session_id).system_prompt

    def set_system_prompt(self, text: str) -> None:
        self.store.update_system_prompt(self.session_id, text)

    def new_session(self) -> int:
        """A fresh conversation with the same system prompt and model; earlier rounds stay stored."""
        system = self.system_prompt
        with self._turns_lock:
            self.session_id = self.store.create_session(system, model_id=self.model_id)
            self.turns = []
            self.current = None
        return self.session_id

    def pair_count(self) -> int:
        return self.store.count_pairs(session_id=self.session_id)

    def label_count(self) -> int:
        """Thumbs up or down given in this session (one candidate's verdicts: labels, not pairs)."""
        return sum(j.verdict in (Verdict.GOOD, Verdict.BAD) for j in self.store.judgements(session_id=self.session_id))

    # --- a round: fit, generate, store ---

    def _engine(self) -> ChatEngine:
        if self.engine is None:
            raise EngineError("the model is not loaded yet")
        return self.engine

    def prepare(self, user_text: str) -> Round:
        """The next round for ``user_text``: the conversation fitted to the context and the seeds.

        EngineError when even the prompt alone does not fit, or the chat template refuses it; nothing
        changes then. The round becomes ``current`` (a regenerated round replaces the one before)."""
        self._rounds += 1
        try:
            round_ = draft_round(self._engine(), self.system_prompt, self.turns, user_text, self.sampling,
                                 self.n_candidates, self.base_seed, self._rounds, steer=self.steer)
        except EngineError:
            self._rounds -= 1
            raise
        self.current = round_
        return round_

    def regenerate(self, round_: Round) -> Round:
        """The same prompt again with new seeds (the old round's candidates stay stored, unjudged)."""
        return self.prepare(round_.user_text)

    def generate(
        self,
        round_: Round,
        on_token: CandidateStream | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_finished: FinishedCallback | None = None,
    ) -> list[Generation] | None:
        """Stream every candidate of the round under one hold of the engine (``generate_round``)."""
        return generate_round(self._engine(), round_, self.sampling, on_token, should_stop, on_finished)

    def store_candidates(self, round_: Round) -> None:
        """The prompt (with the conversation before it) and its candidates, in one transaction."""
        prompt_id, ids = self.store.add_prompt_with_candidates(
            self.session_id,
            round_.user_text,
            [{"role": t.role, "content": t.content} for t in round_.history],
            candidate_rows(self._engine(), round_),
        )
        round_.prompt_id, round_.candidate_ids = prompt_id, ids

    # --- judging ---

    def edited(self, round_: Round, text: str, base: int) -> Judgement:
        """The user's own reply, put in the model's completion whitespace (as candidates are stored); the
        first other candidate is the rejected side."""
        others = [slot for slot in range(len(round_.candidate_ids)) if slot != base]
        return Judgement.edited(self._engine().prompt_format.as_completion(text), base,
                                others[0] if others else None)

    def record(self, round_: Round, judgement: Judgement, wait_at_most_s: float | None = None) -> int:
        """Store the judgement and, when a reply continues the conversation, the user's turn and that
        reply, in one transaction (a kill never keeps one without the other); then continue with it.
        An edit is then stored as a demonstration too (a second transaction: a kill between the two keeps the
        edited judgement, which yields the edit for training by itself).

        ``wait_at_most_s`` bounds how long a busy database is waited for (StoreBusyError after it; the
        round is unchanged and what was not stored is written by the same call retried: never twice). Safe to
        call from a worker.
        """
        if not round_.stored:
            raise ValueError("the round's candidates are not stored yet")
        foreign = [slot for slot in judgement.slots() if not 0 <= slot < len(round_.candidate_ids)]
        if foreign:
            raise ValueError(f"candidate slot(s) {foreign} are not in this round of {len(round_.candidate_ids)}")
        reply = judgement.continuing_reply(round_)
        turns = (("user", round_.user_text), ("assistant", reply.strip())) if reply is not None else ()
        waiting = self.store.waiting_at_most(wait_at_most_s) if wait_at_most_s is not None else nullcontext()
        with waiting:
            if round_.half_recorded is not None and round_.half_recorded[0] == judgement:
                judgement_id = round_.half_recorded[1]
            else:
                judgement_id = self._write_judgement(round_, judgement, turns)
                round_.half_recorded = (judgement, judgement_id)
            if judgement.verdict == Verdict.EDITED:
                self.store.add_demonstration(round_.prompt_id, judgement.edited_text or "",
                                             based_on_candidate_id=round_.candidate_ids[judgement.chosen or 0],
                                             source=self.source)
            round_.half_recorded = None
        round_.judged = True
        round_.judgement_ids.append(judgement_id)
        with self._turns_lock:
            # A round of an earlier conversation (a new session started while it waited) continues nothing.
            if reply is not None and self.current is round_:
                self.turns += [ChatTurn("user", round_.user_text), ChatTurn("assistant", reply.strip())]
                self.current = None
        return judgement_id

    def _write_judgement(self, round_: Round, judgement: Judgement, turns: tuple[tuple[str, str], ...]) -> int:
        """The one transaction of a judgement and its turns, through the store method for its kind."""
        ids = round_.candidate_ids
        adapter = round_.generations[0].adapter if round_.generations else None
        if judgement.verdict in (Verdict.RANKED, Verdict.ALL_BAD):
            return self.store.record_ranking(round_.prompt_id, [ids[slot] for slot in judgement.order],
                                             all_bad=judgement.verdict == Verdict.ALL_BAD, source=self.source,
                                             adapter=adapter, turns=turns)
        if judgement.verdict in (Verdict.GOOD, Verdict.BAD):
            return self.store.record_label(ids[judgement.continues or 0], judgement.verdict == Verdict.GOOD,
                                           source=self.source, adapter=adapter, turns=turns)
        return self.store.record_judgement(
            round_.prompt_id,
            judgement.verdict,
            chosen_candidate_id=ids[judgement.chosen] if judgement.chosen is not None else None,
            rejected_candidate_id=ids[judgement.rejected] if judgement.rejected is not None else None,
            edited_text=judgement.edited_text,
            source=self.source,
            adapter=adapter,
            turns=turns,
        )

    def rate(self, round_: Round, slot: int, ratings: Mapping[str, int], wait_at_most_s: float | None = None
             ) -> list[int]:
        """Attribute ratings (0–4 each) of one candidate, with the round's latest judgement when one is
        recorded, else standalone; one transaction. StoreBusyError after ``wait_at_most_s``: nothing stored,
        the same call can be retried. ValueError for a value or name the store refuses."""
        if not round_.stored:
            raise ValueError("the round's candidates are not stored yet")
        if not 0 <= slot < len(round_.candidate_ids):
            raise ValueError(f"candidate slot {slot} is not in this round of {len(round_.candidate_ids)}")
        waiting = self.store.waiting_at_most(wait_at_most_s) if wait_at_most_s is not None else nullcontext()
        with waiting:
            return self.store.record_ratings(round_.candidate_ids[slot], dict(ratings),
                                             judgement_id=round_.judgement_id, source=self.source)
