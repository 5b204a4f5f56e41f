"""Queue mode in the studio (F9): the next queued prompt with its candidates already there, one key per item,
the next item at once, the rest generating in the background; and a kill -9 while judging loses nothing
acknowledged. The real app through Pilot, the real model, a real SQLite file, a real child process for kills.
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
from textual.widgets import Input

from store.database import integrity_ok
from store.datasets.importing import import_dataset
from store.studio_store import Store
from studio.inference.engine import SamplingSettings
from studio.labelling_queue import QueueGenerator
from studio.settings import StudioSettings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.modals import NameScreen
from studio.tui.screens.queue import EMPTY_TEXT, SAVING_TEXT, QueueScreen

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLING = SamplingSettings(max_tokens=4)


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


def make_app(store: Store, model: Path, engine) -> PreferenceStudioApp:  # noqa: ANN001
    settings = replace(StudioSettings(), model=model, seed=5, sampling=SAMPLING)
    return PreferenceStudioApp(settings=settings, store=store, engine=engine)


def queue(store: Store, n: int, texts: list[str]) -> int:
    queue_id = store.find_queue("Answer in one word.") or store.create_queue("Answer in one word.")
    store.enqueue(queue_id, [(t, f"t #{i}") for i, t in enumerate(texts, start=1)], n)
    return queue_id


def shown(screen: QueueScreen, selector: str) -> str:
    return str(screen.query_one(selector).render())


async def open_queue(app: PreferenceStudioApp, pilot) -> QueueScreen:  # noqa: ANN001
    await wait_for(pilot, lambda: app.engine is not None)
    await pilot.press("f9")
    await wait_for(pilot, lambda: isinstance(app.screen, QueueScreen))
    return app.screen


async def test_queue_mode_judges_one_key_per_item_while_the_rest_generates(store, default_model, engine):
    queue(store, 2, ["Name a colour.", "Name a fruit.", "Name a city."])
    QueueGenerator(store, engine, SAMPLING, base_seed=1).run(limit=2)  # the third is left to the screen
    app = make_app(store, default_model, engine)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await open_queue(app, pilot)
        first, second, third = store.queue_items()
        assert screen.entry is not None and screen.entry.item.id == first.id
        assert shown(screen, "#queue-prompt") == "Name a colour."
        candidates = store.candidates(first.prompt_id)
        assert [p.text for p in screen.panels[:2]] == [c.text for c in candidates]
        assert [p.display for p in screen.panels] == [True, True, False, False]
        assert "1 A better · 2 B better · t tie · x both bad" in shown(screen, "#queue-bar")
        await pilot.press("1")
        (judgement,) = store.judgements()
        assert (judgement.prompt_id, judgement.verdict, judgement.source) == (first.prompt_id, "a", "queue")
        assert judgement.chosen_candidate_id == candidates[0].id
        assert screen.entry.item.id == second.id  # the next item at once
        assert shown(screen, "#queue-prompt") == "Name a fruit."
        # The third prompt generates in the background meanwhile; progress says where things are.
        await wait_for(pilot, lambda: store.queue_counts().waiting == 0, timeout=60)
        await wait_for(pilot, lambda: "generated 3/3 (0 left)" in shown(screen, "#queue-progress"), timeout=10)
        assert "judged 1/3 (2 left), " in shown(screen, "#queue-progress")  # with its items per minute
        await pilot.press("2")
        assert screen.entry.item.id == third.id
        await pilot.press("t")
        assert [(j.prompt_id, j.verdict) for j in store.judgements()] == [
            (first.prompt_id, "a"), (second.prompt_id, "b"), (store.queue_items()[2].prompt_id, "tie")]
        assert screen.entry is None and shown(screen, "#queue-prompt") == EMPTY_TEXT
        assert "judged 3/3 (0 left)" in shown(screen, "#queue-progress")
        assert store.db.execute("SELECT COUNT(*) FROM turns").fetchone() == (0,)  # queue items stand alone
        await pilot.press("escape")
        assert not isinstance(app.screen, QueueScreen)


async def test_ranking_three_with_undo_and_thumbs_on_one(store, default_model, engine):
    queue(store, 3, ["Name three colours."])
    queue(store, 1, ["Name a planet."])
    QueueGenerator(store, engine, SAMPLING, base_seed=2).run()
    ranked, thumbed = store.queue_items()
    app = make_app(store, default_model, engine)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await open_queue(app, pilot)
        assert [p.display for p in screen.panels] == [True, True, True, False]
        assert "press 1–3 best first" in shown(screen, "#queue-bar")
        # a rates the highlighted reply (▶ picks B): quality 4, helpfulness 2, standalone, before the verdict
        await pilot.press("right", "a")
        await wait_for(pilot, lambda: screen.panels[1].rating_row is not None and screen.panels[1].rating_row.has_focus)
        await pilot.press("4", "2", "enter")
        candidate_b = store.candidates(ranked.prompt_id)[1]
        await wait_for(pilot, lambda: len(store.ratings(candidate_b.id)) == 2, timeout=10)
        assert [(r.attribute, r.value, r.judgement_id, r.source) for r in store.ratings(candidate_b.id)] == [
            ("quality", 4, None, "queue"), ("helpfulness", 2, None, "queue")]
        assert screen.panels[1].rating_row is None and screen.bar.has_focus
        await pilot.press("enter")  # nothing ranked yet: says what to do, stores nothing
        assert store.judgements() == [] and any("best first" in n for n in app.notices)
        await pilot.press("3", "1", "3")  # a repeated number is ignored
        assert [p.border_title for p in screen.panels[:3]] == ["A · 2nd", "B", "C · 1st"]
        assert shown(screen, "#queue-bar").startswith("ranking: C > A > B")
        await pilot.press("backspace", "2")
        assert [p.border_title for p in screen.panels[:3]] == ["A", "B · 2nd", "C · 1st"]
        await pilot.press("enter")
        ids = [c.id for c in store.candidates(ranked.prompt_id)]
        (ranking,) = store.rankings(ranked.prompt_id)
        assert ranking.order[:2] == [ids[2], ids[1]] and not ranking.all_bad
        assert screen.entry.item.id == thumbed.id and [p.display for p in screen.panels] == [True, False, False, False]
        assert "+ good · - bad" in shown(screen, "#queue-bar")
        await pilot.press("minus")
        verdicts = [(j.prompt_id, j.verdict) for j in store.judgements()]
        assert verdicts == [(ranked.prompt_id, "ranked"), (thumbed.prompt_id, "bad")]
        assert store.judgements()[1].rejected_candidate_id == store.candidates(thumbed.prompt_id)[0].id


async def test_generation_pauses_and_resumes_with_g_and_stops_when_the_screen_is_left(store, default_model, engine):
    queue(store, 1, [f"Count to {n}." for n in range(1, 25)])
    app = make_app(store, default_model, engine)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await open_queue(app, pilot)
        await wait_for(pilot, lambda: store.queue_counts().generated >= 1, timeout=60)
        await wait_for(pilot, lambda: screen.entry is not None, timeout=5)  # shown as soon as it is stored
        await pilot.press("g")
        await wait_for(pilot, lambda: not screen._generating(), timeout=30)
        assert "generation paused (g)" in shown(screen, "#queue-progress")
        paused_at = store.queue_counts().generated
        await pilot.pause(0.5)
        assert store.queue_counts().generated == paused_at  # nothing more while paused
        await pilot.press("g")
        await wait_for(pilot, lambda: store.queue_counts().generated > paused_at, timeout=60)
        await pilot.press("escape")  # leaving the queue stops generation at the next token
        await wait_for(pilot, lambda: engine.owner is None, timeout=30)
        left = store.queue_counts()
        await pilot.pause(0.5)
        assert store.queue_counts() == left and left.waiting > 0 and app.is_running
        for item in store.queue_items():
            assert item.prompt_id is None or len(store.candidates(item.prompt_id)) == 1


async def test_a_busy_database_keeps_the_verdict_says_so_and_saves_it_when_free(store, default_model, engine,
                                                                                 tmp_path):
    queue(store, 2, ["Name a colour.", "Name a fruit."])
    QueueGenerator(store, engine, SAMPLING, base_seed=4).run()
    app = make_app(store, default_model, engine)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await open_queue(app, pilot)
        first, second = store.queue_items()
        blocker = sqlite3.connect(tmp_path / "studio.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another program holds the write lock
        try:
            await pilot.press("1")
            assert any("your judgement is kept" in n for n in app.notices)
            assert shown(screen, "#queue-bar") == SAVING_TEXT and screen.entry.item.id == first.id
            await pilot.press("2")  # no other verdict is taken while one is saving
            await pilot.pause(1.5)  # longer than one retry: still kept, the app still up
            assert app.is_running and screen.entry.item.id == first.id
            assert blocker.execute("SELECT COUNT(*) FROM judgements").fetchone() == (0,)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await wait_for(pilot, lambda: screen.entry is not None and screen.entry.item.id == second.id, timeout=30)
        assert [(j.prompt_id, j.verdict) for j in store.judgements()] == [(first.prompt_id, "a")]
        await pilot.press("2")
        assert [j.verdict for j in store.judgements()] == ["a", "b"] and screen.entry is None


async def test_queueing_a_prompt_bank_from_the_palette_opens_queue_mode_and_generates(store, default_model, engine):
    app = make_app(store, default_model, engine)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: app.engine is not None)
        bank = app.prompt_banks[0]
        commands = [c for c in app.get_system_commands(app.screen) if c.title == f"Queue prompt bank: {bank.name}"]
        assert len(commands) == 1
        commands[0].callback()
        await wait_for(pilot, lambda: isinstance(app.screen, QueueScreen))
        assert any(f"Queued {len(bank.prompts)} prompt(s) of {bank.name} with 2 candidate(s)" in n for n in app.notices)
        counts = store.queue_counts()
        assert counts.total == len(bank.prompts)
        (queue_id,) = [q.id for q in store.queues()]
        assert store.get_session(queue_id).system_prompt == app.current_system_prompt
        await wait_for(pilot, lambda: app.screen.entry is not None, timeout=60)  # generated in the background
        assert app.screen.entry.item.text == bank.prompts[0]


async def test_queueing_a_prompts_file_from_the_palette_names_a_bad_line_and_queues_a_good_file(
        store, default_model, engine, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": [}\n', encoding="utf-8")
    good = tmp_path / "good.txt"
    good.write_text("Name a colour.\nName a fruit.\n", encoding="utf-8")
    app = make_app(store, default_model, engine)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: app.engine is not None)
        for path in (bad, good):
            (command,) = [c for c in app.get_system_commands(app.screen) if c.title == "Queue prompts from a file…"]
            command.callback()
            await wait_for(pilot, lambda: isinstance(app.screen, NameScreen) and bool(app.screen.query(Input)))
            app.screen.query_one(Input).value = str(path)
            await pilot.press("enter")
            await pilot.pause()
            if path is bad:
                assert any("Not queued:" in n and "bad.jsonl line 2 is not valid JSON" in n for n in app.notices)
                assert store.queue_counts().total == 0 and not isinstance(app.screen, QueueScreen)
        await wait_for(pilot, lambda: isinstance(app.screen, QueueScreen))
        assert any("Queued 2 prompt(s) of good.txt with 2 candidate(s)" in n for n in app.notices)
        assert [i.text for i in store.queue_items()] == ["Name a colour.", "Name a fruit."]
        await wait_for(pilot, lambda: app.screen.entry is not None, timeout=60)  # generated in the background


async def test_queueing_an_imported_datasets_prompts_from_the_palette(store, default_model, engine):
    import_dataset(store, Path(__file__).parent / "fixtures" / "datasets" / "trl_standard.jsonl", name="std")
    app = make_app(store, default_model, engine)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: app.engine is not None)
        (command,) = [c for c in app.get_system_commands(app.screen) if c.title == "Queue dataset prompts: std"]
        command.callback()
        await wait_for(pilot, lambda: isinstance(app.screen, QueueScreen))
        assert store.queue_items()[0].text == "What color is the sky?"
        assert store.queue_items()[0].origin == "dataset:std #1"
        await wait_for(pilot, lambda: app.screen.entry is not None, timeout=60)  # generated in the background


# argv: db, model, mode ("timer" or "after-commit"). Judges the first item, prints "ack <judgement id>" for what
# the screen moved on from, then is killed on the next key.
DRIVER = r"""
import asyncio, os, signal, sys, threading
from dataclasses import replace
from pathlib import Path

from studio.inference import runtime_env  # noqa: F401
from store.studio_store import Store
from studio.inference.engine import SamplingSettings
from studio.settings import StudioSettings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.queue import QueueScreen

db, model, mode = sys.argv[1], sys.argv[2], sys.argv[3]
store = Store.open(Path(db))
settings = replace(StudioSettings(), model=Path(model), seed=11, sampling=SamplingSettings(max_tokens=4))
app = PreferenceStudioApp(settings=settings, store=store)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_the_judgement_commits() -> None:
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


async def main() -> None:
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.engine is not None)
        await pilot.press("f9")
        await until(pilot, lambda: isinstance(app.screen, QueueScreen) and app.screen.entry is not None)
        first = app.screen.entry.item.id
        await pilot.press("1")
        await until(pilot, lambda: app.screen.entry is not None and app.screen.entry.item.id != first)
        for judgement in store.judgements():
            print("ack", judgement.id, flush=True)
        if mode == "after-commit":
            kill_after_the_judgement_commits()
        else:
            threading.Timer(0, die).start()
        await pilot.press("2")
        await pilot.pause(1.0)
        print("not killed", flush=True)


asyncio.run(main())
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("mode", ["timer", "after-commit"])
def test_kill_during_queue_judging_loses_no_acknowledged_judgement(tmp_path, default_model, engine, mode):
    db = tmp_path / "studio.db"
    with Store.open(db) as store:
        queue(store, 2, ["Name a colour.", "Name a fruit.", "Name a city."])
        QueueGenerator(store, engine, SAMPLING, base_seed=3).run()
    env = dict(os.environ, PREFSTUDIO_HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    child = subprocess.run([sys.executable, "-c", DRIVER, str(db), str(default_model), mode],
                           capture_output=True, text=True, env=env, timeout=180)
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stdout, child.stderr[-3000:])
    acknowledged = {int(line.split()[1]) for line in child.stdout.splitlines() if line.startswith("ack ")}
    assert len(acknowledged) == 1
    with Store.open(db) as store:
        assert integrity_ok(store.db)
        judgements = store.judgements()
        assert acknowledged <= {j.id for j in judgements}
        queued = {i.prompt_id for i in store.queue_items()}
        assert all(j.prompt_id in queued and j.source == "queue" for j in judgements)
        assert store.queue_counts().judged == len(judgements)
        if mode == "after-commit":  # killed after the second judgement's commit: it is there
            assert len(judgements) == 2 and judgements[1].verdict == "b"
        # Every item is still whole: generated with both candidates, and the unjudged ones come next.
        assert all(len(store.candidates(i.prompt_id)) == 2 for i in store.queue_items())
        assert store.queue_counts().to_judge == 3 - len(judgements)
