"""SteerLM's sliders in the chat, through App.run_test() and Pilot: a SteerLM run's adapter brings a row of its
trained attributes, the keys change the values, every round's prompt carries them and its stored candidates
record them; the base model takes the row away. The real default model, a real SteerLM run trained on it
(conftest ``trained_steer_run``), real SQLite."""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import wait_for

from store.studio_store import Store
from studio.inference.engine import SamplingSettings
from studio.settings import load_settings
from studio.tui.app import PreferenceStudioApp
from studio.tui.widgets.steer_row import SteerRow


@pytest.fixture
def steer_data(trained_steer_run, tmp_path: Path) -> tuple[Path, int]:
    """This test's own copy of the SteerLM run's database and folder."""
    source, run_id = trained_steer_run
    target = tmp_path / "steer-data"
    shutil.copytree(source, target)
    with sqlite3.connect(target / "studio.db") as db:
        db.execute("UPDATE runs SET output_dir = replace(output_dir, ?, ?)", (str(source), str(target)))
    return target / "studio.db", run_id


def input_ready(app) -> bool:  # noqa: ANN001
    return app.engine is not None and not app.chat.query_one("#prompt-input").disabled


async def ask(pilot, app, text: str):  # noqa: ANN001, ANN201
    """Send a prompt; the round's stored candidates once they are stored."""
    await wait_for(pilot, lambda: input_ready(app) and app.chat.state == "input")
    app.chat.query_one("#prompt-input").value = text
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.chat.state == "judging" and app.chat.round is not None
                   and app.chat.round.stored)
    return app.store.candidates(app.chat.round.prompt_id)


async def test_sliders_condition_every_generation_and_are_stored(steer_data, default_model, studio_home) -> None:
    db_path, run_id = steer_data
    store = Store.open(db_path)
    # Greedy replies: the same prompt at two settings differs only by what the sliders write into it.
    settings = replace(load_settings(), model=default_model, seed=5, candidates=1,
                       sampling=SamplingSettings(max_tokens=8, temperature=0.0))
    app = PreferenceStudioApp(settings=settings, store=store)
    try:
        async with app.run_test(size=(150, 40)) as pilot:
            await wait_for(pilot, lambda: input_ready(app))
            assert not app.chat.query(SteerRow)
            await pilot.press("f7")  # base -> the newest run: the SteerLM run
            await wait_for(pilot, lambda: bool(app.chat.query(SteerRow)))
            row = app.chat.query_one(SteerRow)
            assert row.attributes == ("verbosity",)  # the run's trained attributes, and no other
            assert app.chat.session.steer == {"verbosity": 2}

            await pilot.press("ctrl+t", "right", "right", "right")  # 2 -> 4, and no further
            assert row.values == {"verbosity": 4} and app.chat.session.steer == {"verbosity": 4}
            assert "verbosity 4" in row.describe()
            await pilot.press("enter")  # back to the prompt
            assert app.focused is app.chat.query_one("#prompt-input")
            high = await ask(pilot, app, "Name a fruit.")
            assert high[0].rendered_prompt.endswith("User: Name a fruit.\nAssistant: [verbosity:4]")
            assert high[0].sampling["steer"] == {"verbosity": 4}
            assert high[0].adapter == f"run-{run_id}"
            await pilot.press("plus")  # a thumbs up keeps it; the next round follows

            await pilot.press("ctrl+t", *["left"] * 5)  # 4 -> 0, and no lower
            await pilot.press("enter")
            assert app.chat.session.steer == {"verbosity": 0}
            low = await ask(pilot, app, "Name a fruit.")
            assert low[0].rendered_prompt.endswith("Assistant: [verbosity:0]")
            assert low[0].sampling["steer"] == {"verbosity": 0}

            await pilot.press("plus")
            await wait_for(pilot, lambda: app.chat.state == "input")
            await pilot.press("f7")  # -> the base model: no sliders, prompts carry no values
            await wait_for(pilot, lambda: not app.chat.query(SteerRow) and app.active_adapter is None)
            assert app.chat.session.steer is None
            plain = await ask(pilot, app, "Name a fruit.")
            assert plain[0].rendered_prompt.endswith("Assistant:") and "steer" not in plain[0].sampling
    finally:
        store.close()
