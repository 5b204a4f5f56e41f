"""`Store`, the one object the app uses to read and write the studio database."""

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import sqlite_utils
from sqlite_utils.db import NotFoundError

from store.database import open_database
from store.datasets.store_mixin import Datasets
from store.errors import RecordNotFoundError, StoreError
from store.evaluations import Evaluations
from store.feedback import Feedback
from store.judgement_rows import check_role, check_source, insert_judgement, insert_turn
from store.labelling_queue import QUEUE_TITLE, LabellingQueue
from store.locations import default_db_path
from store.pairs import PreferencePair, read_pairs
from store.predicted_ratings import PredictedRatings
from store.records import CandidateRecord, JudgementRecord, SessionRecord, TurnRecord, Verdict
from store.reward_scores import RewardScores
from store.run_log import RunLog
from store.safety_checks import SafetyChecks
from store.schema import schema_version
from store.transactions import (
    ATTEMPT_BUSY_TIMEOUT_MS,
    BUSY_LIMIT_S,
    StoreLock,
    is_busy,
    retry_busy,
    serialized,
    utc_now,
    write_transaction,
)


def _session_record(row: dict[str, Any]) -> SessionRecord:
    return SessionRecord(
        id=row["id"],
        created_at=row["created_at"],
        title=row["title"],
        system_prompt=row["system_prompt"],
        model_id=row["model_id"],
    )


def _candidate_record(row: dict[str, Any]) -> CandidateRecord:
    return CandidateRecord(
        id=row["id"],
        prompt_id=row["prompt_id"],
        slot=row["slot"],
        text=row["text"],
        rendered_prompt=row["rendered_prompt"],
        model_id=row["model_id"],
        model_sha256=row["model_sha256"],
        adapter=row["adapter"],
        sampling=json.loads(row["sampling_json"]),
        seed=row["seed"],
        finish_reason=row["finish_reason"],
        n_tokens=row["n_tokens"],
        duration_s=row["duration_s"],
    )


def _prompt_row(session_id: int, text: str, history: list[dict[str, str]]) -> dict[str, Any]:
    """A ``prompts`` row: the user's text and the conversation before it, as JSON."""
    return {"session_id": session_id, "text": text, "history_json": json.dumps(history, ensure_ascii=False),
            "created_at": utc_now()}


# Verdicts with more to store than a judgement row, each written by its own method (store/feedback.py).
_OWN_METHOD = {Verdict.RANKED: "record_ranking", Verdict.ALL_BAD: "record_ranking(all_bad=True)",
               Verdict.GOOD: "record_label", Verdict.BAD: "record_label"}


def _parse_verdict(verdict: Verdict | str) -> Verdict:
    try:
        return Verdict(verdict)
    except ValueError:
        known = ", ".join(v.value for v in Verdict)
        raise ValueError(f"unknown verdict {verdict!r}; expected one of {known}") from None


class Store(RunLog, Evaluations, Datasets, Feedback, LabellingQueue, SafetyChecks, RewardScores, PredictedRatings):
    """The studio database: sessions, turns, prompts, candidates, judgements (every feedback kind), pairs, runs.

    Every write is its own committed transaction (several rows at once commit together or not at
    all). Methods are safe to call from the UI thread and from workers. While another process holds
    the write lock, a call retries for up to `busy_limit_s` seconds (see `waiting_at_most`), then raises
    StoreBusyError having written nothing.
    """

    def __init__(self, path: Path, db: sqlite_utils.Database, busy_limit_s: float = BUSY_LIMIT_S) -> None:
        self.path = path
        self.db = db
        self.lock = StoreLock()  # public: the mixins and the import staging take it too
        self.busy_limit_s = busy_limit_s
        self._limits = threading.local()
        # PRAGMAs take no parameters; the value is our own constant.
        db.execute(f"PRAGMA busy_timeout = {int(ATTEMPT_BUSY_TIMEOUT_MS)}")

    @classmethod
    def open(cls, path: Path | None = None, busy_limit_s: float = BUSY_LIMIT_S) -> Self:
        """Open the database at `path` (the user's default one when None), creating and migrating it."""
        resolved = Path(path).expanduser() if path is not None else default_db_path()

        def attempt() -> sqlite_utils.Database:
            try:
                return open_database(resolved)
            except StoreError as error:
                if is_busy(error.__cause__):  # another writer held it past the open's own wait: retry
                    raise error.__cause__ from None
                raise

        db = retry_busy(attempt, path=resolved, limit_s=busy_limit_s, what="opening it")
        return cls(resolved, db, busy_limit_s)

    def busy_limit(self) -> float:
        """How long a call from this thread keeps retrying a busy database."""
        return getattr(self._limits, "seconds", self.busy_limit_s)

    @contextmanager
    def waiting_at_most(self, seconds: float) -> Iterator[None]:
        """Within the block, calls from this thread give up on a busy database after `seconds`.

        The UI thread uses a short limit and hands a write that did not get through to a worker, so a
        busy file never freezes the screen.
        """
        previous = getattr(self._limits, "seconds", None)
        self._limits.seconds = seconds
        try:
            yield
        finally:
            if previous is None:
                del self._limits.seconds
            else:
                self._limits.seconds = previous

    @serialized
    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    @serialized
    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        return schema_version(self.db)

    def _row(self, table: str, record_id: int, what: str) -> dict[str, Any]:
        try:
            return self.db[table].get(record_id)
        except NotFoundError:
            raise RecordNotFoundError(f"No {what} with id {record_id} in {self.path}.") from None

    # Sessions

    @serialized
    def create_session(
        self, system_prompt: str, title: str | None = None, model_id: str | None = None
    ) -> int:
        """Start a session and return its id."""
        row = {"created_at": utc_now(), "title": title, "system_prompt": system_prompt, "model_id": model_id}
        with write_transaction(self.db):
            return self.db["sessions"].insert(row).last_pk

    @serialized
    def get_session(self, session_id: int) -> SessionRecord:
        """The session with this id (RecordNotFoundError if there is none)."""
        return _session_record(self._row("sessions", session_id, "session"))

    @serialized
    def update_system_prompt(self, session_id: int, text: str) -> None:
        """Replace a session's system prompt."""
        with write_transaction(self.db):
            self._row("sessions", session_id, "session")
            self.db["sessions"].update(session_id, {"system_prompt": text})

    @serialized
    def list_sessions(self) -> list[SessionRecord]:
        """Every session, newest first."""
        rows = self.db.query("SELECT * FROM sessions ORDER BY created_at DESC, id DESC")
        return [_session_record(row) for row in rows]

    @serialized
    def latest_session(self) -> SessionRecord | None:
        """The newest chat session, or None in a new store. Labelling queues are sessions too but not
        conversations: a queue's system prompt must not become the chat's next one."""
        rows = list(self.db.query("SELECT * FROM sessions WHERE title IS NOT ? ORDER BY created_at DESC, id DESC "
                                  "LIMIT 1", [QUEUE_TITLE]))
        return _session_record(rows[0]) if rows else None

    # The conversation

    @serialized
    def add_turn(self, session_id: int, role: str, content: str, candidate_id: int | None = None) -> int:
        """Append a message to a session's conversation and return its id; its idx is the next free one."""
        check_role(role)
        with write_transaction(self.db):
            self._row("sessions", session_id, "session")
            if candidate_id is not None:
                self._row("candidates", candidate_id, "candidate")
            return self._insert_turn(session_id, role, content, candidate_id, None)

    def _insert_turn(self, session_id: int, role: str, content: str, candidate_id: int | None,
                     judgement_id: int | None) -> int:
        return insert_turn(self.db, session_id, role, content, candidate_id, judgement_id)

    @serialized
    def turns(self, session_id: int) -> list[TurnRecord]:
        """A session's conversation in order."""
        rows = self.db.query(
            "SELECT id, session_id, idx, role, content, candidate_id, judgement_id FROM turns "
            "WHERE session_id = ? ORDER BY idx",
            [session_id],
        )
        return [TurnRecord(**row) for row in rows]

    @serialized
    def add_prompt(self, session_id: int, text: str, history: list[dict[str, str]]) -> int:
        """Record a user prompt with the conversation before it ({role, content} dicts); return its id."""
        row = _prompt_row(session_id, text, history)
        with write_transaction(self.db):
            self._row("sessions", session_id, "session")
            return self.db["prompts"].insert(row).last_pk

    @serialized
    def add_candidate(
        self,
        prompt_id: int,
        slot: int,
        text: str,
        rendered_prompt: str,
        model_id: str,
        model_sha256: str,
        sampling: dict[str, Any],
        seed: int,
        adapter: str | None = None,
        finish_reason: str | None = None,
        n_tokens: int | None = None,
        duration_s: float | None = None,
    ) -> int:
        """Record a generated reply with everything needed to reproduce it; return its id."""
        with write_transaction(self.db):
            self._row("prompts", prompt_id, "prompt")
            return self._insert_candidate(
                prompt_id, slot, text, rendered_prompt, model_id, model_sha256, sampling, seed, adapter=adapter,
                finish_reason=finish_reason, n_tokens=n_tokens, duration_s=duration_s,
            )

    @serialized
    def add_prompt_with_candidates(
        self, session_id: int, text: str, history: list[dict[str, str]], candidates: Sequence[dict[str, Any]]
    ) -> tuple[int, list[int]]:
        """Record a user prompt and its candidates in ONE transaction; return the prompt id and the candidate
        ids in order. Each candidate is a dict of ``add_candidate``'s keyword arguments (without
        ``prompt_id``; ``slot`` defaults to its position). A crash or a refused candidate keeps nothing: a
        prompt is never stored without its candidates."""
        prompt_row = _prompt_row(session_id, text, history)
        with write_transaction(self.db):
            self._row("sessions", session_id, "session")
            prompt_id = self.db["prompts"].insert(prompt_row).last_pk
            ids = [self._insert_candidate(prompt_id, **{"slot": slot, **fields})
                   for slot, fields in enumerate(candidates)]
        return prompt_id, ids

    def _insert_candidate(
        self,
        prompt_id: int,
        slot: int,
        text: str,
        rendered_prompt: str,
        model_id: str,
        model_sha256: str,
        sampling: dict[str, Any],
        seed: int,
        adapter: str | None = None,
        finish_reason: str | None = None,
        n_tokens: int | None = None,
        duration_s: float | None = None,
    ) -> int:
        if slot < 0:
            raise ValueError(f"candidate slot must be 0 or more, got {slot}")
        row = {
            "prompt_id": prompt_id,
            "slot": slot,
            "text": text,
            "rendered_prompt": rendered_prompt,
            "model_id": model_id,
            "model_sha256": model_sha256,
            "adapter": adapter,
            "sampling_json": json.dumps(sampling, sort_keys=True),
            "seed": seed,
            "finish_reason": finish_reason,
            "n_tokens": n_tokens,
            "duration_s": duration_s,
            "created_at": utc_now(),
        }
        return self.db["candidates"].insert(row).last_pk

    @serialized
    def candidates(self, prompt_id: int) -> list[CandidateRecord]:
        """A prompt's candidates in slot order."""
        rows = self.db.query("SELECT * FROM candidates WHERE prompt_id = ? ORDER BY slot, id", [prompt_id])
        return [_candidate_record(row) for row in rows]

    @serialized
    def session_questions(self, session_id: int) -> list[tuple[str, str | None]]:
        """A session's user prompts in the order asked, each with the exact rendered prompt its first
        candidate was generated from (None when none was stored): what comparing on them re-asks."""
        rows = self.db.query(
            "SELECT p.text, (SELECT c.rendered_prompt FROM candidates c WHERE c.prompt_id = p.id "
            "ORDER BY c.slot, c.id LIMIT 1) AS rendered FROM prompts p WHERE p.session_id = ? ORDER BY p.id",
            [session_id],
        )
        return [(row["text"], row["rendered"]) for row in rows]

    # Judgements and the pairs read out of them

    @serialized
    def record_judgement(
        self,
        prompt_id: int,
        verdict: Verdict | str,
        chosen_candidate_id: int | None = None,
        rejected_candidate_id: int | None = None,
        edited_text: str | None = None,
        source: str = "tui",
        adapter: str | None = None,
        turns: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Record the user's verdict on a prompt and return its id, committed before this returns.

        'a'/'b' need the chosen and the rejected candidate, both of this prompt; 'edited' needs the
        edited text. Anything else raises ValueError and writes nothing.

        `turns` are the (role, content) messages the verdict adds to the prompt's session (the user's
        prompt and the reply that continues the conversation). They are written in the same
        transaction, each pointing at the judgement: a crash can never keep one without the other.
        """
        for role, _ in turns:
            check_role(role)
        verdict = _parse_verdict(verdict)
        if verdict in _OWN_METHOD:
            raise ValueError(f"verdict {verdict.value!r} is recorded with {_OWN_METHOD[verdict]}")
        if verdict in (Verdict.A, Verdict.B):
            if chosen_candidate_id is None or rejected_candidate_id is None:
                raise ValueError(
                    f"verdict {verdict.value!r} needs both the chosen and the rejected candidate"
                )
            if chosen_candidate_id == rejected_candidate_id:
                raise ValueError("the chosen and the rejected candidate must differ")
        if verdict == Verdict.EDITED:
            if edited_text is None or not edited_text.strip():
                raise ValueError("verdict 'edited' needs the edited text, and it is empty")
            # Stored as given: the caller puts the edit in the model's whitespace convention (a leading
            # space after "Assistant:"), which is how the candidates it is compared with are stored.
        elif edited_text is not None:
            raise ValueError(f"edited text only goes with verdict 'edited', not {verdict.value!r}")
        check_source(source)
        with write_transaction(self.db):
            self._row("prompts", prompt_id, "prompt")
            own = {
                row[0]
                for row in self.db.execute("SELECT id FROM candidates WHERE prompt_id = ?", [prompt_id])
            }
            for candidate_id in (chosen_candidate_id, rejected_candidate_id):
                if candidate_id is not None and candidate_id not in own:
                    raise ValueError(f"candidate {candidate_id} does not belong to prompt {prompt_id}")
            return insert_judgement(self.db, prompt_id, verdict, chosen_candidate_id, rejected_candidate_id,
                                    edited_text, source, adapter, turns)

    @serialized
    def judgements(
        self, prompt_id: int | None = None, session_id: int | None = None
    ) -> list[JudgementRecord]:
        """Judgements in the order they were made, optionally of one prompt and/or one session."""
        rows = self.db.query(
            "SELECT j.* FROM judgements j JOIN prompts p ON p.id = j.prompt_id "
            "WHERE (? IS NULL OR j.prompt_id = ?) AND (? IS NULL OR p.session_id = ?) ORDER BY j.id",
            [prompt_id, prompt_id, session_id, session_id],
        )
        return [JudgementRecord(**row) for row in rows]

    @serialized
    def pairs(self, session_id: int | None = None) -> list[PreferencePair]:
        """The preference pairs read out of every judgement (or one session's), in judgement order."""
        return read_pairs(self.db, session_id)

    @serialized
    def count_pairs(self, session_id: int | None = None) -> int:
        """How many preference pairs `pairs` would return."""
        return len(read_pairs(self.db, session_id))
