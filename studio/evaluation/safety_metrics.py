"""Safety before and after tuning: how often each checker flags the base and the tuned answers, and their mean score.

For every configured checker (``studio.safety``) and each side of a comparison (the base and the tuned answer to
the same prompt, ``ComparisonRow``), the flagged rate with a 95 % **Wilson** score interval (the interval the
blind tally uses: honest at small n and at 0 or n flagged, where the normal one collapses to a point) and the
mean score (the checker's probability of "unsafe", where it gives one) with a 95 % **Student t** interval
(mean ± t₀.₉₇₅,ₙ₋₁ · sd / √n; none below two scores).

Each verdict comes through ``check_with_cache``: a text a checker has read before (the same answer in an earlier
comparison, or a chat candidate) is read back from ``safety_checks``, never checked again. The summary itself is
stored with the comparison (``ComparisonResult.safety``), so showing it again recomputes nothing.

A checker that fails on an answer (a guard model that does not answer as one) leaves that answer out of its
counts; the failure is named in ``SafetyMetrics.problems`` and the other checkers go on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from studio.evaluation.comparison import ComparisonRow, wilson_interval
from studio.safety.cached_checks import check_with_cache
from trainers.prompt_format import ChatTurn

if TYPE_CHECKING:
    from store.studio_store import Store
    from studio.safety.checker import SafetyChecker, SafetyVerdict

SIDES = ("base", "tuned")
CheckProgress = Callable[[int, int], None]
"""Called with (answers checked, answers to check)."""


def t_quantile_975(df: int) -> float:
    """The 97.5th percentile of Student's t with ``df`` degrees of freedom (two-sided 95 %)."""
    from scipy.special import stdtrit  # scipy comes with scikit-learn, which the bundled checker needs

    return float(stdtrit(df, 0.975))


@dataclass(frozen=True)
class FlaggedRate:
    """How many of the answers a checker read it flagged as unsafe."""

    flagged: int
    checked: int

    @property
    def rate(self) -> float | None:
        return self.flagged / self.checked if self.checked else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """95 % Wilson score interval of the rate; None when nothing was checked."""
        return wilson_interval(self.flagged, self.checked)


@dataclass(frozen=True)
class MeanScore:
    """The mean of a checker's scores (probability of unsafe) over the answers it scored."""

    n: int = 0
    mean: float | None = None
    sd: float | None = None  # sample standard deviation (n − 1); None below two scores

    @classmethod
    def of(cls, scores: Sequence[float]) -> MeanScore:
        if not scores:
            return cls()
        mean = math.fsum(scores) / len(scores)
        sd = math.sqrt(math.fsum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) if len(scores) > 1 else None
        return cls(len(scores), mean, sd)

    @property
    def interval(self) -> tuple[float, float] | None:
        """95 % Student t interval of the mean; None below two scores."""
        if self.mean is None or self.sd is None or self.n < 2:
            return None
        half = t_quantile_975(self.n - 1) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half


@dataclass(frozen=True)
class SideSafety:
    """One checker on one side (the base's answers, or the tuned model's)."""

    flagged: FlaggedRate
    score: MeanScore = field(default_factory=MeanScore)

    def to_dict(self) -> dict[str, Any]:
        interval = self.flagged.interval
        score_interval = self.score.interval
        return {"flagged": self.flagged.flagged, "checked": self.flagged.checked, "rate": self.flagged.rate,
                "rate_interval_95": list(interval) if interval else None,
                "scored": self.score.n, "mean_score": self.score.mean, "score_sd": self.score.sd,
                "mean_score_interval_95": list(score_interval) if score_interval else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SideSafety:
        return cls(FlaggedRate(int(data["flagged"]), int(data["checked"])),
                   MeanScore(int(data.get("scored") or 0), data.get("mean_score"), data.get("score_sd")))


@dataclass(frozen=True)
class CheckerSafety:
    """One checker's reading of the base and the tuned answers."""

    checker: str
    version: str
    base: SideSafety
    tuned: SideSafety

    def to_dict(self) -> dict[str, Any]:
        return {"checker": self.checker, "version": self.version, "base": self.base.to_dict(),
                "tuned": self.tuned.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckerSafety:
        return cls(str(data["checker"]), str(data["version"]), SideSafety.from_dict(data["base"]),
                   SideSafety.from_dict(data["tuned"]))


@dataclass(frozen=True)
class SafetyMetrics:
    """Every configured checker's flagged rate and mean score, base and tuned, on a comparison's answers."""

    n_prompts: int
    checkers: tuple[CheckerSafety, ...] = ()
    problems: tuple[str, ...] = ()  # what a checker could not do ("guard:x: answer 3 (tuned): …")

    def to_dict(self) -> dict[str, Any]:
        return {"n_prompts": self.n_prompts, "checkers": [c.to_dict() for c in self.checkers],
                "problems": list(self.problems),
                "intervals": "flagged rate: Wilson score, 95 %; mean score: Student t, 95 %"}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SafetyMetrics | None:
        """What ``to_dict`` stored, or None when nothing (or something unreadable) was stored."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(int(data["n_prompts"]), tuple(CheckerSafety.from_dict(c) for c in data.get("checkers", [])),
                       tuple(str(p) for p in data.get("problems", [])))
        except (KeyError, TypeError, ValueError):
            return None


def side_safety(verdicts: Sequence[SafetyVerdict]) -> SideSafety:
    """The flagged count and the mean score of one checker's verdicts on one side's answers."""
    scores = [v.score for v in verdicts if v.score is not None]
    return SideSafety(FlaggedRate(sum(not v.safe for v in verdicts), len(verdicts)), MeanScore.of(scores))


def answer_conversation(row: ComparisonRow) -> list[ChatTurn]:
    """What a checker reads before an answer: the comparison's prompt as the user's turn."""
    return [ChatTurn("user", row.prompt)]


def measure_safety(
    store: Store,
    rows: Sequence[ComparisonRow],
    checkers: Sequence[SafetyChecker],
    *,
    progress: CheckProgress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SafetyMetrics:
    """Check every base and tuned answer with every checker (cached per text in the store) and summarise.

    A checker's failure on one answer is recorded in ``problems`` and leaves that answer out of that checker's
    counts; ``should_stop()`` ends early with what was checked so far (noted in ``problems``)."""
    verdicts: dict[tuple[int, str], list[SafetyVerdict]] = {(i, side): [] for i in range(len(checkers))
                                                            for side in SIDES}
    problems: list[str] = []
    total, done = len(checkers) * len(rows) * len(SIDES), 0
    for number, row in enumerate(rows, start=1):
        if should_stop is not None and should_stop():
            problems.append(f"stopped after {number - 1} of {len(rows)} prompts")
            break
        conversation = answer_conversation(row)
        for side, text in zip(SIDES, (row.base_text, row.tuned_text), strict=True):
            for index, checker in enumerate(checkers):
                try:
                    results = check_with_cache(store, [checker], conversation, text)
                except Exception as exc:  # noqa: BLE001 - a checker is a plug-in: even its bug is named, not fatal
                    results = []
                    problems.append(f"{checker.name}: answer {number} ({side}): {type(exc).__name__}: {exc}")
                for result in results:
                    if result.verdict is not None:
                        verdicts[index, side].append(result.verdict)
                    else:
                        problems.append(f"{checker.name}: answer {number} ({side}): {result.error}")
                done += 1
                if progress is not None:
                    progress(done, total)
    return SafetyMetrics(
        n_prompts=len(rows),
        checkers=tuple(CheckerSafety(checker.name, checker.version, side_safety(verdicts[index, "base"]),
                                     side_safety(verdicts[index, "tuned"]))
                       for index, checker in enumerate(checkers)),
        problems=tuple(problems),
    )
