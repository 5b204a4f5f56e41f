"""Blind comparison votes and before/after evaluations, stored with the run they judge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlite_utils

from store.transactions import StoreLock, serialized, utc_now, write_transaction

VOTES = ("a", "b", "tie")


class Evaluations:
    """The evaluation methods of `Store` (mixed in, like `RunLog`)."""

    db: sqlite_utils.Database
    path: Path
    lock: StoreLock

    @serialized
    def record_vote(self, run_id: int, prompt: str, seed: int | None, tuned_on_left: bool, vote: str,
                    left_text: str | None = None, right_text: str | None = None) -> int:
        """Store one blind vote ('a' = left, 'b' = right, 'tie'); committed before returning."""
        if vote not in VOTES:
            raise ValueError(f"unknown vote {vote!r}; expected one of {', '.join(VOTES)}")
        with write_transaction(self.db):
            self._run_row(run_id)  # type: ignore[attr-defined]
            return self.db["comparison_votes"].insert({
                "run_id": run_id, "prompt": prompt, "seed": seed, "tuned_on_left": int(tuned_on_left),
                "vote": vote, "left_text": left_text, "right_text": right_text, "created_at": utc_now(),
            }).last_pk

    @serialized
    def votes(self, run_id: int) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT prompt, seed, tuned_on_left, vote, created_at FROM comparison_votes WHERE run_id = ? "
            "ORDER BY id", [run_id],
        )
        return [{**row, "tuned_on_left": bool(row["tuned_on_left"])} for row in rows]

    @serialized
    def save_evaluation(self, run_id: int, kind: str, result: dict[str, Any]) -> int:
        """Keep an evaluation of a run (e.g. kind 'heldout_metrics'); the newest of a kind wins on read."""
        with write_transaction(self.db):
            self._run_row(run_id)  # type: ignore[attr-defined]
            return self.db["run_evaluations"].insert({
                "run_id": run_id, "kind": kind, "result_json": json.dumps(result, sort_keys=True),
                "created_at": utc_now(),
            }).last_pk

    @serialized
    def latest_evaluation(self, run_id: int, kind: str) -> dict[str, Any] | None:
        rows = list(self.db.query(
            "SELECT result_json FROM run_evaluations WHERE run_id = ? AND kind = ? ORDER BY id DESC LIMIT 1",
            [run_id, kind],
        ))
        return json.loads(rows[0]["result_json"]) if rows else None
