"""The reward model at work in the chat, headless: each candidate scored as it finishes, the model's pick, best-of-N.

A ``CandidateScoring`` holds one reward run's scorer and one thread that scores with it. The generating thread
hands it each candidate as the candidate ends (``finished``) and goes straight on to the next token: scoring never
delays a candidate. The scoring thread scores it, tells the client (``on_scored``, from that thread) and stores
the score once the round's candidates are stored (``stored``; whichever of the two comes last writes it).

The model's pick is the highest-scored candidate once every candidate of a round of two or more is scored: a
suggestion, the user still decides. Whether they agreed is read later from the stored scores and the judgement
(``store/reward_scores.py``), so nothing is stored twice. Best-of-N: ``best_first`` waits (in the generating
worker, after the last candidate) for every score and puts the round's candidates in score order before they are
stored, so the best is A and keys, slots and the stored order agree.

A scorer that fails stops scoring for good (``failed`` says why; ``on_failed`` hears it once); the chat goes on
without it. No Textual here: the chat screen and any headless client use it alike.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from store.errors import StoreError
from studio.reward.scorer import RewardScorer
from trainers.prompt_format import ChatTurn

if TYPE_CHECKING:
    from store.records import RunRecord
    from store.studio_store import Store
    from studio.judging import Round

KEPT_ROUNDS = 8  # rounds remembered for late scores and writes (a regenerated round leaves its old one behind)


@dataclass(frozen=True)
class RoundScores:
    """A round's reward scores so far, by slot (None: not scored yet), and what they suggest."""

    round_number: int
    scores: tuple[float | None, ...]

    @property
    def complete(self) -> bool:
        return all(score is not None for score in self.scores)

    @property
    def pick(self) -> int | None:
        """The model's pick (the highest score; the first such slot on a tie) once every candidate of a round of
        two or more is scored; None before, and for a single candidate (nothing to choose between)."""
        if len(self.scores) < 2 or not self.complete:
            return None
        return max(range(len(self.scores)), key=lambda slot: (self.scores[slot], -slot))

    def best_first(self) -> list[int]:
        """The slots by score, best first (ties keep their order); unscored ones last, in their order."""
        return sorted(range(len(self.scores)), key=lambda slot: (self.scores[slot] is None,
                                                                 -(self.scores[slot] or 0.0), slot))


# on_scored(scores): a round's scores after one more candidate was scored; from the scoring thread.
ScoresChanged = Callable[[RoundScores], None]
# on_failed(message): the scorer failed (or its scores could not be stored); from the scoring thread, once each.
ScoringFailed = Callable[[str], None]


def round_conversation(system: str, history: Sequence[ChatTurn], user_text: str) -> list[ChatTurn]:
    """What the reward model reads before a reply: the system prompt, the conversation so far, the user's turn."""
    return [ChatTurn("system", system), *history, ChatTurn("user", user_text)]


class SerialScorer:
    """A ``RewardScorer`` shared by several threads, one call at a time (the chat's scoring thread and a
    comparison's worker); ``close`` belongs to the owner and does nothing here."""

    def __init__(self, scorer: RewardScorer, lock: threading.Lock) -> None:
        self._scorer = scorer
        self._lock = lock

    @property
    def run_id(self) -> int:
        return self._scorer.run_id

    def score(self, conversation: Sequence[ChatTurn], replies: Sequence[str]) -> list[float]:
        with self._lock:
            return self._scorer.score(conversation, replies)

    def prepare(self, conversation: Sequence[ChatTurn]) -> None:
        with self._lock:
            self._scorer.prepare(conversation)

    def close(self) -> None:
        """The owner (``CandidateScoring``) closes the scorer."""


@dataclass
class _RoundState:
    conversation: list[ChatTurn]
    scores: list[float | None]
    candidate_ids: list[int] | None = None
    written: set[int] = field(default_factory=set)
    settled: threading.Event = field(default_factory=threading.Event)  # every score in, or scoring failed


class CandidateScoring:
    """One reward run scoring the chat's candidates on its own thread. Methods are safe from any thread."""

    def __init__(self, scorer: RewardScorer, store: Store, *, on_scored: ScoresChanged | None = None,
                 on_failed: ScoringFailed | None = None) -> None:
        self._scorer = scorer
        self._score_lock = threading.Lock()
        self.store = store
        self.on_scored = on_scored
        self.on_failed = on_failed
        self.failed: str | None = None
        self._lock = threading.Lock()
        self._rounds: dict[int, _RoundState] = {}
        # (round, slot, reply) to score, (round, None, "") to prepare the round's prompt, None to stop
        self._queue: queue.SimpleQueue[tuple[int, int | None, str] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"reward-run-{scorer.run_id}", daemon=True)
        self._thread.start()

    @property
    def run_id(self) -> int:
        return self._scorer.run_id

    @property
    def scorer(self) -> SerialScorer:
        """The same reward model for other work (a comparison's mean reward), one call at a time with the chat's."""
        return SerialScorer(self._scorer, self._score_lock)

    # --- a round ---

    def watch(self, round_: Round, system: str) -> RoundScores:
        """Expect ``round_``'s candidates (before it generates): its conversation is what the model reads. The
        scoring thread computes that conversation at once, while the candidates generate, so each candidate then
        costs only its own tokens."""
        state = _RoundState(round_conversation(system, round_.history, round_.user_text),
                            [None] * len(round_.seeds))
        with self._lock:
            self._rounds[round_.number] = state
            for number in sorted(self._rounds)[:-KEPT_ROUNDS]:
                self._rounds.pop(number).settled.set()
            if self.failed is not None:
                state.settled.set()
            else:
                self._queue.put((round_.number, None, ""))
            return RoundScores(round_.number, tuple(state.scores))

    def finished(self, round_number: int, slot: int, reply: str) -> None:
        """Candidate ``slot`` of the round ended with ``reply``: queued for scoring, returns at once (the
        generating thread calls it between two tokens)."""
        if self.failed is None:
            self._queue.put((round_number, slot, reply))

    def scores(self, round_number: int) -> RoundScores | None:
        """The round's scores so far (in its stored order once ``best_first`` reordered it), or None."""
        with self._lock:
            state = self._rounds.get(round_number)
            return RoundScores(round_number, tuple(state.scores)) if state is not None else None

    def best_first(self, round_: Round, timeout_s: float) -> list[int] | None:
        """Best-of-N: wait up to ``timeout_s`` for every score of the generated round, then put its candidates
        in score order (``Round.reorder``; before they are stored). The order applied (old slots, best first),
        or None when the scores did not all come (scoring failed or too slow): the round keeps its order."""
        with self._lock:
            state = self._rounds.get(round_.number)
        if state is None or not state.settled.wait(timeout_s):
            return None
        with self._lock:
            if any(score is None for score in state.scores):
                return None
            order = RoundScores(round_.number, tuple(state.scores)).best_first()
            round_.reorder(order)
            state.scores = [state.scores[slot] for slot in order]
            return order

    def stored(self, round_: Round) -> None:
        """The round's candidates are stored: the scores known so far are written now (on the caller's thread,
        which may wait on a busy database), the rest as they come."""
        with self._lock:
            state = self._rounds.get(round_.number)
            if state is None:
                return
            state.candidate_ids = list(round_.candidate_ids)
        self._write(round_.number, state)

    def close(self) -> None:
        """Stop the scoring thread (after the score in progress) and close the scorer."""
        self._queue.put(None)
        self._thread.join(timeout=30)
        with self._score_lock:
            self._scorer.close()

    # --- the scoring thread ---

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            number, slot, reply = item
            with self._lock:
                state = self._rounds.get(number)
            if state is None or self.failed is not None:
                continue  # a round left behind, or scoring is off: nothing to do
            try:
                with self._score_lock:
                    if slot is None:
                        self._scorer.prepare(state.conversation)
                        continue
                    score = float(self._scorer.score(state.conversation, [reply])[0])
            except Exception as exc:  # noqa: BLE001 - any scorer failure turns scoring off with a notice
                self._fail(f"reward run {self.run_id} stopped scoring: {type(exc).__name__}: {exc}")
                continue
            with self._lock:
                state.scores[slot] = score
                if all(value is not None for value in state.scores):
                    state.settled.set()
                snapshot = RoundScores(number, tuple(state.scores))
            if self.on_scored is not None:
                self.on_scored(snapshot)
            self._write(number, state)

    def _write(self, number: int, state: _RoundState) -> None:
        """Store every score of the round that has a candidate id and is not stored yet."""
        with self._lock:
            if state.candidate_ids is None:
                return
            due = [(slot, state.candidate_ids[slot], score) for slot, score in enumerate(state.scores)
                   if score is not None and slot not in state.written]
            state.written.update(slot for slot, _, _ in due)
        if not due:
            return
        try:
            self.store.record_reward_scores(self.run_id, {candidate_id: score for _, candidate_id, score in due})
        except (StoreError, ValueError) as exc:
            with self._lock:
                state.written.difference_update(slot for slot, _, _ in due)
            if self.on_failed is not None:
                self.on_failed(f"reward scores of round {number} not stored: {exc}")

    def _fail(self, message: str) -> None:
        with self._lock:
            if self.failed is not None:
                return
            self.failed = message
            for state in self._rounds.values():
                state.settled.set()
        if self.on_failed is not None:
            self.on_failed(message)


def finished_reward_runs(store: Store) -> list[RunRecord]:
    """The reward runs a chat can score with (finished ones), newest first."""
    return [run for run in store.list_runs() if run.status == "done" and (run.config or {}).get("method") == "reward"]
