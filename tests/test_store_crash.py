"""Crash safety: a process killed while recording judgements loses none that it reported committed."""

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from store import Store
from store.database import integrity_ok

REPO_ROOT = Path(__file__).resolve().parents[1]

# Prints each judgement id only after record_judgement has returned, i.e. after its commit.
CHILD = """
import sys
from pathlib import Path
from store import Store

store = Store.open(Path(sys.argv[1]))
session_id = store.create_session("crash test")
prompt_id = store.add_prompt(session_id, "hello", [])
a = store.add_candidate(prompt_id, 0, "reply A", "User: hello\\nAssistant:", "m", "0" * 64, {}, 1)
b = store.add_candidate(prompt_id, 1, "reply B", "User: hello\\nAssistant:", "m", "0" * 64, {}, 2)
while True:
    print(store.record_judgement(prompt_id, "a", a, b, source="crash-test"), flush=True)
"""

WANTED = 20
DEADLINE_S = 60


def _pump(stream, lines: "queue.Queue[str | None]") -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("attempt", range(3))
def test_sigkill_loses_no_committed_judgement(tmp_path: Path, attempt: int) -> None:
    db_path = tmp_path / "studio.db"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PREFSTUDIO_HOME"] = str(tmp_path / "home")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True)
    reader.start()
    reported: list[int] = []
    try:
        while len(reported) < WANTED:
            line = lines.get(timeout=DEADLINE_S)
            if line is None:
                pytest.fail(f"the child exited early: {child.wait()} {child.stderr.read()}")
            reported.append(int(line))
    finally:
        # Killed wherever it happens to be: mid-transaction, mid-fsync or between judgements.
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=DEADLINE_S)
    reader.join(timeout=DEADLINE_S)
    while (line := lines.get_nowait()) is not None:
        reported.append(int(line))  # printed before the kill, so committed too
    child.stderr.close()

    with Store.open(db_path) as store:
        assert integrity_ok(store.db)
        stored = {j.id for j in store.judgements()}
        assert set(reported) <= stored
        assert len(store.pairs()) == len(stored)
