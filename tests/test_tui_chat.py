"""The chat screen through App.run_test() and Pilot, on the real default model and a real SQLite file."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from conftest import error_shown, run_cli, wait_for

from store.studio_store import Store
from studio.inference.engine import SamplingSettings
from studio.settings import load_settings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.chat import JUDGE_HINT
from studio.tui.screens.modals import TextEditScreen
from studio.tui.widgets.conversation_turn import ConversationTurn


@pytest.fixture
def make_app(tmp_path, default_model, studio_home):
    stores: list[Store] = []

    def build(**overrides) -> PreferenceStudioApp:
        store = Store.open(tmp_path / "studio.db")
        stores.append(store)
        chosen = {"model": default_model, "seed": 100, "sampling": SamplingSettings(max_tokens=16), **overrides}
        settings = replace(load_settings(), **chosen)  # PREFSTUDIO_HOME is the test's own: no config file
        return PreferenceStudioApp(settings=settings, store=store)

    yield build
    for store in stores:
        store.close()


# What the tests wait for and read is what a user sees or what the store holds, not the screen's internals.


def input_ready(app) -> bool:
    """The prompt input takes text: the model is loaded and no prompt is being answered or judged."""
    return app.engine is not None and not app.chat.query_one("#prompt-input").disabled


def judging(app) -> bool:
    """The judge bar offers the verdict keys: the candidates are on screen (and stored)."""
    return str(app.chat.query_one("#judge-bar").render()) == JUDGE_HINT


def session_id(app) -> int:
    return app.store.latest_session().id


def rendered_prompts(app) -> list[str | None]:
    """The exact prompt the model saw for each question of the current session, in order."""
    return [rendered for _, rendered in app.store.session_questions(session_id(app))]


def last_candidates(app):
    prompt_id = max(row["id"] for row in app.store.db["prompts"].rows)
    return app.store.candidates(prompt_id)


async def ask(pilot, app, text: str) -> None:
    await wait_for(pilot, lambda: input_ready(app))
    app.chat.query_one("#prompt-input").value = text
    await pilot.press("enter")
    await wait_for(pilot, lambda: judging(app))


async def test_prompt_two_candidates_key_1_stores_the_pair(make_app, tmp_path, studio_home):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await ask(pilot, app, "Say hello.")
        chat = app.chat
        assert app.focused is chat.query_one("#judge-bar")
        texts = [panel.text for panel in chat.panels]
        assert len(texts) == 2 and all(t.strip() for t in texts)
        assert "adapter: none" in app.sub_title and "gemma-3-270m" in app.sub_title
        await pilot.press("1")
        await wait_for(pilot, lambda: input_ready(app))
        pairs = app.store.pairs()
        assert len(pairs) == 1 and pairs[0].chosen == texts[0] and pairs[0].rejected == texts[1]
        assert "pairs this session: 1" in str(chat.query_one("#counter").render())
        # The pick became the assistant turn, so the conversation continues from it.
        assert [t.role for t in app.store.turns(session_id(app))] == ["user", "assistant"]
        candidates = app.store.candidates(pairs[0].judgement_id and app.store.judgements()[0].prompt_id)
        assert [c.seed for c in candidates] == [100, 101]
        assert candidates[0].rendered_prompt.endswith("User: Say hello.\nAssistant:")
        assert candidates[0].sampling["max_tokens"] == 16 and candidates[0].model_sha256.startswith("a5fd3b62")
    out = tmp_path / "pairs.jsonl"
    run_cli("--db", str(tmp_path / "studio.db"), "pairs", "export", "--out", str(out), home=studio_home, check=True)
    assert json.loads(out.read_text())["chosen"] == texts[0]


async def test_both_bad_then_regenerate_then_b(make_app):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await ask(pilot, app, "Give me a tip for sleeping well.")
        chat = app.chat
        await pilot.press("x")
        await pilot.pause(0.1)
        # Both bad: still judging, offered r / e / i.
        assert str(chat.query_one("#judge-bar").render()).startswith("Both bad, recorded. r regenerate")
        (first,) = app.store.judgements()
        await pilot.press("r")
        await wait_for(pilot, lambda: judging(app) and len(rendered_prompts(app)) == 2)
        second = last_candidates(app)
        assert [c.seed for c in second] == [102, 103]
        await pilot.press("2")
        await wait_for(pilot, lambda: input_ready(app))
        verdicts = [(j.prompt_id, j.verdict) for j in app.store.judgements()]
        assert verdicts == [(first.prompt_id, "both_bad"), (second[0].prompt_id, "b")]
        pair = app.store.pairs()[0]
        assert pair.chosen == second[1].text


async def test_tie_says_what_was_recorded_and_continues_with_the_highlighted_reply(make_app):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await ask(pilot, app, "What is two plus two?")
        chat = app.chat
        texts = [panel.text for panel in chat.panels]
        await pilot.press("right")  # highlight B: the tie continues with B
        await pilot.press("t")
        await wait_for(pilot, lambda: input_ready(app))
        assert [j.verdict for j in app.store.judgements()] == ["tie"]
        assert app.store.count_pairs() == 0
        assert chat.query(ConversationTurn)[-1].text == texts[1].strip()
        assert [t.content for t in app.store.turns(session_id(app))][-1] == texts[1].strip()
        messages = list(app.notices)
        assert any("Tie recorded" in m and "continues with B's reply" in m for m in messages), messages


async def test_edit_writes_a_better_reply_that_becomes_chosen(make_app):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await ask(pilot, app, "What colour is the sky?")
        chat = app.chat
        await pilot.press("right")  # highlight B: the edit starts from B's text
        assert chat.panels[1].highlighted and not chat.panels[0].highlighted
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, TextEditScreen))
        area = app.screen.query_one("TextArea")
        area.text = "Blue, on a clear day."
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: input_ready(app))
        judgement = app.store.judgements()[0]
        assert judgement.verdict == "edited" and judgement.edited_text == " Blue, on a clear day."
        assert {p.chosen for p in app.store.pairs()} == {" Blue, on a clear day."}
        # and a demonstration of that prompt, based on the reply it started from
        (demo,) = app.store.demonstrations(prompt_id=judgement.prompt_id)
        assert (demo.text, demo.based_on_candidate_id) == (" Blue, on a clear day.", judgement.chosen_candidate_id)
        assert judgement.chosen_candidate_id == app.store.candidates(judgement.prompt_id)[1].id
        assert app.store.turns(session_id(app))[-1].content == "Blue, on a clear day."
        assert chat.query(ConversationTurn)[-1].text == "Blue, on a clear day."


async def test_system_prompt_edit_is_stored_and_rendered(make_app):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, TextEditScreen))
        app.screen.query_one("TextArea").text = "You are a pirate. Answer like one."
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, TextEditScreen))
        assert app.store.get_session(session_id(app)).system_prompt == "You are a pirate. Answer like one."
        await ask(pilot, app, "Hello?")
        assert rendered_prompts(app)[-1].startswith("You are a pirate. Answer like one.\n\nUser: Hello?")


async def test_prompt_bank_fills_the_input_only_when_asked(make_app):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        chat = app.chat
        bank = app.prompt_banks[0]
        prompt_input = chat.query_one("#prompt-input")
        await pilot.press("f3")  # one bank prompt, on request
        assert prompt_input.value == bank.prompts[0]
        await pilot.press("enter")
        await wait_for(pilot, lambda: judging(app))
        await pilot.press("1")
        await wait_for(pilot, lambda: input_ready(app))
        assert prompt_input.value == ""  # F3 filled one prompt; judging it does not fetch another
        await ask(pilot, app, "A question I typed myself.")
        await pilot.press("2")
        await wait_for(pilot, lambda: input_ready(app))
        assert prompt_input.value == ""
        await pilot.press("f4")  # bank mode: now every judgement brings the next one
        assert prompt_input.value == bank.prompts[1]
        assert "bank mode on" in str(chat.query_one("#counter").render())
        await pilot.press("enter")
        await wait_for(pilot, lambda: judging(app))
        await pilot.press("1")
        await wait_for(pilot, lambda: input_ready(app))
        assert prompt_input.value == bank.prompts[2]
        assert f"bank: {bank.name} 3/{len(bank.prompts)}" in str(chat.query_one("#counter").render())
        await pilot.press("f4")
        prompt_input.value = ""
        await ask(pilot, app, "Bank mode is off again.")
        await pilot.press("1")
        await wait_for(pilot, lambda: input_ready(app))
        assert prompt_input.value == ""


async def test_escape_stops_the_generation_and_puts_the_prompt_back(make_app):
    app = make_app(sampling=SamplingSettings(max_tokens=400))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        chat = app.chat
        question = "Write a very long story about a lighthouse keeper and the sea, in many chapters."
        chat.query_one("#prompt-input").value = question
        # The test holds the engine, so the candidates wait and escape lands while they are being generated
        # however fast this machine is (a fast one used to finish both before the bar was read).
        with app.engine.session("the test"):
            await pilot.press("enter")
            assert chat.query_one("#prompt-input").disabled
            assert str(chat.query_one("#judge-bar").render()).startswith("generating for: Write a very long story")
            await pilot.press("escape")
        await wait_for(pilot, lambda: input_ready(app))
        assert chat.query_one("#prompt-input").value == question
        assert not chat.query(ConversationTurn)  # the pending question left the conversation pane
        assert app.store.db["prompts"].count == 0 and app.store.judgements() == []


async def test_the_question_being_judged_is_shown_pending_and_turns_say_who_spoke(make_app):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await ask(pilot, app, "Which ocean is the largest?")
        chat = app.chat
        (pending,) = chat.query(ConversationTurn)
        shown = str(pending.render())
        assert pending.pending and "Which ocean is the largest?" in shown and "pending" in shown
        assert shown.startswith("you")
        await pilot.press("1")
        await wait_for(pilot, lambda: input_ready(app))
        user_turn, reply_turn = chat.query(ConversationTurn)
        assert not user_turn.pending and not reply_turn.pending
        assert str(user_turn.render()) == "you\nWhich ocean is the largest?"
        reply = app.store.turns(session_id(app))[-1].content
        assert str(reply_turn.render()) == f"assistant · {app.engine.identity.model_id}\n{reply}"
        # A regenerate keeps one pending question; "i" (move on without a verdict) takes it away.
        await ask(pilot, app, "And the smallest?")
        await pilot.press("r")
        await wait_for(pilot, lambda: judging(app) and len(rendered_prompts(app)) == 3)
        assert [c.seed for c in last_candidates(app)] == [104, 105]
        assert [t.pending for t in chat.query(ConversationTurn)] == [False, False, True]
        await pilot.press("i")
        await pilot.pause(0.1)
        assert [t.pending for t in chat.query(ConversationTurn)] == [False, False]


async def test_the_system_prompt_survives_a_restart(make_app):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, TextEditScreen))
        app.screen.query_one("TextArea").text = "You are a patient maths tutor."
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, TextEditScreen))
        first_session = session_id(app)
    again = make_app()
    async with again.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: input_ready(again))
        assert session_id(again) != first_session  # a new session…
        assert again.chat.system_prompt == "You are a patient maths tutor."  # …with the last system prompt
        await ask(pilot, again, "What is a prime?")
        assert rendered_prompts(again)[-1].startswith("You are a patient maths tutor.\n\nUser: What is a prime?")


async def test_the_editor_clears_with_ctrl_u_and_replaces_after_ctrl_a(make_app):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, TextEditScreen))
        area = app.screen.query_one("TextArea")
        area.text = "line one\nline two\nline three"
        await pilot.press("ctrl+u")
        assert area.text == ""
        await pilot.press(*"Be brief.")
        await pilot.press("ctrl+a")
        await pilot.press(*"Be kind.")
        assert area.text == "Be kind."
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, TextEditScreen))
        assert app.chat.system_prompt == "Be kind."


async def test_empty_prompt_is_refused_and_nothing_stored(make_app):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        app.chat.query_one("#prompt-input").value = "   "
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert input_ready(app)
        assert any("empty" in n for n in app.notices)
        assert app.store.db["prompts"].count == 0


async def test_context_overflow_shows_a_notice(make_app):
    app = make_app(n_ctx=96)
    async with app.run_test(size=(120, 36)) as pilot:
        chat = app.chat
        for i in range(3):
            await ask(pilot, app, f"Round {i}: please tell me a long story about the sea and ships.")
            await pilot.press("1")
            await wait_for(pilot, lambda: input_ready(app))
            if chat.query_one("#notice").display:
                break
        notice = chat.query_one("#notice")
        assert notice.display and "oldest turn(s) were left out" in str(notice.render())


async def test_model_that_fails_to_load_shows_an_error_panel(make_app, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    app = make_app(model=bad)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: error_shown(app))
        message = str(app.screen.query_one("#error-message").render())
        assert str(bad) in message and "damaged" in message
        await pilot.press("q")
        await asyncio.sleep(0.1)
    assert app.return_code == 1


async def test_command_palette_offers_the_main_actions(make_app):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: app.engine is not None)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for expected in ("Edit system prompt", "Next prompt from the bank", "New session", "Regenerate candidates"):
            assert expected in titles
        assert any(t.startswith("Use prompt bank: ") for t in titles)
        await pilot.press("ctrl+p")
        await pilot.press(*"Edit system")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, TextEditScreen))


async def test_escape_from_compare_returns_to_the_chat(make_app, tmp_path):
    from studio.evaluation.compare_session import EVALUATION_KIND
    from studio.tui.screens.compare import CompareScreen
    from studio.tui.screens.train import TrainScreen

    app = make_app()
    store = app.store
    run_id = store.create_run({}, "gemma", str(tmp_path / "run"), [], [])
    store.set_run_status(run_id, "done")
    store.save_evaluation(run_id, EVALUATION_KIND, {"run_id": run_id, "prompts_source": "held-out", "seed": 0,
                                                    "rows": [{"prompt": "Hi?", "base_text": "a", "tuned_text": "b",
                                                              "seed": 1}]})
    async with app.run_test(size=(130, 40)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        await pilot.press("f5")  # compare opened from the train screen, as after a run
        await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
        for _ in range(2):  # and F6 pressed again on the comparison
            app.action_compare(run_id)
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen) and app.screen.result is not None)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.chat)
        assert [type(s).__name__ for s in app.screen_stack[1:]] == ["ChatScreen"]


async def test_a_model_whose_chat_template_fails_is_named_at_load_not_at_the_first_prompt(make_app, tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "broken-template.gguf"
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_string("tokenizer.chat_template", "{{ raise_exception('Only tool calls are supported') }}")
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    app = make_app(model=path)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: error_shown(app))
        message = str(app.screen.query_one("#error-message").render())
        assert str(path) in message and "tokenizer.chat_template" in message
        assert "Only tool calls are supported" in message
        await pilot.press("q")
        await asyncio.sleep(0.1)
    assert app.return_code == 1


async def test_a_prompt_the_chat_template_refuses_shows_an_error_and_keeps_the_prompt(make_app):
    from trainers.prompt_format import ChatTemplateFormat

    template = ("{% for m in messages %}{% if 'forbidden' in m['content'] %}{{ raise_exception('no forbidden "
                "words') }}{% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:")
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        app.engine.prompt_format = ChatTemplateFormat(template=template)  # this app's own engine
        app.chat.query_one("#prompt-input").value = "Say a forbidden word."
        await pilot.press("enter")
        await wait_for(pilot, lambda: error_shown(app))
        message = str(app.screen.query_one("#error-message").render())
        assert app.engine.identity.model_id in message and "the template refused: no forbidden words" in message
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.chat)
        assert input_ready(app) and app.chat.query_one("#prompt-input").value == "Say a forbidden word."
        assert app.store.db["prompts"].count == 0
        await ask(pilot, app, "Say a kind word.")  # the chat goes on
        assert rendered_prompts(app)[-1].endswith("user: Say a kind word.\nassistant:")


async def test_a_saved_persona_comes_back_from_the_palette(make_app, tmp_path):
    from studio.tui.screens.modals import NameScreen

    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, TextEditScreen))
        app.screen.query_one("TextArea").text = "You are a pirate. Answer like one."
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, TextEditScreen))
        await pilot.press("ctrl+p")
        await pilot.press(*"Save system prompt as")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, NameScreen))
        await pilot.press(*"Pirate [/]", "enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, NameScreen))
    saved = json.loads((tmp_path / "personas.json").read_text())
    assert saved == {"personas": {"Pirate [/]": "You are a pirate. Answer like one."}}
    again = make_app()
    async with again.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: input_ready(again))
        again.store.update_system_prompt(session_id(again), "Something else entirely.")
        commands = {c.title: c for c in again.get_system_commands(again.screen)}
        commands["Use persona: Pirate \\[/]"].callback()  # the title is escaped for the palette's markup
        assert again.chat.system_prompt == "You are a pirate. Answer like one."
        await ask(pilot, again, "Where is the treasure?")
        assert rendered_prompts(again)[-1].startswith("You are a pirate. Answer like one.\n\nUser: Where")
        # A damaged personas file is named, and nothing in it is overwritten.
        (tmp_path / "personas.json").write_text('{"personas": {"Pirate": ', encoding="utf-8")
        commands = {c.title: c for c in again.get_system_commands(again.screen)}
        commands["Personas file unreadable"].callback()
        await pilot.pause(0.1)
        assert any("personas.json: not valid JSON (line 1" in n for n in again.notices)
        assert (tmp_path / "personas.json").read_text() == '{"personas": {"Pirate": '


def notices(app) -> list[str]:
    """The notifications shown so far, as the user reads them."""
    return list(app.notices)


async def test_f6_and_f7_while_candidates_generate_are_refused_and_both_come_from_one_adapter(make_app):
    app = make_app(sampling=SamplingSettings(max_tokens=64))
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        chat = app.chat
        chat.query_one("#prompt-input").value = "Write a very long story about a lighthouse keeper and the sea."
        # The test holds the engine while the keys land, so they arrive while the candidates wait to be
        # written however fast this machine is (a short reply used to finish before F6 was read).
        with app.engine.session("generating candidates for prompt 1"):
            await pilot.press("enter")
            await pilot.press("f7", "f6")
            shown = notices(app)
        await wait_for(pilot, lambda: judging(app))
        assert any("Cannot switch the adapter now: the model is generating candidates" in m for m in shown), shown
        assert any("Cannot compare now" in m for m in shown), shown
        assert app.screen is chat and "adapter: none" in app.sub_title
        assert [c.adapter for c in last_candidates(app)] == [None, None]
        await pilot.press("1")
        await wait_for(pilot, lambda: input_ready(app))
        await pilot.press("f7")  # free again: F7 is taken (here there is no run to switch to)
        await pilot.pause(0.1)
        assert any("No finished training run yet" in m for m in notices(app))


async def test_a_new_session_records_the_model_it_was_started_with(make_app, default_model):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await ask(pilot, app, "Hello?")
        await pilot.press("1")
        await wait_for(pilot, lambda: input_ready(app))
        first = session_id(app)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: session_id(app) != first)
        assert [app.store.get_session(s).model_id for s in (first, session_id(app))] == [default_model.name] * 2
        assert not app.chat.query(ConversationTurn) and app.store.turns(session_id(app)) == []
        await ask(pilot, app, "Who are you?")
        assert rendered_prompts(app) == [rendered_prompts(app)[0]] and "Hello?" not in rendered_prompts(app)[0]
