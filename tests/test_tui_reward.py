"""The reward model in the chat, through App.run_test() and Pilot: each candidate's score, the suggestion, the live
agreement in the status line, best-of-N, choosing the model from the palette, and a scorer that fails or cannot
open. The real default model, a real reward run trained on it (conftest ``trained_reward_run``), real SQLite."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import wait_for

from store.studio_store import Store
from studio.inference.engine import SamplingSettings
from studio.settings import load_settings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.reward_picker import RewardPickerScreen

OPEN_S = 400  # the reward model opens in a worker (a process loading the model): minutes on a loaded machine


@pytest.fixture
def make_app(reward_data, default_model, studio_home_with_weights):  # the worker loads the session's weights
    stores: list[Store] = []
    db_path, run_id = reward_data

    def build(**overrides) -> PreferenceStudioApp:
        store = Store.open(db_path)
        stores.append(store)
        chosen = {"model": default_model, "seed": 300, "sampling": SamplingSettings(max_tokens=12),
                  "reward_run": run_id, **overrides}
        return PreferenceStudioApp(settings=replace(load_settings(), **chosen), store=store)

    yield build, run_id
    for store in stores:
        store.close()


def input_ready(app) -> bool:
    return app.engine is not None and not app.chat.query_one("#prompt-input").disabled


def status_line(app) -> str:
    return str(app.chat.query_one("#counter").render())


def titles(app) -> list[str]:
    return [str(panel.border_title) for panel in app.chat.panels]


def shown(score: float) -> str:
    return f"reward {round(score, 2) + 0.0:.2f}"


async def ask(pilot, app, text: str) -> None:
    """Send a prompt and wait until every candidate is on screen with its score."""
    await wait_for(pilot, lambda: input_ready(app) and app.chat.reward is not None, timeout=OPEN_S)
    app.chat.query_one("#prompt-input").value = text
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.chat.state == "judging" and all(p.reward is not None for p in app.chat.panels))


async def stored_scores(pilot, app, run_id: int) -> list[float]:
    """The round's stored scores, by slot (the store's candidates in their order), once all are stored."""
    ids = app.chat.round.candidate_ids
    await wait_for(pilot, lambda: len(app.store.reward_scores(run_id, ids)) == len(ids))
    scores = app.store.reward_scores(run_id, ids)
    return [scores[candidate_id] for candidate_id in ids]


def top(scores: list[float]) -> int:
    return max(range(len(scores)), key=lambda slot: (scores[slot], -slot))


async def test_candidates_show_their_reward_the_suggestion_live_agreement_and_best_of_n(make_app):
    build, run_id = make_app
    app = build()
    async with app.run_test(size=(150, 40)) as pilot:
        await ask(pilot, app, "Say hello.")
        scores = await stored_scores(pilot, app, run_id)
        pick = top(scores)
        for slot, title in enumerate(titles(app)):
            assert shown(scores[slot]) in title
            assert ("suggested" in title) == (slot == pick)
        assert f"reward run {run_id}" in status_line(app) and "agrees" not in status_line(app)  # nothing judged

        await pilot.press("1" if pick == 0 else "2")  # with the suggestion
        await wait_for(pilot, lambda: "agrees 1/1 (100%)" in status_line(app))

        await ask(pilot, app, "Name a fruit.")
        pick = top(await stored_scores(pilot, app, run_id))
        await pilot.press("2" if pick == 0 else "1")  # against it: the user still decides
        await wait_for(pilot, lambda: "agrees 1/2 (50%)" in status_line(app))
        agreement = app.store.reward_agreement(run_id, session_id=app.chat.session_id)
        assert (agreement.agreed, agreement.judged) == (1, 2)

        # Best-of-N (the palette's toggle, three candidates): the best first, on screen and in the store.
        await wait_for(pilot, lambda: input_ready(app))
        app.chat.toggle_best_first()
        assert app.chat.set_candidates(3)
        await wait_for(pilot, lambda: len(app.chat.panels) == 3 and input_ready(app))
        await ask(pilot, app, "Where do fish live?")
        scores = await stored_scores(pilot, app, run_id)
        assert scores == sorted(scores, reverse=True)
        assert [panel.reward for panel in app.chat.panels] == scores
        assert "suggested" in titles(app)[0] and not any("suggested" in t for t in titles(app)[1:])
        assert [panel.text for panel in app.chat.panels] == [g.text for g in app.chat.round.generations]


async def test_palette_chooses_the_reward_model_and_a_scorer_that_stops_is_a_notice(make_app):
    build, run_id = make_app
    app = build(reward_run=None, reward_scorer="torch-fp32")  # the config's choice of scorer is the one opened
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        assert app.chat.reward is None
        await pilot.press("ctrl+p")
        await pilot.press(*"Use reward model")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RewardPickerScreen))
        options = app.screen.options
        assert [o.run_id for o in options] == [None, run_id] and options[0].current
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.chat.reward is not None, timeout=OPEN_S)
        assert app.chat.reward.run_id == run_id and app.settings.reward_run == run_id
        assert app.chat.reward._scorer.precision == "fp32"  # noqa: SLF001 - the worker as the settings asked

        # The scorer stops underneath the chat (its process gone): a notice, and the chat goes on unscored.
        app.chat.reward._scorer.close()  # noqa: SLF001 - the real scorer, stopped
        app.chat.query_one("#prompt-input").value = "Say hello."
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("stopped scoring" in n for n in app.notices))
        await wait_for(pilot, lambda: app.chat.state == "judging")
        await wait_for(pilot, lambda: app.chat.reward is None)
        assert f"reward run {run_id}" not in status_line(app)
        await pilot.press("1")
        await wait_for(pilot, lambda: input_ready(app))
        assert app.store.count_pairs(session_id=app.chat.session_id) == 1


async def test_a_reward_model_that_cannot_open_is_a_notice_and_the_chat_goes_on(make_app):
    build, run_id = make_app
    app = build(reward_run=run_id + 100)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: any(f"run {run_id + 100} not used" in n for n in app.notices))
        assert any("there is no run" in n for n in app.notices)
        await wait_for(pilot, lambda: input_ready(app))
        app.chat.query_one("#prompt-input").value = "Say hello."
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.chat.state == "judging")
        assert not any("reward" in title for title in titles(app))
        await pilot.press("1")
        await wait_for(pilot, lambda: input_ready(app))
        assert app.store.count_pairs(session_id=app.chat.session_id) == 1
