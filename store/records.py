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
