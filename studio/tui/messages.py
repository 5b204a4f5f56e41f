"""The app's own messages. Token and progress messages may replace an unprocessed predecessor."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from studio.inference.engine import ChatEngine, Generation
from studio.reward.candidate_scoring import CandidateScoring, RoundScores


@dataclass
class EngineReady(Message):
    engine: ChatEngine


@dataclass
class EngineFailed(Message):
    error: str


@dataclass
class CandidateToken(Message):
    job_id: int
    slot: int
    text_so_far: str

    def can_replace(self, message: Message) -> bool:
        # A burst of tokens collapses into the latest text: the panel only needs the newest state.
        return isinstance(message, CandidateToken) and (message.job_id, message.slot) == (self.job_id, self.slot)


@dataclass
class CandidatesFinished(Message):
    job_id: int
    generations: list[Generation]


@dataclass
class GenerationFailed(Message):
    job_id: int
    error: str
    title: str = "Generation failed"


@dataclass
class RewardModelReady(Message):
    """A reward run's scorer is open (``scoring``), or the chat scores nothing now (None)."""

    scoring: CandidateScoring | None


@dataclass
class RewardModelFailed(Message):
    run_id: int
    error: str


@dataclass
class RewardScored(Message):
    """One more candidate of a round scored: the round's scores so far."""

    scores: RoundScores


@dataclass
class RewardScoringFailed(Message):
    error: str
