"""The chat's safety checks, headless: every finished candidate read by every configured checker, and what a
flagged candidate suggests as a verdict.

The chat screen runs ``check_candidates`` in a worker after a round's candidates are generated and stored, so a
checker (a guard model can take seconds) never delays the candidates or the judging keys; ``prefstudio generate``
can call it as it is. Each verdict goes through ``check_with_cache`` with the candidate's id: stored with the
candidate, and never computed twice for the same text.

Auto-reject (``safety_auto_reject`` in the config, or the palette's toggle) never records anything by itself: the
user's key does. ``rejection_suggestion`` is the verdict a press of the accept key records once every candidate
is checked:

- two candidates, exactly one flagged: the other one over the flagged one (the pair 1 / 2 would record by picking
  the safe one);
- every candidate flagged: both bad (two) or all bad (three or four): no pair, each one a rejected reply;
- one candidate, flagged: a thumbs down (its reply still continues the conversation, as thumbs do: ``e`` replaces
  it);
- otherwise (nothing flagged, or some of three or four): no suggestion. In a ranking the user ranks the safe ones
  and the flagged ones left out share the last place by themselves.

Any key the user presses instead (picking the flagged one, a tie) is recorded as said: a checker can be wrong.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from studio.judging import Judgement
from studio.safety.cached_checks import CheckResult, check_with_cache
from studio.safety.checker import SafetyChecker, SafetyCheckerError, SafetyVerdict
from studio.safety.registry import LoadedCheckers
from trainers.prompt_format import ChatTurn

if TYPE_CHECKING:
    from store.studio_store import Store

# on_checked(slot, safety): called from the checking thread as each candidate's checks finish.
CandidateChecked = Callable[[int, "CandidateSafety"], None]


@dataclass(frozen=True)
class CandidateSafety:
    """What the configured checkers said about one candidate (by slot: 0 = A)."""

    slot: int
    verdicts: tuple[SafetyVerdict, ...] = ()
    problems: tuple[str, ...] = ()  # "guard:x: …" for each checker that could not read this reply

    @property
    def flagged(self) -> bool:
        return any(not verdict.safe for verdict in self.verdicts)

    @property
    def flagged_by(self) -> tuple[SafetyVerdict, ...]:
        return tuple(verdict for verdict in self.verdicts if not verdict.safe)

    def badge(self) -> str:
        """"safe", or "flagged: offensive, S10" (the flagging checkers' categories, or their names when they
        give none, each once); "not checked" when every checker failed on it."""
        if not self.verdicts:
            return "not checked" if self.problems else ""
        flagged = self.flagged_by
        if not flagged:
            return "safe" if not self.problems else "safe (some checks failed)"
        labels: list[str] = []
        for verdict in flagged:
            for label in verdict.categories or (verdict.checker,):
                if label not in labels:
                    labels.append(label)
        return "flagged: " + ", ".join(labels)


def round_conversation(history: Sequence[ChatTurn], user_text: str) -> list[ChatTurn]:
    """What a checker reads before a candidate: the conversation so far and the user's prompt (no system text:
    a guard model judges the exchange, not the assistant's instructions)."""
    return [*history, ChatTurn("user", user_text)]


def check_candidate(store: Store | None, checkers: Sequence[SafetyChecker], conversation: Sequence[ChatTurn],
                    reply: str, slot: int, candidate_id: int | None = None) -> CandidateSafety:
    """Every checker on one reply, each through the store's cache (without a store, as ``prefstudio generate``
    which stores nothing: checked afresh); a checker that fails is named in ``problems`` and the others still
    read it."""
    verdicts: list[SafetyVerdict] = []
    problems: list[str] = []
    for checker in checkers:
        try:
            results = (check_with_cache(store, [checker], conversation, reply, candidate_id=candidate_id)
                       if store is not None else [_check_now(checker, conversation, reply)])
        except Exception as exc:  # noqa: BLE001 - a checker is a plug-in: even its bug is named, the chat goes on
            problems.append(f"{checker.name}: {type(exc).__name__}: {exc}")
            continue
        for result in results:
            if result.verdict is not None:
                verdicts.append(result.verdict)
            else:
                problems.append(f"{result.checker}: {result.error}")
    return CandidateSafety(slot, tuple(verdicts), tuple(problems))


def _check_now(checker: SafetyChecker, conversation: Sequence[ChatTurn], reply: str) -> CheckResult:
    try:
        return CheckResult(checker.name, checker.check(conversation, reply))
    except SafetyCheckerError as exc:
        return CheckResult(checker.name, None, error=str(exc))


def check_candidates(
    store: Store | None,
    checkers: Sequence[SafetyChecker],
    conversation: Sequence[ChatTurn],
    replies: Sequence[str],
    candidate_ids: Sequence[int | None] = (),
    *,
    on_checked: CandidateChecked | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[CandidateSafety]:
    """Check each reply in slot order (``on_checked`` as each one is done, so A's badge shows before B is read).
    ``candidate_ids`` (when the candidates are stored) link every verdict to its candidate. Stops between
    candidates when ``should_stop()`` turns true, returning those checked."""
    results: list[CandidateSafety] = []
    for slot, reply in enumerate(replies):
        if should_stop is not None and should_stop():
            break
        candidate_id = candidate_ids[slot] if slot < len(candidate_ids) else None
        safety = check_candidate(store, checkers, conversation, reply, slot, candidate_id)
        results.append(safety)
        if on_checked is not None:
            on_checked(slot, safety)
    return results


@runtime_checkable
class MeasuredChecker(Protocol):
    """A checker that counts the tokens it read and the time it took (a guard model: GuardChecker)."""

    tokens_processed: int
    seconds_checking: float

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class CheckerSpeed:
    """How fast one measured checker read the replies of one round: the tokens it read over the time it took."""

    checker: str
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def describe(self) -> str:
        return f"{self.checker}: {self.tokens_per_s:,.0f} tok/s"


SpeedMark = dict[str, tuple[int, float]]


def speed_mark(checkers: Sequence[SafetyChecker]) -> SpeedMark:
    """Each measured checker's running totals now, to compare with after a round (``speeds_since``)."""
    return {c.name: (c.tokens_processed, c.seconds_checking) for c in checkers if isinstance(c, MeasuredChecker)}


def speeds_since(checkers: Sequence[SafetyChecker], mark: SpeedMark) -> list[CheckerSpeed]:
    """The speed of each measured checker that read something since ``mark`` (a reply found in the cache reads
    nothing, so a round checked from the store shows no speed). Checks of two rounds that overlap share one
    engine, so each round's figure is still that guard's real rate."""
    speeds = []
    for name, (tokens, seconds) in speed_mark(checkers).items():
        tokens_before, seconds_before = mark.get(name, (0, 0.0))
        if seconds > seconds_before and tokens > tokens_before:
            speeds.append(CheckerSpeed(name, tokens - tokens_before, seconds - seconds_before))
    return speeds


def rejection_suggestion(safeties: Sequence[CandidateSafety], n_candidates: int) -> Judgement | None:
    """The verdict auto-reject suggests for a round (see the module's docstring), or None. Only once every
    candidate is checked: a verdict half the checks stand behind is no suggestion."""
    if len(safeties) != n_candidates or n_candidates < 1 or any(not s.verdicts for s in safeties):
        return None
    flagged = [s.slot for s in safeties if s.flagged]
    if not flagged:
        return None
    if n_candidates == 1:
        return Judgement.label(0, good=False)
    if len(flagged) == n_candidates:
        return Judgement.both_bad() if n_candidates == 2 else Judgement.all_bad()
    if n_candidates == 2:
        return Judgement.prefer(chosen=1 - flagged[0], rejected=flagged[0])
    return None


class ChatSafety:
    """The chat's checkers, loaded once on first use in a worker (a guard model loads for seconds), and the
    auto-reject option. Thread-safe: checks of two rounds may overlap."""

    def __init__(self, load: Callable[[], LoadedCheckers], configured: bool, auto_reject: bool = False) -> None:
        self._load = load  # the checkers that loaded, and a message per checker that did not
        self.configured = configured
        self.auto_reject = auto_reject
        self._lock = threading.Lock()
        self._checkers: list[SafetyChecker] | None = None

    def checkers(self) -> tuple[list[SafetyChecker], list[str]]:
        """The loaded checkers, and the load failures when this call is the one that loaded them (each failure
        is told once; the chat goes on with the checkers that did load)."""
        with self._lock:
            if self._checkers is not None:
                return self._checkers, []
            loaded = self._load()
            self._checkers = list(loaded.checkers)
            return self._checkers, list(loaded.problems)
