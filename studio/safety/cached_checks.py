"""Checking a reply with several checkers through the store: a checker never reads the same text twice.

The result of each checker is stored under its name, version and the text's hash (``store/safety_checks.py``)
and linked to the candidate when there is one. A checker that fails on a text (a guard model that did not
answer as one) gives an error for that checker only; nothing is stored for it, and the others still answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from store.safety_checks import StoredSafetyCheck
from store.studio_store import Store
from studio.safety.checker import SafetyChecker, SafetyCheckerError, SafetyVerdict, checked_text_hash
from trainers.prompt_format import ChatTurn


@dataclass(frozen=True)
class CheckResult:
    """One checker's answer on one reply: its verdict, or why it has none."""

    checker: str
    verdict: SafetyVerdict | None  # None: the checker failed on this text (``error`` says why)
    error: str | None = None
    cached: bool = False  # read from the store, not computed now
    seconds: float = 0.0  # the check's own time (0 when cached)

    @property
    def flagged(self) -> bool:
        return self.verdict is not None and not self.verdict.safe


def stored_verdict(check: StoredSafetyCheck) -> SafetyVerdict:
    return SafetyVerdict(check.checker, check.checker_version, check.safe, check.categories, check.score)


_keys_lock = threading.Lock()
_key_locks: dict[tuple[str, str, str], tuple[threading.Lock, list[int]]] = {}  # key → (its lock, [users])


@contextmanager
def _one_at_a_time(key: tuple[str, str, str]) -> Iterator[None]:
    # Two workers checking the same text (a comparison and the chat, say) wait for each other, so the second
    # finds the first one's stored verdict instead of running the checker again. A key's lock is dropped when
    # nobody holds or waits for it.
    with _keys_lock:
        lock, users = _key_locks.setdefault(key, (threading.Lock(), [0]))
        users[0] += 1
    try:
        with lock:
            yield
    finally:
        with _keys_lock:
            users[0] -= 1
            if not users[0]:
                del _key_locks[key]


def check_with_cache(store: Store, checkers: Sequence[SafetyChecker], conversation: Sequence[ChatTurn],
                     reply: str, candidate_id: int | None = None) -> list[CheckResult]:
    """Each checker's verdict on ``reply`` after ``conversation``: stored ones read back, the rest computed
    and stored (linked to ``candidate_id`` when given)."""
    text_hash = checked_text_hash(conversation, reply)
    results = []
    for checker in checkers:
        key = (checker.name, checker.version, text_hash)
        with _one_at_a_time(key):
            stored = store.cached_verdict(*key)
            if stored is not None:
                if candidate_id is not None:
                    store.link_safety_check(candidate_id, stored.id)
                results.append(CheckResult(checker.name, stored_verdict(stored), cached=True))
                continue
            started = time.perf_counter()
            try:
                verdict = checker.check(conversation, reply)
            except SafetyCheckerError as exc:
                results.append(CheckResult(checker.name, None, error=str(exc)))
                continue
            seconds = time.perf_counter() - started
            store.record_safety(candidate_id, text_hash, verdict)
            results.append(CheckResult(checker.name, verdict, seconds=seconds))
    return results
