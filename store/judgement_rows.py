"""The rows every kind of judgement writes: the judgement itself and the conversation turns it adds.

Shared by `Store.record_judgement` (A/B, tie, both bad, edited) and the feedback methods
(store/feedback.py: rankings, labels), so each kind writes its judgement and its turns the same way, inside
the caller's one write transaction.
"""

from collections.abc import Sequence

import sqlite_utils

from store.errors import RecordNotFoundError
from store.records import Verdict
from store.transactions import database_file, utc_now

TURN_ROLES = ("user", "assistant", "system")


def check_role(role: str) -> None:
    """ValueError unless `role` is a turn role the store keeps."""
    if role not in TURN_ROLES:
        raise ValueError(f"unknown turn role {role!r}; expected one of {', '.join(TURN_ROLES)}")


def check_source(source: str) -> None:
    """ValueError for an empty source: every judgement says where it came from."""
    if not source:
        raise ValueError("a judgement needs a source (such as 'tui' or 'cli')")


def insert_turn(db: sqlite_utils.Database, session_id: int, role: str, content: str, candidate_id: int | None,
                judgement_id: int | None) -> int:
    """Append a turn to a session; its idx is computed under the write lock, so two writers never share one."""
    idx = db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM turns WHERE session_id = ?", [session_id]).fetchone()[0]
    row = {"session_id": session_id, "idx": idx, "role": role, "content": content, "candidate_id": candidate_id,
           "judgement_id": judgement_id, "created_at": utc_now()}
    return db["turns"].insert(row).last_pk


def prompt_candidates(db: sqlite_utils.Database, prompt_id: int) -> list[int]:
    """The prompt's candidate ids in slot order; RecordNotFoundError when there is no such prompt."""
    if db.execute("SELECT 1 FROM prompts WHERE id = ?", [prompt_id]).fetchone() is None:
        raise RecordNotFoundError(f"No prompt with id {prompt_id} in {database_file(db)}.")
    return [row[0] for row in db.execute("SELECT id FROM candidates WHERE prompt_id = ? ORDER BY slot, id",
                                         [prompt_id])]


def candidate_prompt(db: sqlite_utils.Database, candidate_id: int) -> int:
    """The prompt a candidate answers; RecordNotFoundError when there is no such candidate."""
    row = db.execute("SELECT prompt_id FROM candidates WHERE id = ?", [candidate_id]).fetchone()
    if row is None:
        raise RecordNotFoundError(f"No candidate with id {candidate_id} in {database_file(db)}.")
    return row[0]


def insert_judgement(
    db: sqlite_utils.Database,
    prompt_id: int,
    verdict: Verdict,
    chosen_candidate_id: int | None,
    rejected_candidate_id: int | None,
    edited_text: str | None,
    source: str,
    adapter: str | None,
    turns: Sequence[tuple[str, str]],
) -> int:
    """Insert a judgement row and the turns it adds to its prompt's session (each pointing at it); return its id.
    The caller has validated everything and holds the write transaction."""
    row = {"prompt_id": prompt_id, "verdict": verdict.value, "chosen_candidate_id": chosen_candidate_id,
           "rejected_candidate_id": rejected_candidate_id, "edited_text": edited_text, "source": source,
           "adapter": adapter, "created_at": utc_now()}
    judgement_id = db["judgements"].insert(row).last_pk
    if turns:
        session_id = db.execute("SELECT session_id FROM prompts WHERE id = ?", [prompt_id]).fetchone()[0]
        for role, content in turns:
            insert_turn(db, session_id, role, content, None, judgement_id)
    return judgement_id
