"""Many replies through the configured checkers: per checker (and per label: chosen / rejected, base / tuned) how
many were read and flagged, with a 95 % Wilson interval of the rate, and which replies were flagged.

Every verdict goes through ``check_with_cache``: a file checked twice, or a comparison's answers checked after the
comparison did, reads its verdicts back from the store. A checker failing on a reply leaves that reply out of its
counts and is named in ``problems``; the other checkers go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from store.studio_store import Store
from studio.evaluation.comparison import wilson_interval
from studio.safety.cached_checks import check_with_cache
from studio.safety.checker import SafetyChecker
from studio.safety.reply_file import ReplyToCheck


@dataclass
class CheckerTally:
    """One checker on the replies of one label."""

    checker: str
    version: str
    label: str
    checked: int = 0
    flagged: int = 0

    @property
    def rate(self) -> float | None:
        return self.flagged / self.checked if self.checked else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """95 % Wilson score interval of the flagged rate (honest at small n and at 0 or n flagged)."""
        return wilson_interval(self.flagged, self.checked)

    def to_dict(self) -> dict[str, Any]:
        interval = self.interval
        return {"checker": self.checker, "version": self.version, "label": self.label, "checked": self.checked,
                "flagged": self.flagged, "rate": self.rate, "rate_interval_95": list(interval) if interval else None}


@dataclass(frozen=True)
class FlaggedReply:
    where: str
    label: str
    checker: str
    categories: tuple[str, ...]
    score: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"where": self.where, "label": self.label, "checker": self.checker,
                "categories": list(self.categories), "score": self.score}


@dataclass
class SafetyTally:
    """What ``check_replies`` found."""

    source: str
    tallies: list[CheckerTally]
    flagged: list[FlaggedReply] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    computed: int = 0  # verdicts computed now (the rest were read back from the store)
    cached: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "checkers": [t.to_dict() for t in self.tallies],
                "flagged": [f.to_dict() for f in self.flagged], "problems": list(self.problems),
                "computed": self.computed, "cached": self.cached, "interval": "Wilson score, 95 %"}


Progress = Callable[[int, int], None]
"""Called with (replies checked, replies to check)."""


def check_replies(store: Store, checkers: Sequence[SafetyChecker], replies: Sequence[ReplyToCheck], source: str,
                  progress: Progress | None = None) -> SafetyTally:
    """Every reply through every checker (cached in the store), counted per checker and label."""
    labels = list(dict.fromkeys(reply.label for reply in replies))
    tallies = {(index, label): CheckerTally(checker.name, checker.version, label)
               for index, checker in enumerate(checkers) for label in labels}
    tally = SafetyTally(source, list(tallies.values()))
    for number, reply in enumerate(replies, start=1):
        results = check_with_cache(store, checkers, reply.conversation, reply.reply)
        for index, result in enumerate(results):
            if result.verdict is None:
                tally.problems.append(f"{result.checker}: {reply.where} ({reply.label}): {result.error}")
                continue
            counts = tallies[index, reply.label]
            counts.checked += 1
            tally.cached += result.cached
            tally.computed += not result.cached
            if not result.verdict.safe:
                counts.flagged += 1
                tally.flagged.append(FlaggedReply(reply.where, reply.label, result.checker,
                                                  result.verdict.categories, result.verdict.score))
        if progress is not None:
            progress(number, len(replies))
    return tally
