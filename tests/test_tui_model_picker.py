"""The model picker through App.run_test() and Pilot: the real Gemma and SmolLM2 through llama.cpp, a real
SQLite file, a real (random) LoRA adapter for Gemma that must be dropped when SmolLM2 takes over."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import wait_for

from store.studio_store import Store
from studio.inference.engine import SamplingSettings
from studio.inference.model_files import SMOLLM2_SHA256, inspect_gguf
from studio.settings import load_settings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.chat import JUDGE_HINT
from studio.tui.screens.model_picker import ModelPickerScreen

RUN_NAME = "run-20260101-000000-abcdef01"


@pytest.fixture
def make_app(tmp_path, default_model, studio_home):
    stores: list[Store] = []

    def build() -> PreferenceStudioApp:
        store = Store.open(tmp_path / "studio.db")
        stores.append(store)
        settings = replace(load_settings(), model=default_model, seed=7, sampling=SamplingSettings(max_tokens=12))
        return PreferenceStudioApp(settings=settings, store=store)

    yield build
    for store in stores:
        store.close()


def input_ready(app) -> bool:
    return app.engine is not None and not app.chat.query_one("#prompt-input").disabled


def judging(app) -> bool:
    return str(app.chat.query_one("#judge-bar").render()) == JUDGE_HINT


def last_candidates(app):
    prompt_id = max(row["id"] for row in app.store.db["prompts"].rows)
    return app.store.candidates(prompt_id)


async def ask_and_pick_a(pilot, app, text: str) -> None:
    await wait_for(pilot, lambda: input_ready(app))
    app.chat.query_one("#prompt-input").value = text
    await pilot.press("enter")
    await wait_for(pilot, lambda: judging(app))
    await pilot.press("1")
    await wait_for(pilot, lambda: input_ready(app))


async def open_picker(pilot, app) -> ModelPickerScreen:
    await pilot.press("ctrl+p")
    await pilot.press(*"Switch model")
    await pilot.pause(0.3)
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, ModelPickerScreen))
    return app.screen


async def test_the_palette_picker_switches_gemma_to_smollm2_and_drops_the_adapter(
        make_app, tmp_path, default_model, smollm2_model):
    from test_adapter_export import write_peft_adapter

    app = make_app()
    # A finished run with a real LoRA for Gemma (random weights, two layers) beside the database: F7 loads it.
    adapter_dir = write_peft_adapter(tmp_path / "runs" / RUN_NAME, inspect_gguf(default_model), layers=range(2))
    run_id = app.store.create_run({"epochs": 1}, default_model.name, str(adapter_dir), pair_ids=[], heldout_ids=[],
                                  dataset_hash="x")
    app.store.set_run_status(run_id, "done", "done")
    async with app.run_test(size=(120, 36)) as pilot:
        await ask_and_pick_a(pilot, app, "Say hello.")
        before = last_candidates(app)
        gemma_session = app.store.latest_session().id
        await pilot.press("f7")
        await wait_for(pilot, lambda: f"adapter: run-{run_id}" in app.sub_title)

        picker = await open_picker(pilot, app)
        assert [(o.label, o.current) for o in picker.options] == [("gemma3-270m", True), ("smollm2", False)]
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.engine.identity.sha256 == SMOLLM2_SHA256 and input_ready(app))

        assert app.sub_title == "model: SmolLM2-135M-Instruct.Q4_1.gguf · adapter: none"
        assert any(f"Adapter run-{run_id} dropped" in n for n in app.notices), list(app.notices)
        assert app.engine.active_adapter is None and app.settings.model == smollm2_model  # training follows
        smol_session = app.store.latest_session().id
        assert smol_session != gemma_session
        assert [app.store.get_session(s).model_id for s in (gemma_session, smol_session)] == [
            default_model.name, smollm2_model.name]

        await ask_and_pick_a(pilot, app, "Say hello.")
        after = last_candidates(app)
        assert {(c.model_id, c.model_sha256[:8]) for c in before} == {(default_model.name, "a5fd3b62")}
        assert {(c.model_id, c.model_sha256) for c in after} == {(smollm2_model.name, SMOLLM2_SHA256)}
        assert [c.adapter for c in before] == [None, None] and [c.adapter for c in after] == [None, None]
        assert "<|im_start|>" in after[0].rendered_prompt and after[0].rendered_prompt != before[0].rendered_prompt

        # Back to Gemma by name from the same picker: the serving one is now SmolLM2.
        picker = await open_picker(pilot, app)
        assert [(o.label, o.current) for o in picker.options] == [("gemma3-270m", False), ("smollm2", True)]
        await pilot.press("up", "enter")
        await wait_for(pilot, lambda: app.engine.identity.model_id == default_model.name and input_ready(app))
        assert app.store.get_session(app.store.latest_session().id).model_id == default_model.name


async def test_a_switch_while_candidates_generate_is_refused_and_escape_keeps_the_model(make_app, default_model):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        engine = app.engine
        app.chat.query_one("#prompt-input").value = "Tell me about lighthouses."
        # The test holds the engine, so the palette command lands while the candidates wait to be written.
        with engine.session("generating candidates for prompt 1"):
            await pilot.press("enter")
            await pilot.press("ctrl+p")
            await pilot.press(*"Switch model")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await pilot.pause(0.1)
            shown = list(app.notices)
            assert not isinstance(app.screen, ModelPickerScreen)
        assert any("Cannot switch the model now: the model is generating candidates" in n for n in shown), shown
        await wait_for(pilot, lambda: judging(app))
        assert app.engine is engine and {c.model_id for c in last_candidates(app)} == {default_model.name}

        # Free again: the picker opens; escape leaves everything as it was.
        await pilot.press("1")
        await wait_for(pilot, lambda: input_ready(app))
        await open_picker(pilot, app)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.chat)
        assert app.engine is engine and input_ready(app) and "gemma-3-270m" in app.sub_title


async def test_a_model_that_fails_to_load_keeps_the_one_serving(make_app, tmp_path, default_model):
    from studio.tui.screens.model_picker import ModelOption

    app = make_app()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF not really a model")
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        engine, session = app.engine, app.store.latest_session().id
        app.chat.query_one("#prompt-input").value = "kept while it loads"
        app.switch_to(ModelOption("broken.gguf", None, broken, current=False, installed=True, note=str(broken)))
        await wait_for(pilot, lambda: any("Model not switched to broken.gguf" in n for n in app.notices))
        await wait_for(pilot, lambda: input_ready(app))
        assert app.engine is engine and app.settings.model == default_model
        assert app.store.latest_session().id == session
        assert app.chat.query_one("#prompt-input").value == "kept while it loads"
        assert str(broken) in next(n for n in app.notices if "Model not switched" in n)


def test_a_served_model_that_is_not_bundled_is_offered_first(tmp_path):
    from studio.inference.engine import ModelIdentity
    from studio.tui.screens.model_picker import model_options

    mine = tmp_path / "my-model.gguf"
    options = model_options(ModelIdentity("my-model.gguf", "0" * 64, mine))
    assert [(o.label, o.name, o.path, o.current) for o in options] == [
        ("my-model.gguf", None, mine, True), ("gemma3-270m", "gemma3-270m", None, False),
        ("smollm2", "smollm2", None, False)]
    bundled = model_options(ModelIdentity("renamed.gguf", SMOLLM2_SHA256, tmp_path / "renamed.gguf"))
    assert [(o.label, o.current) for o in bundled] == [("gemma3-270m", False), ("smollm2", True)]  # by its hash
