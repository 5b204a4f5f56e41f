"""Immutable records the store hands out, so callers never hold live rows or raw dicts."""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    """What the user decided about a prompt's candidates."""

    A = "a"
    B = "b"
    TIE = "tie"
    BOTH_BAD = "both_bad"
    EDITED = "edited"
    RANKED = "ranked"  # K >= 2 candidates put in order (judgement_ranks); chosen_candidate_id is the best
    ALL_BAD = "all_bad"  # every candidate of the prompt is bad (the ranking mode's `x`)
    GOOD = "good"  # a thumbs-up on one candidate, named as chosen_candidate_id
    BAD = "bad"  # a thumbs-down on one candidate, named as rejected_candidate_id


@dataclass(frozen=True)
class SessionRecord:
    """One chat session: its system prompt and the model it was started with."""

    id: int
    created_at: str
    title: str | None
    system_prompt: str
    model_id: str | None


@dataclass(frozen=True)
class TurnRecord:
    """One message of a session's conversation, in order (`idx`)."""

    id: int
    session_id: int
    idx: int
    role: str
    content: str
    candidate_id: int | None
    judgement_id: int | None = None  # the judgement that added it (None for turns added on their own)


@dataclass(frozen=True)
class CandidateRecord:
    """One generated reply to a prompt, with everything needed to reproduce it."""

    id: int
    prompt_id: int
    slot: int
    text: str
    rendered_prompt: str
    model_id: str
    model_sha256: str
    adapter: str | None
    sampling: dict[str, Any]
    seed: int
    finish_reason: str | None
    n_tokens: int | None
    duration_s: float | None


@dataclass(frozen=True)
class JudgementRecord:
    """The user's verdict on a prompt's candidates."""

    id: int
    prompt_id: int
    verdict: str
    chosen_candidate_id: int | None
    rejected_candidate_id: int | None
    edited_text: str | None
    source: str
    adapter: str | None
    created_at: str


@dataclass(frozen=True)
class RunRecord:
    """One training run: its configuration, the pairs it used and where it stands."""

    id: int
    created_at: str
    updated_at: str
    status: str
    message: str | None
    pid: int | None
    config: dict[str, Any]
    model_id: str
    dataset_hash: str | None
    pair_ids: list[str]
    heldout_ids: list[str]
    output_dir: str
    summary: dict[str, Any] | None
    pid_started: str | None = None  # the process's start time, recorded with the pid (store/processes.py)


@dataclass(frozen=True)
class RankingRecord:
    """A ranking judgement: each candidate of its prompt with its place (0 = best; ties share a place)."""

    judgement_id: int
    prompt_id: int
    places: tuple[tuple[int, int], ...]  # (candidate_id, place), best first, then by candidate id
    all_bad: bool
    source: str
    created_at: str

    @property
    def order(self) -> list[int]:
        """The candidate ids best first, as ranked (a partial ranking's tied last place in id order)."""
        return [candidate_id for candidate_id, _ in self.places]


@dataclass(frozen=True)
class RatingRecord:
    """One attribute rating of a candidate, 0–4, alone or given with a judgement."""

    id: int
    candidate_id: int
    judgement_id: int | None
    attribute: str
    value: int
    source: str
    created_at: str


@dataclass(frozen=True)
class DemonstrationRecord:
    """A reply the user wrote (or corrected) for a prompt; the prompt's context is the prompt's own."""

    id: int
    prompt_id: int
    text: str
    based_on_candidate_id: int | None
    source: str
    created_at: str


@dataclass(frozen=True)
class PreferencePair:
    """One training example: a rendered prompt with a preferred and a dispreferred reply (store/feedback_yield.py
    reads them out of judgements)."""

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
