"""A user's own blocklist: words and phrases per category, matched as whole words, case-insensitive.

One file holds every category of a list (several files: several checkers, ``wordlist:PATH`` each)::

    # category: insults
    idiot
    shut up
    # category: medical
    overdose

A ``# category: NAME`` line starts a category; words before the first one belong to a category named after
the file (``blocklist.txt`` → ``blocklist``). Other lines starting with ``#`` are comments; blank lines are
skipped. A phrase matches with any run of whitespace between its words, and only as whole words ("ass" does
not flag "class"). The checker's version is the file's sha256, so editing the list makes every reply be
checked again under the new list, and stored verdicts of the old one are kept as they were.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trainers.prompt_format import ChatTurn
from trainers.safety_checks.checker import SafetyCheckerError, SafetyVerdict

_CATEGORY_LINE = re.compile(r"#\s*category\s*:(.*)", re.IGNORECASE)


@dataclass(frozen=True)
class WordCategory:
    name: str
    entries: tuple[str, ...]


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def read_wordlist(path: Path) -> tuple[list[WordCategory], str]:
    """The categories of a blocklist file and the file's sha256; SafetyCheckerError naming the file (and line)
    when it is unusable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SafetyCheckerError(f"word list {path}: no such file") from None
    except IsADirectoryError:
        raise SafetyCheckerError(f"word list {path}: is a folder; give a text file, one word or phrase a line") \
            from None
    except OSError as exc:
        raise SafetyCheckerError(f"word list {path}: cannot read it: {exc.strerror or exc}") from exc
    nul = data.find(b"\x00")
    if nul >= 0:
        raise SafetyCheckerError(f"word list {path} line {_line_of(data, nul)}: a NUL byte; this looks like a "
                                 "binary file, not a text list of words")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SafetyCheckerError(f"word list {path} line {_line_of(data, exc.start)}: not UTF-8 text "
                                 f"({exc.reason} at byte {exc.start})") from None
    categories: dict[str, list[str]] = {}
    current = path.stem
    header_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = _CATEGORY_LINE.fullmatch(line)
        if header:
            current = header.group(1).strip()
            if not current:
                raise SafetyCheckerError(f"word list {path} line {number}: a category line without a name "
                                         "(write `# category: NAME`)")
            categories.setdefault(current, [])
            header_line.setdefault(current, number)
            continue
        if not line or line.startswith("#"):
            continue
        categories.setdefault(current, []).append(" ".join(line.split()))
    for name, entries in categories.items():
        if not entries:
            raise SafetyCheckerError(f"word list {path} line {header_line[name]}: category '{name}' lists no words")
    if not categories:
        raise SafetyCheckerError(f"word list {path}: no words in it (one word or phrase a line; `# category: NAME` "
                                 "lines start a category)")
    found = [WordCategory(name, tuple(dict.fromkeys(entries))) for name, entries in categories.items()]
    return found, hashlib.sha256(data).hexdigest()


def _pattern(entries: Sequence[str]) -> re.Pattern[str]:
    # Longest first, so "shut up" is tried before "shut"; \s+ between a phrase's words; word boundaries that
    # also hold next to punctuation and at the ends (lookarounds rather than \b: an entry may end in "!").
    alternatives = sorted((r"\s+".join(re.escape(word) for word in entry.split()) for entry in entries),
                          key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


class WordListChecker:
    """Flags a reply that contains any listed word or phrase; the categories are those of what it contained."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        categories, self._version = read_wordlist(self.path)
        self._patterns = [(category.name, _pattern(category.entries)) for category in categories]
        self._name = f"wordlist:{self.path.stem}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._patterns)

    def check(self, conversation: Sequence[ChatTurn], reply: str) -> SafetyVerdict:
        found = tuple(name for name, pattern in self._patterns if pattern.search(reply))
        return SafetyVerdict(self.name, self.version, safe=not found, categories=found)
