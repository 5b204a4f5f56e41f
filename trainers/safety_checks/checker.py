"""The safety-checker seam: a checker reads a conversation and a reply and says safe or unsafe, and why.

Every checker (the bundled offensive-language classifier, a user's word list, a guard model run in llama.cpp)
implements ``SafetyChecker``; the chat, ``prefstudio safety check`` and the comparison only see this interface.
A verdict carries the checker's name and version, which with the hash of the text read are the key its result
is stored under (``safety_checks``), so the same text is never checked twice by the same checker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from store.safety_checks import conversation_text_hash
from trainers.prompt_format import ChatTurn


@dataclass(frozen=True)
class SafetyVerdict:
    """What one checker said about one reply."""

    checker: str  # the checker's name, e.g. "profanity", "wordlist:mylist", "guard:llama-guard-3-1b"
    version: str  # what makes its answers differ: package version, file hash, model hash
    safe: bool
    categories: tuple[str, ...] = ()  # e.g. ("S1", "S10") for Llama Guard 3; empty when safe
    score: float | None = None  # probability of "unsafe" where the checker has one


class SafetyChecker(Protocol):
    """One safety checker. ``check`` may take a while (a guard model): callers run it off the UI thread."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def check(self, conversation: Sequence[ChatTurn], reply: str) -> SafetyVerdict: ...


def checked_text_hash(conversation: Sequence[ChatTurn], reply: str) -> str:
    """The key of what a checker read: the conversation's roles and texts and the reply, hashed."""
    # One rule, in the store: the trainer computes the same key for a pair's chosen reply (drop_flagged).
    return conversation_text_hash([(turn.role, turn.content) for turn in conversation], reply)


class SafetyCheckerError(Exception):
    """A checker cannot load (package missing, bad file) or could not read a reply; the message names it."""
