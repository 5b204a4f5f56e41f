"""The train form's 'drop pairs whose chosen reply is flagged' through Pilot: a word list flags one chosen reply,
the run is prepared without that pair and the count dropped is on screen."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from conftest import wait_for
from tiny_model import SEPARABLE_PAIRS, build_tiny_model, fill_separable

from store.studio_store import Store
from studio.safety.specs import parse_checker_specs
from studio.settings import load_settings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.train import TrainScreen


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


async def test_the_drop_flagged_box_drops_the_flagged_pair_and_shows_the_count(tmp_path, default_model,
                                                                               tiny_model_dir, studio_home):
    blocklist = tmp_path / "fruit.txt"
    blocklist.write_text("# category: fruit\napple\n", encoding="utf-8")  # flags "An apple is a fruit." only
    store = Store.open(tmp_path / "studio.db")
    fill_separable(store)
    settings = replace(load_settings(), model=default_model, train_model=tiny_model_dir,
                       safety=parse_checker_specs([f"wordlist:{blocklist}"], "test"))
    app = PreferenceStudioApp(settings=settings, store=store)
    try:
        async with app.run_test(size=(140, 44)) as pilot:
            await pilot.press("f5")
            await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
            screen = app.screen
            box = screen.query_one("#cfg-drop_flagged")
            assert box.value is False and "flagged" in str(box.label)
            for name, value in {"epochs": 1, "batch_size": 2, "heldout_fraction": 0}.items():
                screen.query_one(f"#cfg-{name}").value = str(value)
            box.value = True
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: screen.run_id is not None)
            status = screen.query_one("#train-status")
            assert "1 with a flagged chosen reply dropped" in str(status.render())
            run = app.store.get_run(screen.run_id)
            assert run.config["drop_flagged"] is True
            assert len(run.pair_ids) == len(SEPARABLE_PAIRS) - 1
            await wait_for(pilot, lambda: app.store.get_run(screen.run_id).status not in ("pending", "running"))
    finally:
        store.close()
