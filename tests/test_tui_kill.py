"""The chat screen never loses a judgement: not to kill -9 right after the key, not to a busy database.

The kill loop runs the real TUI (App.run_test and Pilot, the real model, a real SQLite file) in a child
process, presses the judgement key and SIGKILLs it: by a timer armed just before the key (0 to a few
ms), and once exactly between the judgement's commit and whatever the screen writes next. Afterwards
every acknowledged judgement is stored, every stored judgement has its two turns, and there is no turn
without its judgement.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import wait_for

from store.database import integrity_ok
from store.studio_store import Store
from studio.inference.engine import SamplingSettings
from studio.settings import StudioSettings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.chat import JUDGE_HINT
from studio.tui.widgets.conversation_turn import ConversationTurn

REPO_ROOT = Path(__file__).resolve().parents[1]

# argv: db, model, mode ("timer" or "after-commit"), delay in ms. Prints "ack <judgement id>" for each
# judgement the screen has moved on from (stored, by its own account), then is killed on the next key.
DRIVER = r"""
import asyncio, os, signal, sys, threading
from dataclasses import replace
from pathlib import Path

from studio.inference import runtime_env  # noqa: F401
from store.studio_store import Store
from studio.inference.engine import SamplingSettings
from studio.settings import StudioSettings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.chat import JUDGE_HINT

db, model, mode, delay_ms = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
store = Store.open(Path(db))
settings = replace(StudioSettings(), model=Path(model), seed=11,
                   sampling=SamplingSettings(max_tokens=4))
app = PreferenceStudioApp(settings=settings, store=store)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_the_judgement_commits() -> None:
    # SQLite reports each statement as it starts: die at the first one after the COMMIT that follows
    # the judgement's INSERT, i.e. exactly between the judgement's transaction and the next write.
    seen = {"insert": False, "commit": False}

    def trace(sql: str) -> None:
        text = sql.strip().lower()
        if seen["commit"]:
            die()
        if text.startswith("insert") and "judgements" in text:
            seen["insert"] = True
        elif seen["insert"] and text.startswith("commit"):
            seen["commit"] = True

    store.db.conn.set_trace_callback(trace)


async def until(pilot, condition) -> None:
    for _ in range(2400):
        if condition():
            return
        await pilot.pause(0.05)
    raise SystemExit("timed out")


def input_ready() -> bool:
    return app.engine is not None and not app.chat.query_one("#prompt-input").disabled


def judging() -> bool:
    return str(app.chat.query_one("#judge-bar").render()) == JUDGE_HINT


async def ask(pilot, text: str) -> None:
    await until(pilot, input_ready)
    app.chat.query_one("#prompt-input").value = text
    await pilot.press("enter")
    await until(pilot, judging)


async def main() -> None:
    async with app.run_test(size=(100, 30)) as pilot:
        await ask(pilot, "Name a colour.")
        await pilot.press("1")
        await until(pilot, input_ready)
        for judgement in store.judgements():
            print("ack", judgement.id, flush=True)
        await ask(pilot, "Name a fruit.")
        if mode == "after-commit":
            kill_after_the_judgement_commits()
        else:
            threading.Timer(delay_ms / 1000, die).start()
        await pilot.press("1")
        await pilot.pause(1.0)
        print("not killed", flush=True)


asyncio.run(main())
"""

KILLS = [("timer", 0), ("timer", 3), ("timer", 10), ("after-commit", 0)]


def check_judgements_and_turns(db_path: Path, acknowledged: set[int]) -> None:
    """Every acknowledged judgement is stored; each stored judgement that continues the conversation has
    its user and assistant turns; no turn is without its judgement."""
    with Store.open(db_path) as store:
        assert integrity_ok(store.db)
        judgements = store.judgements()
        assert acknowledged <= {j.id for j in judgements}
        turns = [turn for session in store.list_sessions() for turn in store.turns(session.id)]
        assert all(turn.judgement_id is not None for turn in turns), "a turn without its judgement"
        for judgement in judgements:
            mine = [turn.role for turn in turns if turn.judgement_id == judgement.id]
            assert mine == ["user", "assistant"], f"judgement {judgement.id} ({judgement.verdict}) has turns {mine}"


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize(("mode", "delay_ms"), KILLS, ids=[f"{m}-{d}ms" for m, d in KILLS])
def test_kill_right_after_the_judgement_key_keeps_judgements_with_their_turns(
        tmp_path: Path, default_model: Path, mode: str, delay_ms: int) -> None:
    db_path = tmp_path / "studio.db"
    env = dict(os.environ, PREFSTUDIO_HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    child = subprocess.run([sys.executable, "-c", DRIVER, str(db_path), str(default_model), mode, str(delay_ms)],
                           capture_output=True, text=True, env=env, timeout=180)
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stdout, child.stderr[-3000:])
    acknowledged = {int(line.split()[1]) for line in child.stdout.splitlines() if line.startswith("ack ")}
    assert acknowledged, child.stdout
    check_judgements_and_turns(db_path, acknowledged)
    if mode == "after-commit":  # killed after the judgement's commit: it must be there, with its turns
        with Store.open(db_path) as store:
            assert len(store.judgements()) == len(acknowledged) + 1


@pytest.fixture
def make_app(tmp_path, default_model, studio_home):
    stores: list[Store] = []

    def build() -> PreferenceStudioApp:
        store = Store.open(tmp_path / "studio.db")
        stores.append(store)
        settings = replace(StudioSettings(), model=default_model, seed=5,
                           sampling=SamplingSettings(max_tokens=8))
        return PreferenceStudioApp(settings=settings, store=store)

    yield build
    for store in stores:
        store.close()


async def test_a_busy_database_keeps_the_judgement_says_so_and_saves_it_when_free(make_app, tmp_path):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        chat = app.chat
        prompt_input, bar = chat.query_one("#prompt-input"), chat.query_one("#judge-bar")
        await wait_for(pilot, lambda: app.engine is not None and not prompt_input.disabled)
        prompt_input.value = "Say hello."
        await pilot.press("enter")
        await wait_for(pilot, lambda: str(bar.render()) == JUDGE_HINT)
        # Another program holds the write lock (an old studio's import, an sqlite3 shell inside BEGIN).
        blocker = sqlite3.connect(tmp_path / "studio.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            await pilot.press("1")
            notice = chat.query_one("#notice")
            await wait_for(pilot, lambda: "database busy, retrying" in str(notice.render()), timeout=10)
            assert notice.display and str(bar.render()) == "saving your judgement: database busy, retrying…"
            await pilot.press("2")  # another verdict on the same answers is not taken while one is saving
            await pilot.press("i")  # nor is moving on before it is stored
            await pilot.press("ctrl+q")  # quitting first says the judgement would be lost
            await pilot.pause(0.2)
            assert app.is_running
            assert any("quitting now loses it" in n for n in app.notices)
            await pilot.pause(1.5)  # longer than one retry: still kept, still retrying, the app still up
            assert app.is_running and str(bar.render()) == "saving your judgement: database busy, retrying…"
            assert prompt_input.disabled
            assert blocker.execute("SELECT COUNT(*) FROM judgements").fetchone() == (0,)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await wait_for(pilot, lambda: not prompt_input.disabled, timeout=30)
        (judgement,) = app.store.judgements()
        assert judgement.verdict == "a"
        turns = app.store.turns(app.store.latest_session().id)
        assert [(t.role, t.judgement_id) for t in turns] == [("user", judgement.id), ("assistant", judgement.id)]
        assert turns[1].content == app.store.candidates(judgement.prompt_id)[0].text.strip()  # A, continuing
        assert [t.text for t in chat.query(ConversationTurn)] == ["Say hello.", turns[1].content]
        assert not notice.display
