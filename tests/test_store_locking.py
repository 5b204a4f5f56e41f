"""Writers beside each other: a long import never holds the write lock, every writer waits its turn
instead of failing, and an import stays all-or-nothing when it is killed or runs twice at once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlite_utils

from store import SCHEMA_VERSION, Store, StoreBusyError
from store.database import integrity_ok
from store.datasets.importing import import_dataset
from store.schema import MIGRATIONS

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_pairs(path: Path, start: int, stop: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(start, stop):
            handle.write(json.dumps({"prompt": f"Question {i}: why?", "chosen": f"Because {i}. " * 20,
                                     "rejected": f"No {i}."}) + "\n")
    return path


def child_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, PREFSTUDIO_HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def write_lock_holds(store: Store) -> list[float]:
    """Start recording how long each write transaction on this store's connection lasts (seconds)."""
    holds: list[float] = []
    began: list[float] = []

    def trace(sql: str) -> None:
        text = sql.lstrip().upper()
        if text.startswith("BEGIN IMMEDIATE"):
            began.append(time.perf_counter())
        elif text.startswith(("COMMIT", "ROLLBACK")) and began:
            holds.append(time.perf_counter() - began.pop())

    store.db.conn.set_trace_callback(trace)
    return holds


# Records a judgement and a training step's metrics (and status) over and over, in its own process,
# timing each; stops when the stop file appears and prints what it saw as JSON.
WRITER = r"""
import json, sys, time
from pathlib import Path
from store import Store

db, stop, prompt_id, a, b, run_id = Path(sys.argv[1]), Path(sys.argv[2]), *map(int, sys.argv[3:7])
waits, errors, step = [], [], 0
with Store.open(db) as store:
    print("ready", flush=True)
    while not stop.exists():
        step += 1
        started = time.perf_counter()
        try:
            store.record_judgement(prompt_id, "a", a, b, source="lock-test")
            store.add_run_metrics(run_id, step, None, {"loss": 1.0 / step})
            store.set_run_status(run_id, "training", f"step {step}")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        waits.append(time.perf_counter() - started)
        time.sleep(0.02)
print(json.dumps({"waits": waits, "errors": errors, "steps": step}), flush=True)
"""


def test_a_long_import_never_holds_the_lock_while_a_judgement_and_a_training_step_are_recorded(
        tmp_path: Path) -> None:
    db = tmp_path / "studio.db"
    with Store.open(db) as store:
        session = store.create_session("sys")
        prompt = store.add_prompt(session, "hello", [])
        a, b = (store.add_candidate(prompt, slot, f"reply {slot}", "User: hello\nAssistant:", "m", "0" * 64, {}, slot)
                for slot in (0, 1))
        run_id = store.create_run({}, "m", str(tmp_path / "run"), [], [])
    data = write_pairs(tmp_path / "big.jsonl", 0, 24000)  # 6 Arrow batches
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(stop), str(prompt), str(a), str(b),
                               str(run_id)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=child_env(tmp_path))
    try:
        assert writer.stdout.readline().strip() == "ready"
        with Store.open(db) as store:
            holds = write_lock_holds(store)
            started = time.perf_counter()
            # A file that takes seconds to read (a 470 MB one took 13 s): each batch read costs 0.6 s here.
            report = import_dataset(store, data, on_progress=lambda n: time.sleep(0.6), stage_bytes=1 << 20)
            import_s = time.perf_counter() - started
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=120)
    seen = json.loads(out.strip().splitlines()[-1])
    assert report.n_added == 24000 and import_s > 3.0
    assert seen["errors"] == [], seen["errors"]
    assert seen["steps"] >= 10, (seen, err)  # it kept writing while the import ran
    # One step (a judgement, a metrics row, a status: three commits) waits for at most one staged write, not
    # the import: the old import made it wait the whole import, or fail after the 5 s busy timeout. The
    # bound is loose for a loaded machine (fsyncs and CPU shared with other work).
    assert max(seen["waits"]) < 1.5, f"a writer waited {max(seen['waits']):.2f} s during a {import_s:.1f} s import"
    assert len(holds) >= 4 and max(holds) < 0.5, holds
    with Store.open(db) as store:
        assert integrity_ok(store.db)
        assert len(store.judgements()) == seen["steps"] and len(store.run_metrics(run_id)) == seen["steps"]
        assert len(store.dataset_pairs("big")) == 24000


def test_a_writer_waits_for_the_lock_and_gives_up_clearly_after_its_limit(tmp_path: Path) -> None:
    db = tmp_path / "studio.db"
    with Store.open(db, busy_limit_s=0.5) as store:
        blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreBusyError, match=r"studio\.db stayed locked by another program for .* while "
                                                 r"running create_session; nothing was written"):
            store.create_session("blocked")
        assert 0.5 <= time.monotonic() - started < 3.0
        # Released while a writer waits (within its limit): it goes through.
        threading.Timer(0.3, blocker.execute, ["ROLLBACK"]).start()
        with store.waiting_at_most(5.0):
            session_id = store.create_session("waited")
        assert [s.id for s in store.list_sessions()] == [session_id]
        blocker.close()


def test_a_busy_database_does_not_end_a_training_run(tmp_path: Path) -> None:
    # The trainer's metrics callback: a step it cannot store yet is kept and stored with the next one.
    from transformers import TrainerControl, TrainerState

    from trainers.run.callbacks import MetricsRecorder

    db = tmp_path / "studio.db"
    lines: list[str] = []
    with Store.open(db, busy_limit_s=0.3) as store:
        run_id = store.create_run({}, "m", str(tmp_path / "run"), [], [])
        recorder = MetricsRecorder(lambda step, epoch, logs: store.add_run_metrics(run_id, step, epoch, logs),
                                   tmp_path / "metrics.jsonl", echo=lines.append)
        state, control = TrainerState(), TrainerControl()
        recorder.on_train_begin(None, state, control)
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        state.global_step = 1
        recorder.on_log(None, state, control, logs={"loss": 0.7})
        assert store.run_metrics(run_id) == []
        assert any("stayed locked" in line and "stored with the next one" in line for line in lines)
        blocker.execute("ROLLBACK")
        blocker.close()
        state.global_step = 2
        recorder.on_log(None, state, control, logs={"loss": 0.5})
        assert [(m["step"], m["loss"]) for m in store.run_metrics(run_id)] == [(1, 0.7), (2, 0.5)]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


# Imports a file and SIGKILLs itself once `after` records were read (so some staged batches are written).
KILLED_IMPORT = r"""
import os, signal, sys
from pathlib import Path
from store import Store
from store.datasets.importing import import_dataset

def progress(n):
    if n >= int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)

with Store.open(Path(sys.argv[1])) as store:
    import_dataset(store, Path(sys.argv[2]), name="big", on_progress=progress, stage_bytes=1)
"""


def test_a_killed_import_shows_nothing_and_the_next_import_clears_what_it_staged(tmp_path: Path) -> None:
    db = tmp_path / "studio.db"
    data = write_pairs(tmp_path / "big.jsonl", 0, 12000)
    child = subprocess.run([sys.executable, "-c", KILLED_IMPORT, str(db), str(data), "8000"],
                           capture_output=True, text=True, env=child_env(tmp_path), timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    with Store.open(db) as store:
        staged = store.db.execute("SELECT COUNT(*) FROM dataset_pair_batches").fetchone()[0]
        assert staged >= 1  # written before the kill, in their own transactions
        assert store.list_datasets() == []  # and invisible
        assert store.db.execute("SELECT state FROM dataset_imports").fetchall() == [("staging",)]
        small = write_pairs(tmp_path / "small.jsonl", 100000, 100010)
        assert import_dataset(store, small, name="other").n_added == 10
        # The dead import's rows, its dataset row and its claim are gone; the finished import is all there is.
        assert store.db.execute("SELECT COUNT(*) FROM dataset_pair_batches").fetchone()[0] == 1
        assert store.db.execute("SELECT dataset_name, state FROM dataset_imports").fetchall() == [("other", "done")]
        assert [d.name for d in store.list_datasets()] == ["other"]
        # The name the killed import held is free again, and its pairs import whole.
        assert import_dataset(store, data, name="big").n_added == 12000
        assert store.get_dataset("big").n_items == 12000
        assert integrity_ok(store.db)


def test_two_imports_of_one_dataset_at_once_store_each_pair_once(tmp_path: Path) -> None:
    db = tmp_path / "studio.db"
    Store.open(db).close()
    first = write_pairs(tmp_path / "first.jsonl", 0, 9000)
    second = write_pairs(tmp_path / "second.jsonl", 4500, 13500)  # half of it is in the first file
    reports, errors = {}, []
    # Each import stages several batches, pausing between them, so the two overlap in time.
    both_started = threading.Barrier(2)

    def run(path: Path) -> None:
        try:
            with Store.open(db) as store:
                both_started.wait()
                reports[path.name] = import_dataset(store, path, name="shared", stage_bytes=1,
                                                    on_progress=lambda n: time.sleep(0.05))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(path,)) for path in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    added = sorted(report.n_added for report in reports.values())
    assert added == [4500, 9000]  # whichever went second skipped the 4500 the first had stored
    with Store.open(db) as store:
        pairs = store.dataset_pairs("shared")
        assert len(pairs) == 13500 == len({(p.prompt, p.chosen, p.rejected) for p in pairs})
        assert len({p.pair_id for p in pairs}) == 13500


def _version_4_file(path: Path) -> None:
    db = sqlite_utils.Database(path)
    db["meta"].create({"key": str, "value": str}, pk="key")
    for migration in MIGRATIONS[:4]:
        migration(db)
    db["meta"].insert({"key": "schema_version", "value": "4"})
    db["sessions"].insert({"id": 1, "created_at": "t", "system_prompt": "kept"})
    db["turns"].insert({"id": 1, "session_id": 1, "idx": 0, "role": "user", "content": "hi", "created_at": "t"})
    db["runs"].insert({"id": 1, "created_at": "t", "updated_at": "t", "status": "training", "pid": os.getpid(),
                       "config_json": "{}", "model_id": "m", "pair_ids_json": "[]", "heldout_ids_json": "[]",
                       "output_dir": "/tmp/r"})
    db.conn.close()


def test_a_version_4_file_is_upgraded_keeping_its_data(tmp_path: Path) -> None:
    db = tmp_path / "v4.db"
    _version_4_file(db)
    data = write_pairs(tmp_path / "pairs.jsonl", 0, 5)
    with Store.open(db) as store:
        assert store.schema_version == SCHEMA_VERSION == 7  # through v5 (staged imports), v6 (feedback kinds), v7
        assert [(t.role, t.content, t.judgement_id) for t in store.turns(1)] == [("user", "hi", None)]
        # A pid recorded without its start time is still checked by the pid alone.
        assert store.mark_stale_runs() == [] and store.get_run(1).status == "training"
        assert import_dataset(store, data, name="new").n_added == 5
        assert store.get_dataset("new").n_items == 5
        assert integrity_ok(store.db)
