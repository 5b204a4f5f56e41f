"""A reward model's view of a comparison: the mean reward of the base and of the tuned answers to the same prompts.

Beside the blind votes (people) and the held-out preference metrics (the tuned model's own log-probs), a trained
reward model scores every answer of a comparison (``measure_reward``): the mean of each side, and on how many
prompts the tuned answer scored higher. The scores are kept per row with the result (``RewardMeans``), so a
stored comparison is read back, not scored again. Each answer is scored after the comparison's system prompt and
its prompt as one user turn (a held-out pair's earlier turns are in its rendered prompt only, which the reward
model's conversation does not carry).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trainers.prompt_format import ChatTurn

if TYPE_CHECKING:
    from studio.evaluation.comparison import ComparisonRow
    from studio.reward.scorer import RewardScorer


@dataclass(frozen=True)
class RewardMeans:
    """Reward run ``run_id``'s score of every base and tuned answer of a comparison, by row."""

    run_id: int
    base: tuple[float, ...]
    tuned: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.base)

    @property
    def base_mean(self) -> float | None:
        return sum(self.base) / self.n if self.n else None

    @property
    def tuned_mean(self) -> float | None:
        return sum(self.tuned) / self.n if self.n else None

    @property
    def tuned_higher(self) -> int:
        """The prompts whose tuned answer scored higher than the base's."""
        return sum(tuned > base for base, tuned in zip(self.base, self.tuned, strict=True))

    def to_dict(self) -> dict[str, object]:
        return {"run_id": self.run_id, "base": list(self.base), "tuned": list(self.tuned)}

    @classmethod
    def from_dict(cls, data: object) -> RewardMeans | None:
        """What ``to_dict`` stored, or None (nothing stored, or a shape this version cannot read)."""
        if not isinstance(data, dict):
            return None
        run_id, base, tuned = data.get("run_id"), data.get("base"), data.get("tuned")
        if not isinstance(run_id, int) or not isinstance(base, list) or not isinstance(tuned, list):
            return None
        if len(base) != len(tuned) or not all(isinstance(v, int | float) for v in [*base, *tuned]):
            return None
        return cls(run_id, tuple(float(v) for v in base), tuple(float(v) for v in tuned))


def row_conversation(system: str, row: ComparisonRow) -> list[ChatTurn]:
    """What the reward model reads before a comparison answer: the system prompt and the prompt."""
    return [ChatTurn("system", system), ChatTurn("user", row.prompt)]


def measure_reward(scorer: RewardScorer, rows: Sequence[ComparisonRow], system: str, *,
                   progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> RewardMeans | None:
    """Score each row's base and tuned answer with ``scorer`` (both in one call per row). None when stopped.
    A scorer that fails raises its own error (``RewardScorerError``); the caller says so and keeps the rest."""
    base: list[float] = []
    tuned: list[float] = []
    for done, row in enumerate(rows):
        if should_stop is not None and should_stop():
            return None
        base_score, tuned_score = scorer.score(row_conversation(system, row), [row.base_text, row.tuned_text])
        base.append(float(base_score))
        tuned.append(float(tuned_score))
        if progress is not None:
            progress(done + 1, len(rows))
    return RewardMeans(scorer.run_id, tuple(base), tuple(tuned))

