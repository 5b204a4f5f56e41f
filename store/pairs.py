"""Preference pairs, read out of judgements (exported by store/datasets/export.py).

Pairs are never stored: they are derived on demand, so a changed rule applies to every past judgement.

| verdict       | pairs                                                                  |
|---------------|------------------------------------------------------------------------|
| a / b         | chosen = the picked candidate, rejected = the other one                |
| edited        | chosen = the edited text, rejected = each candidate whose text differs |
| tie, both_bad | none                                                                   |
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from store.pair_ids import judged_pair_id
from store.records import Verdict


@dataclass(frozen=True)
class PreferencePair:
    """One training example: a rendered prompt with a preferred and a dispreferred reply."""

    pair_id: str
    prompt: str  # the rendered prompt, exactly as the engine evaluated it
    prompt_text: str  # the user's raw prompt, for display
    chosen: str
    rejected: str
    session_id: int
    judgement_id: int
    verdict: str
    created_at: str

    def to_trl(self) -> dict[str, str]:
        """The pair as a row of TRL's standard (non-conversational) preference dataset."""
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


_PAIR_VERDICTS = (Verdict.A.value, Verdict.B.value, Verdict.EDITED.value)

# `? IS NULL OR ...` keeps the optional session filter a parameter rather than spliced-in SQL.
_JUDGEMENTS_SQL = """
SELECT j.id, j.prompt_id, j.verdict, j.chosen_candidate_id, j.rejected_candidate_id, j.edited_text,
       j.created_at, p.session_id, p.text AS prompt_text
FROM judgements j JOIN prompts p ON p.id = j.prompt_id
WHERE j.verdict IN (?, ?, ?) AND (? IS NULL OR p.session_id = ?)
ORDER BY j.id
"""

_CANDIDATES_SQL = """
SELECT c.id, c.prompt_id, c.slot, c.text, c.rendered_prompt
FROM candidates c JOIN prompts p ON p.id = c.prompt_id
WHERE (? IS NULL OR p.session_id = ?)
  AND c.prompt_id IN (SELECT prompt_id FROM judgements WHERE verdict IN (?, ?, ?))
ORDER BY c.prompt_id, c.slot, c.id
"""


def _pairs_for(
    judgement: dict[str, Any], by_id: dict[int, dict], by_prompt: dict[int, list[dict]]
) -> Iterator[PreferencePair]:
    common = {
        "prompt_text": judgement["prompt_text"],
        "session_id": judgement["session_id"],
        "judgement_id": judgement["id"],
        "verdict": judgement["verdict"],
        "created_at": judgement["created_at"],
    }
    if judgement["verdict"] == Verdict.EDITED:
        edited = judgement["edited_text"] or ""
        if not edited.strip():
            return
        for candidate in by_prompt.get(judgement["prompt_id"], []):
            # Candidates keep the model's own whitespace; surrounding whitespace is not a preference.
            if candidate["text"].strip() == edited.strip():
                continue
            yield PreferencePair(
                pair_id=judged_pair_id(judgement["id"], candidate["id"]),
                prompt=candidate["rendered_prompt"],
                chosen=edited,
                rejected=candidate["text"],
                **common,
            )
        return
    chosen = by_id.get(judgement["chosen_candidate_id"])
    rejected = by_id.get(judgement["rejected_candidate_id"])
    # record_judgement guarantees both; a row that lacks them (an old import) simply yields nothing.
    if chosen is None or rejected is None:
        return
    yield PreferencePair(
        pair_id=judged_pair_id(judgement["id"]),
        prompt=chosen["rendered_prompt"],
        chosen=chosen["text"],
        rejected=rejected["text"],
        **common,
    )


def read_pairs(db: sqlite_utils.Database, session_id: int | None = None) -> list[PreferencePair]:
    """Every preference pair in the store (or in one session), in judgement order."""
    judgements = list(db.query(_JUDGEMENTS_SQL, [*_PAIR_VERDICTS, session_id, session_id]))
    candidates = list(db.query(_CANDIDATES_SQL, [session_id, session_id, *_PAIR_VERDICTS]))
    by_id = {row["id"]: row for row in candidates}
    by_prompt: dict[int, list[dict]] = {}
    for row in candidates:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    pairs: list[PreferencePair] = []
    for judgement in judgements:
        pairs.extend(_pairs_for(judgement, by_id, by_prompt))
    return pairs
