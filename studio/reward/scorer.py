"""The reward-model seam: a finished ``reward`` run opened as a scorer of replies to a conversation.

The chat (each candidate's score, the model's pick), best-of-N and the comparison (mean reward of base and
tuned answers) only see ``RewardScorer``. ``score`` takes a while (a forward pass per reply): callers run it
off the UI thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from trainers.prompt_format import ChatTurn

if TYPE_CHECKING:
    from store.studio_store import Store
    from studio.inference.engine import ChatEngine


class RewardScorerError(Exception):
    """A reward run that cannot score for this engine (not a finished reward run, another base model, files
    missing) or a scorer that stopped. The message names the run and what to do."""


class RewardScorer(Protocol):
    """A reward model ready to score. Blocking; safe to call from one worker thread at a time."""

    @property
    def run_id(self) -> int: ...

    def score(self, conversation: Sequence[ChatTurn], replies: Sequence[str]) -> list[float]:
        """One scalar reward per reply to ``conversation`` (a leading system turn, then turns ending with the
        user's), in the order given; higher is better. Replies are as stored (the model's own leading space)."""
        ...

    def close(self) -> None:
        """Free what the scorer holds (its worker process). Idempotent."""
        ...


def open_reward_scorer(store: Store, run_id: int, engine: ChatEngine) -> RewardScorer:
    """The scorer of reward run ``run_id`` for the model ``engine`` serves.

    Raises ``RewardScorerError`` (before anything is loaded) for a run that is not a finished reward run or
    that was trained on another base model than the engine's.
    """
    raise RewardScorerError(f"run {run_id}: reward scoring is not implemented yet")
