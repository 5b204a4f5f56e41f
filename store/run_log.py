"""Training runs in the store: their lifecycle, live metrics, and runs orphaned by a dead process.

A mixin of `Store`: it uses the store's `db`, `path` and `lock`, and keeps the run methods out of the
conversation code.
"""

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.db import NotFoundError

from store.errors import RecordNotFoundError
from store.processes import process_alive, process_start_time
from store.records import RunRecord
from store.transactions import StoreLock, serialized, utc_now, write_transaction

RUN_STATUSES = ("queued", "loading", "training", "done", "failed", "cancelled")
ACTIVE_RUN_STATUSES = ("queued", "loading", "training")


def _run_record(row: dict[str, Any]) -> RunRecord:
    return RunRecord(
        id=row["id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        status=row["status"],
        message=row["message"],
        pid=row["pid"],
        config=json.loads(row["config_json"]),
        model_id=row["model_id"],
        dataset_hash=row["dataset_hash"],
        pair_ids=json.loads(row["pair_ids_json"]),
        heldout_ids=json.loads(row["heldout_ids_json"]),
        output_dir=row["output_dir"],
        summary=json.loads(row["summary_json"]) if row["summary_json"] is not None else None,
        pid_started=row.get("pid_started"),
    )


__all__ = ["ACTIVE_RUN_STATUSES", "RUN_STATUSES", "RunLog", "process_alive"]


class RunLog:
    """The run methods of `Store`."""

    db: sqlite_utils.Database
    path: Path
    lock: StoreLock

    def _run_row(self, run_id: int) -> dict[str, Any]:
        try:
            return self.db["runs"].get(run_id)
        except NotFoundError:
            raise RecordNotFoundError(f"No training run {run_id} in {self.path}.") from None

    @serialized
    def create_run(
        self,
        config: dict[str, Any],
        model_id: str,
        output_dir: str,
        pair_ids: list[str],
        heldout_ids: list[str],
        dataset_hash: str | None = None,
    ) -> int:
        """Record a new run in status 'queued' and return its id."""
        now = utc_now()
        row = {
            "created_at": now,
            "updated_at": now,
            "status": "queued",
            "message": None,
            "pid": None,
            "config_json": json.dumps(config, sort_keys=True),
            "model_id": model_id,
            "dataset_hash": dataset_hash,
            "pair_ids_json": json.dumps(list(pair_ids)),
            "heldout_ids_json": json.dumps(list(heldout_ids)),
            "output_dir": str(output_dir),
            "summary_json": None,
        }
        with write_transaction(self.db):
            return self.db["runs"].insert(row).last_pk

    @serialized
    def set_run_status(
        self, run_id: int, status: str, message: str | None = None, pid: int | None = None
    ) -> None:
        """Move a run to `status`; `message` replaces the previous one, `pid` is kept unless given.

        A pid is recorded with its process's start time, so a later check is not fooled by another
        program that got the same pid after the trainer died."""
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}; expected one of {', '.join(RUN_STATUSES)}")
        updates: dict[str, Any] = {"status": status, "message": message, "updated_at": utc_now()}
        if pid is not None:
            updates["pid"] = pid
            updates["pid_started"] = process_start_time(pid)
        with write_transaction(self.db):
            self._run_row(run_id)
            self.db["runs"].update(run_id, updates)

    @serialized
    def set_run_summary(self, run_id: int, summary: dict[str, Any]) -> None:
        """Store the run's final summary (metrics, paths) as JSON."""
        with write_transaction(self.db):
            self._run_row(run_id)
            self.db["runs"].update(
                run_id, {"summary_json": json.dumps(summary, sort_keys=True), "updated_at": utc_now()}
            )

    @serialized
    def add_run_metrics(self, run_id: int, step: int, epoch: float | None, metrics: dict[str, Any]) -> int:
        """Append one logged step of metrics to a run; return the row id."""
        row = {
            "run_id": run_id,
            "step": int(step),
            "epoch": epoch,
            "metrics_json": json.dumps(metrics, sort_keys=True),
            "created_at": utc_now(),
        }
        with write_transaction(self.db):
            self._run_row(run_id)
            return self.db["run_metrics"].insert(row).last_pk

    @serialized
    def delete_run_metrics(self, run_id: int, after_step: int | None = None) -> int:
        """Forget a run's metric rows after ``after_step`` (all with None); return how many.

        A resume restarts from the last checkpoint: the steps logged after it, before the process died,
        are logged again and would otherwise appear twice."""
        with write_transaction(self.db):
            self._run_row(run_id)
            cursor = self.db.execute(
                "DELETE FROM run_metrics WHERE run_id = ? AND (? IS NULL OR step > ?)",
                [run_id, after_step, after_step],
            )
            return cursor.rowcount

    @serialized
    def run_metrics(self, run_id: int, after_step: int | None = None) -> list[dict[str, Any]]:
        """A run's metrics in step order, each the logged dict plus 'step' and 'epoch'.

        `after_step` returns only later steps, so a live chart can poll for what is new.
        """
        rows = self.db.query(
            "SELECT step, epoch, metrics_json FROM run_metrics "
            "WHERE run_id = ? AND (? IS NULL OR step > ?) ORDER BY step, id",
            [run_id, after_step, after_step],
        )
        return [
            {**json.loads(row["metrics_json"]), "step": row["step"], "epoch": row["epoch"]} for row in rows
        ]

    @serialized
    def get_run(self, run_id: int) -> RunRecord:
        """The run with this id (RecordNotFoundError if there is none)."""
        return _run_record(self._run_row(run_id))

    @serialized
    def list_runs(self) -> list[RunRecord]:
        """Every run, newest first."""
        return [
            _run_record(row) for row in self.db.query("SELECT * FROM runs ORDER BY created_at DESC, id DESC")
        ]

    @serialized
    def mark_stale_runs(self, run_ids: Iterable[int] | None = None, when: str = "when the studio started") -> list[int]:
        """Fail every unfinished run (or each of `run_ids`) whose training process is gone; return their ids.

        Called when the studio starts, and by commands about one run (report, compare, the train
        screen): a run left 'training' by a crash, a kill, a reboot, or a trainer that could not record
        its own failure (a locked database, a full disk) would otherwise look alive for ever. A pid
        now used by another program (its start time differs) counts as gone. A 'queued' run with no
        pid is a prepared run (`train --prepare-only`, or one about to start): it is not dead.
        """
        wanted = None if run_ids is None else set(run_ids)

        def dead_runs() -> list[tuple[int, str]]:
            rows = self.db.query(
                "SELECT id, status, pid, pid_started FROM runs WHERE status IN (?, ?, ?) ORDER BY id",
                list(ACTIVE_RUN_STATUSES),
            )
            found = []
            for row in list(rows):
                if wanted is not None and row["id"] not in wanted:
                    continue
                message = _gone_message(row["status"], row["pid"], row["pid_started"], when)
                if message is not None:
                    found.append((row["id"], message))
            return found

        # Read first, so a screen can ask every second without taking the write lock each time; then
        # decide again inside the transaction (a trainer may have recorded its end in between).
        if not dead_runs():
            return []
        with write_transaction(self.db):
            stale = dead_runs()
            for run_id, message in stale:
                self.db["runs"].update(run_id, {"status": "failed", "message": message, "updated_at": utc_now()})
        return [run_id for run_id, _ in stale]


def _gone_message(status: str, pid: int | None, started: str | None, when: str) -> str | None:
    """Why an active run is dead (its failure message), or None while it may still be running."""
    if pid is None:
        if status == "queued":
            return None
        return f"the training process (no pid recorded) is gone; marked failed {when}"
    if process_alive(pid):
        if process_alive(pid, started):
            return None
        return (f"the training process (pid {pid}) is gone: that pid now belongs to another program; "
                f"marked failed {when}")
    return f"the training process (pid {pid}) is gone; marked failed {when}"
