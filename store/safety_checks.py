"""What safety checkers said about replies (schema v7 ``safety_checks`` + ``candidate_safety``).

A mixin of `Store` (like `Evaluations`). A check is keyed by the checker's name and version and the hash of
what it read (the conversation and the reply: ``conversation_text_hash``), so the same text is checked once
per checker version whichever candidate, comparison answer, file row or training pair it came from; a check
made on a stored candidate is also linked to it (``candidate_safety``).

The store knows nothing of the checkers (they live in ``studio/safety``); it takes and hands out
``StoredSafetyCheck`` records. The text hash lives here, not in the studio, because the trainer (which may read
the store but never imports the studio) needs the same key to drop pairs whose chosen reply was flagged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import sqlite_utils

from store.transactions import StoreLock, serialized, utc_now, write_transaction


def conversation_text_hash(turns: Sequence[tuple[str, str]], reply: str) -> str:
    """The key of what a checker read: the conversation's (role, text) turns and the reply, hashed (sha256)."""
    payload = json.dumps([[role, content] for role, content in turns] + [["reply", reply]],
                         ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def prompt_reply_hash(rendered_prompt: str, reply: str) -> str:
    """The key of a training pair's chosen reply: the rendered prompt the pair trains on, as one user turn.

    The studio checks a run's chosen replies under this key before the run is prepared, and the trainer looks
    the same key up (``trainers/pair_selection.py``), so both read one rule."""
    return conversation_text_hash([("user", rendered_prompt)], reply)


class CheckerVerdict(Protocol):
    """What the store keeps of a checker's verdict (``studio.safety.checker.SafetyVerdict`` is one)."""

    @property
    def checker(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def safe(self) -> bool: ...

    @property
    def categories(self) -> tuple[str, ...]: ...

    @property
    def score(self) -> float | None: ...


@dataclass(frozen=True)
class StoredSafetyCheck:
    """One stored verdict: which checker (name, version) read which text (hash), and what it said."""

    id: int
    checker: str
    checker_version: str
    text_hash: str
    safe: bool
    categories: tuple[str, ...]
    score: float | None
    created_at: str


def _record(row: dict[str, Any]) -> StoredSafetyCheck:
    return StoredSafetyCheck(
        id=row["id"], checker=row["checker"], checker_version=row["checker_version"], text_hash=row["text_hash"],
        safe=bool(row["safe"]), categories=tuple(json.loads(row["categories_json"])), score=row["score"],
        created_at=row["created_at"],
    )


_SELECT_CHECK = ("SELECT id, checker, checker_version, text_hash, safe, categories_json, score, created_at "
                 "FROM safety_checks WHERE checker = ? AND checker_version = ? AND text_hash = ?")

# A text is flagged when a checker said "unsafe" at that checker's newest stored version: an edited word list
# (a new version) stops its old verdicts from counting, whichever texts the new version has read so far.
_UNSAFE_HASHES = """
SELECT DISTINCT s.text_hash FROM safety_checks s
WHERE s.safe = 0 AND s.text_hash IN (SELECT value FROM json_each(?))
  AND s.checker_version = (SELECT l.checker_version FROM safety_checks l WHERE l.checker = s.checker
                           ORDER BY l.id DESC LIMIT 1)
"""


class SafetyChecks:
    """The safety-check methods of `Store` (mixed in)."""

    db: sqlite_utils.Database
    path: Path
    lock: StoreLock

    @serialized
    def record_safety(self, candidate_id: int | None, text_hash: str, verdict: CheckerVerdict) -> StoredSafetyCheck:
        """Store one checker's verdict on one text (kept once per checker version and text) and link it to the
        candidate it was made on, if any; return the stored check (the earlier one when it was already there)."""
        with write_transaction(self.db):
            self.db.execute(
                "INSERT INTO safety_checks (checker, checker_version, text_hash, safe, categories_json, score, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (checker, checker_version, text_hash) DO NOTHING",
                [verdict.checker, verdict.version, text_hash, int(verdict.safe), json.dumps(list(verdict.categories)),
                 verdict.score, utc_now()],
            )
            row = next(self.db.query(_SELECT_CHECK, [verdict.checker, verdict.version, text_hash]))
            if candidate_id is not None:
                if self.db.execute("SELECT 1 FROM candidates WHERE id = ?", [candidate_id]).fetchone() is None:
                    raise ValueError(f"no candidate with id {candidate_id} in {self.path}")
                self.db.execute("INSERT OR IGNORE INTO candidate_safety (candidate_id, check_id) VALUES (?, ?)",
                                [candidate_id, row["id"]])
        return _record(row)

    @serialized
    def cached_verdict(self, checker: str, checker_version: str, text_hash: str) -> StoredSafetyCheck | None:
        """The stored verdict of this checker version on this text, or None when it has not read it."""
        rows = list(self.db.query(_SELECT_CHECK, [checker, checker_version, text_hash]))
        return _record(rows[0]) if rows else None

    @serialized
    def link_safety_check(self, candidate_id: int, check_id: int) -> None:
        """Link an existing check to a candidate (the same text checked earlier for another candidate)."""
        with write_transaction(self.db):
            self.db.execute("INSERT OR IGNORE INTO candidate_safety (candidate_id, check_id) VALUES (?, ?)",
                            [candidate_id, check_id])

    @serialized
    def candidate_safety(self, candidate_id: int) -> list[StoredSafetyCheck]:
        """Every check made on a candidate, in the order made."""
        rows = self.db.query(
            "SELECT s.id, s.checker, s.checker_version, s.text_hash, s.safe, s.categories_json, s.score, "
            "s.created_at FROM candidate_safety cs JOIN safety_checks s ON s.id = cs.check_id "
            "WHERE cs.candidate_id = ? ORDER BY s.id", [candidate_id])
        return [_record(row) for row in rows]

    @serialized
    def unsafe_text_hashes(self, text_hashes: Iterable[str]) -> set[str]:
        """Those of ``text_hashes`` some checker flagged at its newest stored version (see ``_UNSAFE_HASHES``)."""
        wanted = sorted(set(text_hashes))
        if not wanted:
            return set()
        return {row[0] for row in self.db.execute(_UNSAFE_HASHES, [json.dumps(wanted)])}
