"""Every feedback kind in the chat screen, through App.run_test() and Pilot on the real default model and a
real SQLite file: one candidate with thumbs and a correction, a ranking of three or four typed best first
(with undo, partial, all bad), attribute ratings under the highlighted reply, the number of candidates
changed with F10 and the palette; then what the store holds. Plus the settings behind them (config key and
CLI flag)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import run_cli, wait_for

from store.studio_store import Store
from studio.attributes import ATTRIBUTE_PRESETS, DEFAULT_ATTRIBUTES
from studio.inference.engine import SamplingSettings
from studio.settings import SettingsError, load_settings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.modals import TextEditScreen
from studio.tui.widgets.conversation_turn import ConversationTurn
from studio.tui.widgets.judge_bar import judge_hint
from studio.tui.widgets.rating_row import RatingRow


@pytest.fixture
def make_app(tmp_path, default_model, engine, studio_home):
    """An app on a fresh store with the shared engine (already loaded), fixed seeds and short replies."""
    stores: list[Store] = []

    def build(**overrides) -> PreferenceStudioApp:
        store = Store.open(tmp_path / "studio.db")
        stores.append(store)
        chosen = {"model": default_model, "seed": 100, "sampling": SamplingSettings(max_tokens=8), **overrides}
        return PreferenceStudioApp(settings=replace(load_settings(), **chosen), store=store, engine=engine)

    yield build
    for store in stores:
        store.close()


def bar_text(app) -> str:
    return str(app.chat.query_one("#judge-bar").render())


def input_ready(app) -> bool:
    return app.chat.state == "input" and not app.chat.query_one("#prompt-input").disabled


def judging(app, n: int) -> bool:
    """The verdict keys of ``n`` candidates are offered: the candidates are on screen and stored."""
    mode = "label" if n == 1 else "pair" if n == 2 else "rank"
    return bar_text(app) == judge_hint(mode, n)


async def ask(pilot, app, text: str, n: int) -> None:
    await wait_for(pilot, lambda: input_ready(app))
    app.chat.query_one("#prompt-input").value = text
    await pilot.press("enter")
    await wait_for(pilot, lambda: judging(app, n))


def titles(app) -> list[str]:
    return [str(panel.border_title) for panel in app.chat.panels]


def latest_prompt(app) -> int:
    return max(row["id"] for row in app.store.db["prompts"].rows)


def turns(app) -> list[tuple[str, str]]:
    return [(t.role, t.content) for t in app.store.turns(app.store.latest_session().id)]


async def test_one_candidate_is_a_plain_chat_with_thumbs_and_a_correction(make_app):
    app = make_app(candidates=1)
    async with app.run_test(size=(120, 36)) as pilot:
        await ask(pilot, app, "Say yes.", n=1)
        assert len(app.chat.panels) == 1 and titles(app) == ["A"]
        liked = app.chat.panels[0].text
        await pilot.press("plus")
        await wait_for(pilot, lambda: input_ready(app))
        await ask(pilot, app, "Say no.", n=1)
        disliked = app.chat.panels[0].text
        await pilot.press("minus")
        await wait_for(pilot, lambda: input_ready(app))
        await ask(pilot, app, "What colour is grass?", n=1)
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, TextEditScreen))
        assert "Correct the reply" in str(app.screen.query_one(".dialog-title").render())
        app.screen.query_one("TextArea").text = "Green [/], mostly."
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: input_ready(app))
        store = app.store
        verdicts = [(j.verdict, j.edited_text) for j in store.judgements()]
        assert verdicts == [("good", None), ("bad", None), ("edited", " Green [/], mostly.")]
        (demo,) = store.demonstrations()
        assert demo.text == " Green [/], mostly." and demo.based_on_candidate_id == store.candidates(demo.prompt_id)[0].id
        # Thumbs up or down, the reply goes on as in any chat; the correction replaces the reply it corrects.
        assert turns(app) == [("user", "Say yes."), ("assistant", liked.strip()), ("user", "Say no."),
                              ("assistant", disliked.strip()), ("user", "What colour is grass?"),
                              ("assistant", "Green [/], mostly.")]
        assert [t.text for t in app.chat.query(ConversationTurn)][-1] == "Green [/], mostly."
        counter = str(app.chat.query_one("#counter").render())
        assert "thumbs: 2" in counter and "pairs this session: 1" in counter  # the correction over the reply


async def test_three_candidates_are_ranked_best_first_with_backspace_undoing(make_app):
    app = make_app(candidates=3)
    async with app.run_test(size=(130, 40)) as pilot:
        await ask(pilot, app, "Name an animal.", n=3)
        texts = [panel.text for panel in app.chat.panels]
        await pilot.press("3", "1")
        assert titles(app) == ["A · 2nd", "B", "C · 1st"]
        assert bar_text(app).startswith("ranking: C > A > B")
        await pilot.press("3")  # a candidate is ranked once: nothing changes
        await pilot.press("backspace")
        assert titles(app) == ["A", "B", "C · 1st"]
        await pilot.press("2", "enter")
        await wait_for(pilot, lambda: input_ready(app))
        store = app.store
        ids = [c.id for c in store.candidates(latest_prompt(app))]
        (ranking,) = store.rankings()
        assert dict(ranking.places) == {ids[2]: 0, ids[1]: 1, ids[0]: 2}
        assert [j.verdict for j in store.judgements()] == ["ranked"]
        # every ordered pair of a full ranking of three (when the texts differ)
        assert {(p.chosen, p.rejected) for p in store.pairs()} <= {
            (texts[2], texts[1]), (texts[2], texts[0]), (texts[1], texts[0])}
        assert store.count_pairs() == 3
        assert turns(app) == [("user", "Name an animal."), ("assistant", texts[2].strip())]  # the best continues
        assert titles(app) == ["A", "B", "C"]
        # A ranking typed and then left with i is dropped: nothing stored, no places left on the panels.
        await ask(pilot, app, "Name a bird.", n=3)
        await pilot.press("2", "i")
        await wait_for(pilot, lambda: input_ready(app))
        assert titles(app) == ["A", "B", "C"] and len(store.rankings()) == 1


async def test_four_candidates_all_bad_then_a_partial_ranking_with_the_rest_tied_last(make_app):
    app = make_app(candidates=4)
    async with app.run_test(size=(140, 40)) as pilot:
        await ask(pilot, app, "Give me one word.", n=4)
        await pilot.press("enter")  # nothing ranked yet: nothing stored, the keys are named
        assert app.store.judgements() == [] and any("best first" in n for n in app.notices)
        await pilot.press("x")
        await wait_for(pilot, lambda: bar_text(app).startswith("All bad, recorded."))
        asked = app.store.db["prompts"].count
        await pilot.press("r")
        await wait_for(pilot, lambda: judging(app, 4) and app.store.db["prompts"].count > asked)
        texts = [panel.text for panel in app.chat.panels]
        await pilot.press("4", "enter")
        await wait_for(pilot, lambda: input_ready(app))
        store = app.store
        first, second = store.rankings()
        assert first.all_bad and first.places == ()
        ids = [c.id for c in store.candidates(latest_prompt(app))]
        assert [c.seed for c in store.candidates(latest_prompt(app))] == [104, 105, 106, 107]
        assert dict(second.places) == {ids[3]: 0, ids[0]: 1, ids[1]: 1, ids[2]: 1}
        assert store.count_pairs() == 3  # D over each of the three tied last, none among them
        assert turns(app) == [("user", "Give me one word."), ("assistant", texts[3].strip())]


async def test_ratings_are_set_under_the_highlighted_reply_alone_or_with_the_judgement(make_app):
    app = make_app(attributes=("quality", "humor", "toxicity"))
    async with app.run_test(size=(130, 40)) as pilot:
        await ask(pilot, app, "Tell me a joke.", n=2)
        chat = app.chat
        await pilot.press("right", "a")  # B is highlighted: its rating row opens
        await wait_for(pilot, lambda: isinstance(app.focused, RatingRow))
        row = app.focused
        assert row.slot == 1 and row in chat.panels[1].query(RatingRow)
        await pilot.press("enter")  # nothing set: refused, the row stays
        assert any("Set at least one value" in n for n in app.notices) and app.store.ratings() == []
        await pilot.press("3")  # quality 3, and the cursor moves on to humor
        await pilot.press("up", "up", "down")  # humor: unset → 0 → 1 → 0
        await pilot.press("tab", "4")  # toxicity 4
        assert row.describe() == "quality 3 · humor 0 · [toxicity 4]"
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(app.store.ratings()) == 3)
        b = app.store.candidates(latest_prompt(app))[1].id
        assert sorted((r.candidate_id, r.attribute, r.value, r.judgement_id) for r in app.store.ratings()) == [
            (b, "humor", 0, None), (b, "quality", 3, None), (b, "toxicity", 4, None)]
        assert not chat.query(RatingRow) and app.focused is chat.query_one("#judge-bar")
        # Both bad, then A rated: the rating goes with that judgement. Escape closes a row unsaved.
        await pilot.press("x")
        await wait_for(pilot, lambda: bar_text(app).startswith("Both bad, recorded."))
        await pilot.press("left", "a")
        await wait_for(pilot, lambda: isinstance(app.focused, RatingRow))
        await pilot.press("escape")
        assert not chat.query(RatingRow) and app.chat.state == "judging"
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.focused, RatingRow))
        await pilot.press("1", "enter")
        await wait_for(pilot, lambda: len(app.store.ratings()) == 4)
        (judgement,) = app.store.judgements()
        a = app.store.candidates(latest_prompt(app))[0].id
        assert [(r.candidate_id, r.attribute, r.value, r.judgement_id) for r in app.store.ratings()][-1] == (
            a, "quality", 1, judgement.id)


async def test_f10_and_the_palette_change_the_number_of_candidates_between_prompts(make_app):
    app = make_app()
    async with app.run_test(size=(130, 40)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        chat = app.chat
        await pilot.press("f10")
        await wait_for(pilot, lambda: len(chat.panels) == 3 and input_ready(app))
        assert app.settings.candidates == 3 and any("3 candidates per prompt" in n for n in app.notices)
        await ask(pilot, app, "Name a fruit.", n=3)
        assert len(app.store.candidates(latest_prompt(app))) == 3
        await pilot.press("f10")  # a round is being judged: its panels stay
        assert len(chat.panels) == 3 and any("between prompts" in n for n in app.notices)
        await pilot.press("1", "enter")
        await wait_for(pilot, lambda: input_ready(app))
        commands = {c.title: c for c in app.get_system_commands(app.screen)}
        commands["Candidates per prompt: 1"].callback()
        await wait_for(pilot, lambda: len(chat.panels) == 1 and input_ready(app))
        await ask(pilot, app, "Name a vegetable.", n=1)
        await pilot.press("plus")
        await wait_for(pilot, lambda: input_ready(app))
        await pilot.press("ctrl+n")  # a new session keeps the number chosen
        await wait_for(pilot, lambda: input_ready(app) and chat.session.n_candidates == 1)
        await pilot.press("f10", "f10", "f10", "f10")  # 1 → 2 → 3 → 4 → 1
        await wait_for(pilot, lambda: len(chat.panels) == 1 and input_ready(app))
        assert [j.verdict for j in app.store.judgements()] == ["ranked", "good"]


# --- the settings behind them: config key and flag, each problem named ---


def test_candidates_and_attributes_come_from_the_config_file_and_the_flags(tmp_path, studio_home):
    config = tmp_path / "studio.toml"
    config.write_text('candidates = 3\nattributes = "oasst"\n', encoding="utf-8")
    settings = load_settings(config)
    assert settings.candidates == 3 and settings.attributes == ATTRIBUTE_PRESETS["oasst"]
    assert load_settings(config, candidates=1, attributes="quality, humor").attributes == ("quality", "humor")
    config.write_text('attributes = ["helpfulness", "verbosity"]\n', encoding="utf-8")
    assert load_settings(config).attributes == ("helpfulness", "verbosity")
    assert load_settings(tmp_path / "studio.toml", attributes=None).candidates == 2
    assert DEFAULT_ATTRIBUTES == ("quality", "helpfulness", "correctness", "humor", "toxicity")
    for text, message in (("candidates = 5\n", r"studio.toml: candidates must be a whole number from 1 to 4"),
                          ('attributes = "Humour!"\n', r"studio.toml: attributes: attribute 'Humour!' must be"),
                          ('attributes = "quality,quality"\n', r"names quality more than once"),
                          ("attributes = 3\n", r"attributes must be a preset")):
        config.write_text(text, encoding="utf-8")
        with pytest.raises(SettingsError, match=message):
            load_settings(config)
    with pytest.raises(SettingsError, match=r"--candidates must be a whole number from 1 to 4 .*got 0"):
        load_settings(None, candidates=0)
    with pytest.raises(SettingsError, match="--attributes: 'prompt' is a column"):
        load_settings(None, attributes="prompt,quality")


def test_the_cli_names_a_bad_candidates_or_attributes_flag(studio_home, tmp_path):
    proc = run_cli("--db", str(tmp_path / "s.db"), "--candidates", "7", "pairs", "list", home=studio_home)
    assert proc.returncode == 1 and "error: --candidates must be a whole number from 1 to 4" in proc.stderr
    assert "got 7" in proc.stderr
    proc = run_cli("--db", str(tmp_path / "s.db"), "--attributes", "", "pairs", "list", home=studio_home)
    assert proc.returncode == 1 and "error: --attributes is empty" in proc.stderr
    ok = run_cli("--db", str(tmp_path / "s.db"), "--candidates", "4", "--attributes", "oasst", "pairs", "list",
                 home=studio_home)
    assert "--candidates" not in ok.stderr and "--attributes" not in ok.stderr


async def test_ratings_wait_for_a_busy_database_in_a_worker_and_are_kept(make_app, tmp_path):
    import sqlite3

    app = make_app(attributes=("quality",))
    async with app.run_test(size=(120, 36)) as pilot:
        await ask(pilot, app, "Say something kind.", n=2)
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.focused, RatingRow))
        blocker = sqlite3.connect(tmp_path / "studio.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another program writing
        try:
            await pilot.press("4", "enter")
            await wait_for(pilot, lambda: any("database busy" in n for n in app.notices))
            assert app.chat.state == "judging" and app.focused is app.chat.query_one("#judge-bar")  # not frozen
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await wait_for(pilot, lambda: "Ratings saved for A: quality 4." in app.notices)
        assert [(r.attribute, r.value) for r in app.store.ratings()] == [("quality", 4)]
