"""The labelling queue in the store: prompts waiting for their candidates, then for a judgement.

A mixin of `Store` (like `Feedback`). A queue is a session (title `QUEUE_TITLE`) whose prompts are generated
ahead of the labeller; each waiting prompt is a `queue_items` row. Generating an item stores its prompt and
candidates and points the item at that prompt, all in ONE transaction: a kill keeps an item either waiting
(generated again next time) or generated with every candidate, never half. An item is judged when its prompt
has a judgement (any verdict), written by the ordinary judgement methods.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from store.records import SessionRecord
from store.transactions import StoreLock, serialized, utc_now, write_transaction

QUEUE_TITLE = "labelling queue"
MAX_QUEUE_CANDIDATES = 4  # the studio judges 1–4 candidates per prompt (the schema holds the same bound)

# Which items a read wants: all, those still waiting for candidates, or generated and not yet judged. The state
# goes into the one literal query below as a parameter (no SQL is assembled at run time).
QUEUE_STATES = ("all", "waiting", "unjudged")


@dataclass(frozen=True)
class QueueItemRecord:
    """One queued prompt: its text, how many candidates it wants, where it came from (``file.txt:3``,
    ``bank:NAME``, ``dataset:NAME``), and its stored prompt once generated."""

    id: int
    session_id: int
    text: str
    n_candidates: int
    origin: str
    prompt_id: int | None
    judged: bool


@dataclass(frozen=True)
class QueueCounts:
    """How far a queue (or every queue) has come."""

    total: int
    generated: int
    judged: int

    @property
    def waiting(self) -> int:
        """Items still without candidates."""
        return self.total - self.generated

    @property
    def to_judge(self) -> int:
        """Items not judged yet (generated or not)."""
        return self.total - self.judged


@dataclass(frozen=True)
class EnqueueCounts:
    added: int
    already_queued: int  # the same text already in this queue: not added twice


class LabellingQueue:
    """The queue methods of `Store`."""

    db: sqlite_utils.Database
    path: Path
    lock: StoreLock
    _insert_candidate: Callable[..., int]

    @serialized
    def find_queue(self, system_prompt: str) -> int | None:
        """The newest queue with this system prompt (what ``queue add`` appends to), or None."""
        row = self.db.execute(
            "SELECT id FROM sessions WHERE title = ? AND system_prompt = ? ORDER BY id DESC LIMIT 1",
            [QUEUE_TITLE, system_prompt]).fetchone()
        return row[0] if row else None

    @serialized
    def create_queue(self, system_prompt: str, model_id: str | None = None) -> int:
        """A new queue (a session titled `QUEUE_TITLE`); returns its session id."""
        row = {"created_at": utc_now(), "title": QUEUE_TITLE, "system_prompt": system_prompt, "model_id": model_id}
        with write_transaction(self.db):
            return self.db["sessions"].insert(row).last_pk

    @serialized
    def queues(self) -> list[SessionRecord]:
        """Every queue, oldest first (the order the queue mode works through them)."""
        rows = self.db.execute("SELECT id, created_at, title, system_prompt, model_id FROM sessions WHERE title = ? "
                               "ORDER BY id", [QUEUE_TITLE]).fetchall()
        return [SessionRecord(*row) for row in rows]

    @serialized
    def enqueue(self, session_id: int, prompts: Sequence[tuple[str, str]], n_candidates: int) -> EnqueueCounts:
        """Add (text, origin) prompts to a queue in one transaction, each wanting ``n_candidates`` (1–4).

        A text already in the queue is not added again (so adding the same file twice adds nothing), nor a
        text repeated within ``prompts``. ValueError, with nothing written, for an empty text or a bad N."""
        if not 1 <= n_candidates <= MAX_QUEUE_CANDIDATES:
            raise ValueError(f"a queued prompt takes 1 to {MAX_QUEUE_CANDIDATES} candidates, not {n_candidates}")
        for text, origin in prompts:
            if not text.strip():
                raise ValueError(f"{origin}: the prompt is empty")
        with write_transaction(self.db):
            session = self.db.execute("SELECT title FROM sessions WHERE id = ?", [session_id]).fetchone()
            if session is None or session[0] != QUEUE_TITLE:
                raise ValueError(f"session {session_id} is not a labelling queue")
            seen = {row[0] for row in self.db.execute("SELECT text FROM queue_items WHERE session_id = ?",
                                                      [session_id])}
            now, added = utc_now(), 0
            for text, origin in prompts:
                if text in seen:
                    continue
                seen.add(text)
                self.db.execute("INSERT INTO queue_items (session_id, text, n_candidates, origin, created_at) "
                                "VALUES (?, ?, ?, ?, ?)", [session_id, text, n_candidates, origin, now])
                added += 1
        return EnqueueCounts(added=added, already_queued=len(prompts) - added)

    @serialized
    def queue_items(self, state: str = "all", session_id: int | None = None,
                    limit: int | None = None) -> list[QueueItemRecord]:
        """Queue items in queue order (oldest queue first, then as added): ``state`` is ``all``, ``waiting``
        (no candidates yet) or ``unjudged`` (candidates stored, no judgement yet)."""
        if state not in QUEUE_STATES:
            raise KeyError(state)
        rows = self.db.execute(
            "SELECT q.id, q.session_id, q.text, q.n_candidates, q.origin, q.prompt_id, "
            "q.prompt_id IS NOT NULL AND EXISTS (SELECT 1 FROM judgements j WHERE j.prompt_id = q.prompt_id) "
            "FROM queue_items q "
            "WHERE (? = 'all' OR (? = 'waiting' AND q.prompt_id IS NULL) OR (? = 'unjudged' AND q.prompt_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM judgements j WHERE j.prompt_id = q.prompt_id))) "
            "AND (? IS NULL OR q.session_id = ?) ORDER BY q.session_id, q.id LIMIT ?",
            [state, state, state, session_id, session_id, -1 if limit is None else limit]).fetchall()
        return [QueueItemRecord(*row[:6], judged=bool(row[6])) for row in rows]

    @serialized
    def queue_counts(self, session_id: int | None = None) -> QueueCounts:
        """Total, generated and judged items of one queue, or of every queue."""
        row = self.db.execute(
            "SELECT COUNT(*), COUNT(q.prompt_id), COALESCE(SUM(q.prompt_id IS NOT NULL AND EXISTS "
            "(SELECT 1 FROM judgements j WHERE j.prompt_id = q.prompt_id)), 0) FROM queue_items q WHERE ? IS NULL OR q.session_id = ?", [session_id, session_id]).fetchone()
        return QueueCounts(total=row[0], generated=row[1], judged=row[2])

    @serialized
    def store_queue_candidates(self, item_id: int, candidates: Sequence[dict[str, Any]]) -> tuple[int, list[int]] | None:
        """The item's prompt (no history: each queued prompt stands alone) and its candidates, and the item
        pointed at them, in ONE transaction; returns the prompt id and the candidate ids. None, writing
        nothing, when the item was generated meanwhile (another generator got there first)."""
        if not candidates:
            raise ValueError("a queued prompt needs at least one candidate")
        with write_transaction(self.db):
            row = self.db.execute("SELECT session_id, text, prompt_id FROM queue_items WHERE id = ?",
                                  [item_id]).fetchone()
            if row is None:
                raise ValueError(f"there is no queue item {item_id}")
            session_id, text, done = row
            if done is not None:
                return None
            prompt_id = self.db["prompts"].insert({"session_id": session_id, "text": text,
                                                   "history_json": json.dumps([]), "created_at": utc_now()}).last_pk
            ids = [self._insert_candidate(prompt_id, **{"slot": slot, **fields})
                   for slot, fields in enumerate(candidates)]
            self.db.execute("UPDATE queue_items SET prompt_id = ? WHERE id = ?", [prompt_id, item_id])
        return prompt_id, ids
