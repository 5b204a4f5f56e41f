"""The configured checkers, loaded: one that cannot load is named in ``problems`` and the others keep working."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from studio.safety.checker import SafetyChecker, SafetyCheckerError
from studio.safety.specs import CheckerSpec


@dataclass(frozen=True)
class LoadedCheckers:
    """The checkers that loaded, in the order configured, and one message per checker that did not."""

    checkers: tuple[SafetyChecker, ...]
    problems: tuple[str, ...]


def load_checker(spec: CheckerSpec, *, threads: int | None = None) -> SafetyChecker:
    """Load one checker (the heavy imports happen here); SafetyCheckerError with a message naming it."""
    if spec.kind == "profanity":
        from studio.safety.profanity import DEFAULT_THRESHOLD, ProfanityChecker

        return ProfanityChecker(threshold=spec.threshold if spec.threshold is not None else DEFAULT_THRESHOLD)
    assert spec.path is not None
    if spec.kind == "wordlist":
        from studio.safety.wordlist import WordListChecker

        return WordListChecker(spec.path)
    from studio.safety.guard import GuardChecker

    return GuardChecker(spec.path, threads=threads)


def load_checkers(specs: Sequence[CheckerSpec], *, threads: int | None = None) -> LoadedCheckers:
    """Every checker of ``specs`` that loads; each one that cannot is a problem line, not a failure."""
    checkers: list[SafetyChecker] = []
    problems: list[str] = []
    for spec in specs:
        try:
            checkers.append(load_checker(spec, threads=threads))
        except SafetyCheckerError as exc:
            problems.append(f"safety checker {spec} is off: {exc}")
    return LoadedCheckers(tuple(checkers), tuple(problems))
