"""Exercise mode through Pilot: the bundled exercise, the support-ratio preview, bad settings, train."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from conftest import wait_for

from store.studio_store import Store
from studio.settings import load_settings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.compare import CompareScreen
from studio.tui.screens.exercise import ExerciseScreen
from studio.tui.screens.train import TrainScreen

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


@pytest.fixture
def exercise_app(tmp_path, default_model, tiny_model_dir, studio_home):
    store = Store.open(tmp_path / "studio.db")
    settings = replace(load_settings(tmp_path / "none.toml"), model=default_model, train_model=tiny_model_dir)
    app = PreferenceStudioApp(settings=settings, store=store)
    yield app
    store.close()


def rows(screen: ExerciseScreen) -> list[tuple]:
    table = screen.query_one("#ex-table")
    return [tuple(table.get_row_at(i)) for i in range(table.row_count)]


async def open_exercise(pilot, app) -> ExerciseScreen:
    """F8, then wait until the preview has been drawn."""
    await pilot.press("f8")
    await wait_for(pilot, lambda: isinstance(app.screen, ExerciseScreen))
    screen = app.screen
    await wait_for(pilot, lambda: screen.query_one("#ex-table").row_count > 0)
    return screen


async def set_value(pilot, screen, name: str, value: str) -> None:
    screen.query_one(f"#ex-{name}").value = value
    await pilot.pause(0.1)


async def test_preview_follows_the_support_ratio_rule_and_bad_settings_are_named(exercise_app):
    app = exercise_app
    async with app.run_test(size=(150, 44)) as pilot:
        screen = await open_exercise(pilot, app)
        # The bundled exercise was imported on first open (60 items, 10 test prompts).
        dataset = app.store.get_dataset("car_free_city_centres")
        assert (dataset.kind, dataset.n_items, dataset.n_test_prompts) == ("stance", 60, 10)
        table = rows(screen)
        assert len(table) == 50
        assert [r[2] for r in table] == ["support"] * 5 + ["oppose"] * 45
        first = app.store.stance_items("car_free_city_centres")[0]
        assert table[0][3] == first.prompt and table[0][4] == first.support and table[5][4] != first.support
        assert "5 prefer support, 45 prefer oppose" in str(screen.query_one("#ex-summary").render())

        await set_value(pilot, screen, "support_ratio", "0.5")
        assert [r[2] for r in rows(screen)].count("support") == 25
        await set_value(pilot, screen, "support_ratio", "1.5")
        assert "between 0 and 1" in str(screen.query_one("#ex-status").render())
        await set_value(pilot, screen, "support_ratio", "0.1")
        await set_value(pilot, screen, "data_size", "80")
        status = str(screen.query_one("#ex-status").render())
        assert "data_size 80 is larger than dataset 'car_free_city_centres' (60 items)" in status
        await set_value(pilot, screen, "data_size", "ten")
        assert "data size: 'ten' is not a int" in str(screen.query_one("#ex-status").render())


async def test_one_key_trains_and_then_opens_the_comparison(exercise_app):
    app = exercise_app
    async with app.run_test(size=(150, 44)) as pilot:
        screen = await open_exercise(pilot, app)
        await set_value(pilot, screen, "data_size", "6")
        await set_value(pilot, screen, "support_ratio", "0.5")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
        run_id = app.screen.run_id
        run = app.store.get_run(run_id)
        assert (run.config["dataset"], run.config["data_size"], run.config["support_ratio"]) == (
            "car_free_city_centres", 6, 0.5)
        assert len(run.pair_ids) == 6 and len(run.heldout_ids) == 54
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), timeout=180)
        assert app.store.get_run(run_id).status == "done"
        # The run trained the tiny test model, so its adapter cannot be used by the served Gemma GGUF:
        # the comparison says so instead of handing llama.cpp a foreign adapter.
        title = app.screen.query_one("#compare-title")
        await wait_for(pilot, lambda: "cannot compare" in str(title.render()))
        assert "does not fit gemma-3-270m" in str(title.render())


async def test_import_from_the_tui_stores_the_file_or_names_the_problem(exercise_app, tmp_path):
    app = exercise_app
    good = FIXTURES / "trl_standard.jsonl"
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "d", "chosen": \n')
    async with app.run_test(size=(150, 44)) as pilot:
        screen = await open_exercise(pilot, app)
        status = screen.query_one("#ex-status")
        screen.query_one("#ex-import").value = str(bad)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: "Import failed" in str(status.render()))
        assert f"{bad}" in str(status.render()) and "line 2" in str(status.render())
        assert "broken" not in [d.name for d in app.store.list_datasets()]  # nothing stored
        screen.query_one("#ex-import").value = str(good)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: "stored" in str(status.render()))
        record = app.store.get_dataset(good.stem)
        assert record.kind == "preference" and record.n_items > 0
        # The train screen offers the imported pairs as a source.
        await pilot.press("escape")
        await pilot.press("f5")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
        scope = app.screen.query_one("#cfg-scope")
        assert f"dataset:{good.stem}" in [value for _, value in scope._options]
