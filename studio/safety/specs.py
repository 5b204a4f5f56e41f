"""Which safety checkers are on: ``safety = ["profanity", "wordlist:PATH", "guard:PATH"]`` in the config file,
``--safety`` (repeatable) on the command line. Parsed here without loading anything (``registry`` loads them).

- ``profanity`` — the bundled offensive-language classifier; ``profanity:0.7`` sets its threshold (default 0.5)
- ``wordlist:PATH`` — a blocklist file (``trainers/safety_checks/wordlist.py`` says its format)
- ``guard:PATH`` — a Llama Guard 3 GGUF, run in llama.cpp
- ``none`` — no checkers (alone)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CheckerKind = Literal["profanity", "wordlist", "guard"]
DEFAULT_SAFETY = ("profanity",)
SPEC_HELP = "profanity[:THRESHOLD], wordlist:PATH, guard:PATH (a Llama Guard 3 GGUF), or none"


@dataclass(frozen=True)
class CheckerSpec:
    """One checker as configured: its kind, and the file or threshold it was given."""

    kind: CheckerKind
    path: Path | None = None  # wordlist and guard
    threshold: float | None = None  # profanity; None: its default

    def __str__(self) -> str:
        if self.path is not None:
            return f"{self.kind}:{self.path}"
        return self.kind if self.threshold is None else f"{self.kind}:{self.threshold:g}"


def parse_checker_spec(text: str, where: str) -> CheckerSpec:
    """One ``--safety`` / config entry; ValueError naming ``where`` and the forms it takes."""
    kind, _, argument = text.strip().partition(":")
    kind = kind.strip().lower()
    argument = argument.strip()
    if kind == "profanity":
        if not argument:
            return CheckerSpec("profanity")
        try:
            threshold = float(argument)
        except ValueError:
            threshold = -1.0
        if not 0 < threshold <= 1:
            raise ValueError(f"{where}: profanity:{argument}: the threshold must be a number above 0 and at most 1")
        return CheckerSpec("profanity", threshold=threshold)
    if kind in ("wordlist", "guard"):
        if not argument:
            what = "a blocklist file" if kind == "wordlist" else "a guard model GGUF file"
            raise ValueError(f"{where}: {kind} needs {what}: {kind}:PATH")
        return CheckerSpec(kind, path=Path(argument).expanduser())  # type: ignore[arg-type]
    raise ValueError(f"{where}: unknown safety checker {text!r}; expected {SPEC_HELP}")


def parse_checker_specs(values: str | Sequence[str], where: str) -> tuple[CheckerSpec, ...]:
    """A list of entries (or one), ``none`` alone meaning no checkers; duplicates kept once."""
    entries = [values] if isinstance(values, str) else list(values)
    if not all(isinstance(entry, str) for entry in entries):
        raise ValueError(f"{where} must be a list of checker names in quotes ({SPEC_HELP}), got {values!r}")
    if [entry.strip().lower() for entry in entries] == ["none"]:
        return ()
    specs = [parse_checker_spec(entry, where) for entry in entries]
    return tuple(dict.fromkeys(specs))
