"""What reward models said about candidates (schema v7 ``reward_scores``), and how often the user agreed.

A mixin of `Store` (like `SafetyChecks`). One score per (candidate, reward run); a candidate scored again by
the same run keeps the newer score. Whether the user agreed with a reward model is not stored: it is read
from the scores and the judgements (``reward_agreement``), so a judgement changed later is counted as it is.
The store knows nothing of reward models (they live in ``studio/reward``); it takes and hands out floats.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from store.transactions import StoreLock, serialized, utc_now, write_transaction

# The user's pick among a prompt's candidates: the chosen one of an A/B verdict, the best of a ranking (a
# ranking whose first place is shared has no single pick and is left out). Labels, edits and ties are not picks.
_PICKS = """
SELECT j.id AS judgement_id, j.prompt_id, j.chosen_candidate_id AS pick FROM judgements j
JOIN prompts p ON p.id = j.prompt_id
WHERE j.verdict IN ('a', 'b') AND j.chosen_candidate_id IS NOT NULL AND (? IS NULL OR p.session_id = ?)
UNION ALL
SELECT j.id, j.prompt_id, MIN(r.candidate_id) FROM judgements j
JOIN prompts p ON p.id = j.prompt_id JOIN judgement_ranks r ON r.judgement_id = j.id AND r.rank = 0
WHERE j.verdict = 'ranked' AND (? IS NULL OR p.session_id = ?)
GROUP BY j.id HAVING COUNT(*) = 1
ORDER BY 1
"""

# The run's scores of every candidate of the prompts that have a pick.
_SCORES_OF_PROMPTS = """
SELECT c.prompt_id, s.candidate_id, s.score FROM reward_scores s JOIN candidates c ON c.id = s.candidate_id
WHERE s.run_id = ? AND c.prompt_id IN (SELECT value FROM json_each(?))
"""


@dataclass(frozen=True)
class RewardAgreement:
    """How often the reward model's top-scored candidate was the one the user picked."""

    run_id: int
    judged: int  # judgements with a single pick, on prompts where the run scored the pick and another candidate
    agreed: int  # of those, the pick scored highest (a tie at the top counts as agreeing)

    @property
    def rate(self) -> float | None:
        return self.agreed / self.judged if self.judged else None

    def describe(self) -> str:
        if not self.judged:
            return f"reward run {self.run_id}: no judged prompt with its scores yet"
        return f"reward run {self.run_id} agreed with {self.agreed} of {self.judged} picks ({self.rate:.0%})"


class RewardScores:
    """The reward-score methods of `Store` (mixed in)."""

    db: sqlite_utils.Database
    path: Path
    lock: StoreLock

    @serialized
    def record_reward_scores(self, run_id: int, scores: Mapping[int, float]) -> None:
        """Store run ``run_id``'s score of each candidate (candidate id → score), all in one transaction; a
        candidate the run scored before gets the new score. Raises ValueError naming an unknown candidate or
        run, or a score that is not a finite number (nothing is stored then)."""
        for candidate_id, score in scores.items():
            if not isinstance(score, int | float) or not math.isfinite(score):
                raise ValueError(f"reward score {score!r} for candidate {candidate_id} is not a finite number")
        with write_transaction(self.db):
            if self.db.execute("SELECT 1 FROM runs WHERE id = ?", [run_id]).fetchone() is None:
                raise ValueError(f"no run with id {run_id} in {self.path}")
            now = utc_now()
            for candidate_id, score in scores.items():
                if self.db.execute("SELECT 1 FROM candidates WHERE id = ?", [candidate_id]).fetchone() is None:
                    raise ValueError(f"no candidate with id {candidate_id} in {self.path}")
                self.db.execute(
                    "INSERT INTO reward_scores (candidate_id, run_id, score, created_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (candidate_id, run_id) DO UPDATE SET score = excluded.score, "
                    "created_at = excluded.created_at",
                    [candidate_id, run_id, float(score), now],
                )

    @serialized
    def reward_scores(self, run_id: int, candidate_ids: Iterable[int] | None = None) -> dict[int, float]:
        """Run ``run_id``'s stored scores (candidate id → score): of these candidates, or of every one."""
        if candidate_ids is None:
            rows = self.db.execute("SELECT candidate_id, score FROM reward_scores WHERE run_id = ?", [run_id])
        else:
            rows = self.db.execute(
                "SELECT candidate_id, score FROM reward_scores WHERE run_id = ? "
                "AND candidate_id IN (SELECT value FROM json_each(?))", [run_id, json.dumps(sorted(set(candidate_ids)))])
        return {int(candidate_id): float(score) for candidate_id, score in rows}

    @serialized
    def reward_agreement(self, run_id: int, session_id: int | None = None) -> RewardAgreement:
        """The live agreement rate of reward run ``run_id``: of the judged prompts (one session's, or all)
        whose pick and at least one other candidate it scored, the share where the pick scored highest."""
        picks = list(self.db.execute(_PICKS, [session_id, session_id, session_id, session_id]))
        if not picks:
            return RewardAgreement(run_id, 0, 0)
        by_prompt: dict[int, dict[int, float]] = {}
        prompt_ids = sorted({prompt_id for _judgement, prompt_id, _pick in picks})
        for prompt_id, candidate_id, score in self.db.execute(_SCORES_OF_PROMPTS, [run_id, json.dumps(prompt_ids)]):
            by_prompt.setdefault(prompt_id, {})[candidate_id] = score
        judged = agreed = 0
        for _judgement, prompt_id, pick in picks:
            scores = by_prompt.get(prompt_id, {})
            if pick not in scores or len(scores) < 2:
                continue
            judged += 1
            agreed += scores[pick] >= max(scores.values())
        return RewardAgreement(run_id, judged, agreed)
