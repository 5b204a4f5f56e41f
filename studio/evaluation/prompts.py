"""Which prompts a comparison answers: the run's held-out prompts, a prompt bank, a file, or the session's own
questions. ``prefstudio compare --prompts-from`` and the compare screen's chooser both name a source with the
same small spec, parsed here::

    heldout            the run's held-out pairs (each with the conversation it was judged in)
    bank:NAME          a bundled prompt bank (assets/prompts/NAME.txt)
    session            the questions asked in the sessions the run's pairs came from (else the latest session)
    session:ID         the questions of session ID
    file:PATH | PATH   a prompts file: one per line, JSON array, or JSONL (as ``--prompts`` reads)
    auto               the default: the exercise's test prompts, else held-out, else the first bank

Session questions are re-asked with the exact rendered prompt their candidates were generated from (system
text and conversation included), so both models answer them as they were asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from studio.evaluation.comparison import (
    ComparisonError,
    ComparisonPrompt,
    comparison_prompts,
    load_prompts_file,
)
from studio.evaluation.prompt_bank import PromptBank, bundled_banks

if TYPE_CHECKING:
    from store.pairs import PreferencePair
    from store.records import RunRecord
    from store.studio_store import Store

KINDS = ("auto", "heldout", "bank", "session", "file")


@dataclass(frozen=True)
class PromptSource:
    """A parsed source spec: ``kind`` is one of ``KINDS``; ``value`` the bank name, session id or file path."""

    kind: str = "auto"
    value: str = ""

    @classmethod
    def parse(cls, spec: str | None) -> PromptSource:
        """Read ``heldout``, ``bank:NAME``, ``session[:ID]``, ``file:PATH``, ``auto`` or a bare file path."""
        spec = (spec or "").strip()
        if not spec or spec == "auto":
            return cls()
        head, sep, rest = spec.partition(":")
        head_key = head.strip().lower()
        if head_key in ("heldout", "held-out") and not sep:
            return cls("heldout")
        if head_key == "bank":
            return cls("bank", rest.strip())
        if head_key == "session":
            value = rest.strip()
            if sep and not value.isdigit():
                raise ComparisonError(f"prompt source {spec!r}: expected session or session:ID (a session number)")
            return cls("session", value)
        if head_key == "file" and sep:
            if not rest.strip():
                raise ComparisonError(f"prompt source {spec!r}: give the file after file:")
            return cls("file", rest.strip())
        return cls("file", spec)

    @property
    def spec(self) -> str:
        """The spec that parses back to this source."""
        return f"{self.kind}:{self.value}" if self.value else self.kind


def find_bank(name: str, banks: list[PromptBank] | None = None) -> PromptBank:
    """The bundled bank called ``name`` (its title or file stem, any case); the first bank when empty."""
    banks = bundled_banks() if banks is None else banks
    if not banks:
        raise ComparisonError("no prompt banks are installed (assets/prompts/*.txt)")
    if not name:
        return banks[0]
    key = name.strip().lower().replace("_", " ")
    for bank in banks:
        if key in (bank.name.lower(), bank.path.stem.lower().replace("_", " ")):
            return bank
    known = ", ".join(b.path.stem for b in banks)
    raise ComparisonError(f"no prompt bank named {name!r}; the banks are: {known}")


def run_sessions(store: Store, run: RunRecord) -> list[int]:
    """The sessions a run's pairs were judged in (its ``--session``, else those of its pair ids)."""
    config = run.config or {}
    if config.get("session_id") is not None:
        return [int(config["session_id"])]
    if config.get("dataset"):
        return []
    from trainers.recorded_pairs import recorded_sessions

    return recorded_sessions(store, run)


def session_prompts(store: Store, run: RunRecord, session: str = "") -> tuple[list[ComparisonPrompt], str]:
    """The questions of ``session`` (an id), else of the run's sessions, else of the latest session."""
    if session:
        sessions = [int(session)]
        try:  # a missing session is named, not silently empty
            store.get_session(sessions[0])
        except LookupError:
            raise ComparisonError(f"there is no session {sessions[0]} in {store.path}") from None
        label = f"the questions of session {sessions[0]}"
    else:
        sessions = run_sessions(store, run)
        label = "the questions of the run's session(s) " + ", ".join(str(s) for s in sessions)
        if not sessions:
            latest = store.latest_session()
            if latest is None:
                raise ComparisonError("there is no chat session to take questions from yet")
            sessions = [latest.id]
            label = f"the questions of the latest session ({latest.id})"
    seen: set[str] = set()
    prompts: list[ComparisonPrompt] = []
    for session_id in sessions:
        for text, rendered in store.session_questions(session_id):
            if text.strip() and text not in seen:
                seen.add(text)
                prompts.append(ComparisonPrompt(text=text, rendered=rendered))
    if not prompts:
        raise ComparisonError(f"{label} are none: the session has no questions yet")
    return prompts, label


def resolve_prompts(source: PromptSource, store: Store, run: RunRecord, heldout: list[PreferencePair],
                    test_prompts: list[str]) -> tuple[list[str | ComparisonPrompt], str]:
    """The prompts of ``source`` and a label saying where they came from.

    ``heldout`` are the run's held-out pairs (already read, as the metrics need them too) and
    ``test_prompts`` an exercise dataset's test prompts; ``auto`` prefers them in that order, then the first
    bank. An explicit source that has nothing raises ``ComparisonError`` saying so.
    """
    if source.kind == "file":
        if not Path(source.value).expanduser().exists():  # most often a mistyped source name
            raise ComparisonError(f"no prompts file {source.value}: a prompt source is heldout, bank:NAME, "
                                  "session, session:ID, auto, or the path of a prompts file")
        return list(load_prompts_file(source.value)), f"file {Path(source.value).name}"
    if source.kind == "bank":
        bank = find_bank(source.value)
        return list(bank.prompts), f"prompt bank '{bank.name}'"
    if source.kind == "session":
        prompts, label = session_prompts(store, run, source.value)
        return list(prompts), label
    if source.kind == "heldout":
        if not heldout:
            raise ComparisonError(f"run {run.id} has no held-out prompts to compare on; choose a prompt bank, "
                                  "a file or the session's questions")
        return list(comparison_prompts(heldout)), "held-out pairs"
    if test_prompts:
        return list(test_prompts), f"the test prompts of '{run.config['dataset']}'"
    if heldout:
        return list(comparison_prompts(heldout)), "held-out pairs"
    bank = find_bank("")
    return list(bank.prompts), f"prompt bank '{bank.name}' (the run has no held-out pairs)"
