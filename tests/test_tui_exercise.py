"""Exercise mode through Pilot: the bundled exercise, the support-ratio preview, bad settings, train."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from conftest import offered, wait_for

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
    config = tmp_path / "studio.toml"
    config.write_text("", encoding="utf-8")  # an empty config: the defaults
    settings = replace(load_settings(config), model=default_model, train_model=tiny_model_dir)
    app = PreferenceStudioApp(settings=settings, store=store)
    yield app
    store.close()


def rows(screen: ExerciseScreen) -> list[tuple]:
    table = screen.query_one("#ex-table")
    return [tuple(str(cell) for cell in table.get_row_at(i)) for i in range(table.row_count)]  # Text → plain


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
        # A pushed screen composes a moment after it is on top: wait for its title, not only for the screen.
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and bool(app.screen.query("#compare-title")),
                       timeout=180)
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
        assert any(f"dataset {good.stem} (" in choice for choice in offered(scope))
        scope.value = f"dataset:{good.stem}"  # a value the Select does not offer raises InvalidSelectValueError


def type_in_one_burst(app, text: str, then: str) -> None:  # noqa: ANN001
    """Send ``text`` and the key ``then`` the way a terminal delivers a fast typist's or a paste's keys: all
    at once, without waiting for the app to handle each (``pilot.press`` waits for idle after every key, so
    it cannot show a key handled before the ones typed just before it)."""
    from textual import events
    from textual.keys import _character_to_key

    for ch in text:
        key = ch if ch.isalnum() else _character_to_key(ch)
        app._driver.send_message(events.Key(key, ch))
    app._driver.send_message(events.Key(then, None))


async def test_a_path_typed_and_imported_at_once_is_imported_whole(exercise_app, tmp_path):
    # Issue 9, item 17: the characters of a path typed just before ctrl+o were still waiting in the field's
    # queue when the priority key read the field, and a truncated path was imported.
    source = tmp_path / "typed_at_once_pairs.jsonl"
    source.write_text((FIXTURES / "trl_standard.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    app = exercise_app
    async with app.run_test(size=(150, 44)) as pilot:
        screen = await open_exercise(pilot, app)
        screen.query_one("#ex-import").focus()
        await pilot.pause()
        type_in_one_burst(app, str(source), then="ctrl+o")
        status = screen.query_one("#ex-status")
        outcomes = ("stored", "failed", "Type the path")  # imported / a truncated path / an empty one
        await wait_for(pilot, lambda: any(word in str(status.render()) for word in outcomes), timeout=30)
        assert screen.query_one("#ex-import").value == str(source)
        assert "stored" in str(status.render()), str(status.render())
        assert "typed_at_once_pairs" in [d.name for d in app.store.list_datasets()]


async def test_a_data_file_alone_is_named_as_lacking_test_prompts_and_the_second_field_adds_them(
        exercise_app, tmp_path):
    # Issue 9, item 11: the homework's labelled_data.json imported alone got 0 test prompts, silently.
    bundled = Path(__file__).resolve().parent.parent / "assets" / "exercises" / "car_free_city_centres"
    labelled = tmp_path / "labelled_data.json"
    tests = tmp_path / "test_data.json"
    labelled.write_text((bundled / "train.json").read_text(encoding="utf-8"), encoding="utf-8")
    tests.write_text((bundled / "test.json").read_text(encoding="utf-8"), encoding="utf-8")
    app = exercise_app
    async with app.run_test(size=(150, 44)) as pilot:
        screen = await open_exercise(pilot, app)
        status, summary = screen.query_one("#ex-status"), screen.query_one("#ex-summary")
        screen.query_one("#ex-import").value = str(labelled)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: "stored 60 items" in str(status.render()))
        assert app.store.get_dataset("labelled_data").n_test_prompts == 0
        text = str(status.render())
        assert "Dataset 'labelled_data' has no test prompts" in text and "Beside it: test_data.json" in text
        await wait_for(pilot, lambda: screen.query_one("#ex-dataset").value == "labelled_data")
        assert "has no test prompts" in str(summary.render())  # stays in view while the dataset is chosen

        screen.query_one("#ex-import-tests").value = str(tests)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: "and 10 test prompts" in str(status.render()))
        record = app.store.get_dataset("labelled_data")
        assert (record.n_items, record.n_test_prompts) == (60, 10)  # the items were not stored twice
        assert "has no test prompts" not in str(status.render())
        await pilot.pause(0.1)
        assert "has no test prompts" not in str(summary.render())
        select = screen.query_one("#ex-dataset")
        assert "labelled_data (60 items, 10 test prompts)" in offered(select)


async def test_nothing_held_out_says_the_stance_is_measured_on_the_training_items(exercise_app):
    # Issue 9, item 10: data size = every item (the homework's 50 of 50) holds nothing out.
    app = exercise_app
    async with app.run_test(size=(150, 44)) as pilot:
        screen = await open_exercise(pilot, app)
        summary = screen.query_one("#ex-summary")
        assert "10 items held out for the stance metric" in str(summary.render())
        await set_value(pilot, screen, "data_size", "60")
        assert len(rows(screen)) == 60
        assert "no items held out: the stance metric is measured on the training items only" in str(
            summary.render())


def measured_exercise_defaults() -> tuple[int, float, float, str]:
    """The README's measured exercise table (bench/exercise_defaults.py): the row marked as the defaults."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Exercise mode and datasets")
    section = readme[start:readme.index("\n## ", start + 1)]
    (row,) = [line for line in section.splitlines() if line.startswith("|") and "(the defaults)" in line]
    match = re.match(r"\| \*\*epochs (\d+), lr ([0-9.e+-]+), beta ([0-9.]+)\*\* \(the defaults\) \|", row)
    assert match, row
    return int(match[1]), float(match[2]), float(match[3]), row


async def test_the_exercise_defaults_are_the_measured_ones(exercise_app):
    # Issue 9, item 12: the defaults make the effect visible on the bundled exercise in the fewest steps.
    epochs, learning_rate, beta, row = measured_exercise_defaults()
    assert row.rstrip(" |").endswith("yes")  # the table marks the effect visible at these settings
    app = exercise_app
    async with app.run_test(size=(150, 44)) as pilot:
        screen = await open_exercise(pilot, app)
        settings = screen.settings()
        assert (settings["epochs"], settings["learning_rate"], settings["beta"]) == (epochs, learning_rate, beta)
        assert (settings["data_size"], settings["support_ratio"]) == (50, 0.1)  # the homework's own setting
