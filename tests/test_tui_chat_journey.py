"""A newcomer's whole chat session through the real app: a dozen prompts under a long system prompt,
judged with every key, text that looks like markup among them; then the store, the turns and the screen
must all tell the same story (issue 9, the chat items; issue 10, item 7)."""

from __future__ import annotations

from conftest import wait_for
from test_tui_chat import input_ready, judging, make_app, rendered_prompts, session_id  # noqa: F401  (make_app: a fixture)

from studio.inference.engine import SamplingSettings
from studio.tui.screens.modals import TextEditScreen
from studio.tui.widgets.conversation_turn import ConversationTurn

# About 90 tokens of an organisation's values, as a practitioner would paste them.
SYSTEM = (
    "You are the help desk assistant of the Riverside Community Library. Our values: every visitor is "
    "welcome whatever their age, language or background; we explain things plainly and never talk down to "
    "anyone; we protect privacy and never ask for personal details we do not need; we recommend books and "
    "services honestly, including ones from other libraries; and when we do not know, we say so and point "
    "to a librarian. Keep answers short, warm and practical."
)

# (prompt, the keys that judge it). "right" highlights B; a trailing "edit:" writes the better reply.
JOURNEY = [
    ("What time does the library open?", ["1"]),
    ("Name a colour [/] and [bold]why[/bold].", ["2"]),
    ("Is tea better than coffee?", ["right", "t"]),
    ("Give me one word.", ["x", "r", "1"]),
    ("Say something kind.", ["edit:You are always welcome here [/]."]),
    ("Count to three.", ["1"]),
    ("What is two plus two?", ["r", "2"]),
    ("Describe the river [link=x]in[/link] five words.", ["1"]),
    ("Tell me a joke.", ["x", "i"]),
    ("What is your name?", ["2"]),
    ("Recommend a book.", ["t"]),
    ("Say goodbye.", ["1"]),
]


async def test_a_dozen_prompts_in_one_session_judged_with_every_key(make_app):  # noqa: F811
    app = make_app(system_prompt=SYSTEM, sampling=SamplingSettings(max_tokens=8))
    async with app.run_test(size=(130, 44)) as pilot:
        await wait_for(pilot, lambda: input_ready(app))
        chat = app.chat
        store = app.store
        prompt_input = chat.query_one("#prompt-input")
        assert len(app.engine.tokenize(SYSTEM)) >= 80
        expected_turns: list[tuple[str, str]] = []  # what the conversation must hold afterwards
        expected_pairs: list[tuple[str, str]] = []  # (chosen, rejected) the judgements imply
        expected_verdicts: list[str] = []
        for prompt, keys in JOURNEY:
            prompt_input.value = prompt
            await pilot.press("enter")
            await wait_for(pilot, lambda: judging(app))
            # The question being judged is on screen, marked pending, as typed.
            pending = [t for t in chat.query(ConversationTurn) if t.pending]
            assert [t.text for t in pending] == [prompt]
            assert prompt in str(pending[0].render())
            reply: str | None = None
            for key in keys:
                texts = [panel.text for panel in chat.panels]
                if key.startswith("edit:"):
                    await pilot.press("e")
                    await wait_for(pilot, lambda: isinstance(app.screen, TextEditScreen))
                    written = key.removeprefix("edit:")
                    app.screen.query_one("TextArea").text = written
                    await pilot.press("ctrl+s")
                    expected_verdicts.append("edited")
                    # An edit is preferred to every candidate whose text differs from it.
                    expected_pairs += [(" " + written, text) for text in texts if text != " " + written]
                    reply = written
                    continue
                asked = len(rendered_prompts(app))
                await pilot.press(key)
                if key == "r":  # asked again, answered and stored: judging the new candidates
                    await wait_for(pilot, lambda asked=asked: judging(app) and len(rendered_prompts(app)) > asked)
                elif key in ("1", "2"):
                    picked = int(key) - 1
                    expected_verdicts.append("a" if key == "1" else "b")
                    if texts[picked] != texts[1 - picked]:
                        expected_pairs.append((texts[picked], texts[1 - picked]))
                    reply = texts[picked].strip()
                elif key == "t":
                    expected_verdicts.append("tie")
                    highlighted = next(i for i, p in enumerate(chat.panels) if p.highlighted)
                    reply = texts[highlighted].strip()
                elif key == "x":
                    expected_verdicts.append("both_bad")
                    await pilot.pause(0.1)
                    # Both bad: r, e or i next.
                    assert str(chat.query_one("#judge-bar").render()).startswith("Both bad, recorded.")
            await wait_for(pilot, lambda: input_ready(app))
            if reply is not None:
                expected_turns += [("user", prompt), ("assistant", reply)]
            assert prompt_input.value == ""  # no bank prompt pushed in after a typed prompt
            for panel in chat.panels:
                panel.highlighted = panel.slot == 0

        # The store: every verdict in order, the pairs they imply, the conversation as continued.
        assert [j.verdict for j in store.judgements()] == expected_verdicts
        assert sorted((p.chosen, p.rejected) for p in store.pairs(session_id=session_id(app))) == sorted(
            expected_pairs)
        assert [(t.role, t.content) for t in store.turns(session_id(app))] == expected_turns
        assert store.db["prompts"].count == len(JOURNEY) + 2  # two regenerations asked again
        # Every candidate saw the whole system prompt and the conversation so far, markup-like text verbatim.
        last = store.judgements()[-1]
        rendered = store.candidates(last.prompt_id)[0].rendered_prompt
        assert rendered.startswith(SYSTEM + "\n\nUser: What time does the library open?")
        assert "User: Name a colour [/] and [bold]why[/bold].\nAssistant:" in rendered
        assert rendered.endswith("User: Say goodbye.\nAssistant:")
        assert "Tell me a joke." not in rendered  # both bad, then moved on: not part of the conversation
        # The screen: each turn labelled, nothing pending, the same text as the store.
        shown = list(chat.query(ConversationTurn))
        assert not any(t.pending for t in shown)
        assert [(t.role, t.text) for t in shown] == expected_turns
        assert all(str(t.render()).startswith("you\n" if t.role == "user" else "assistant · gemma") for t in shown)
        counter = str(chat.query_one("#counter").render())
        assert f"pairs this session: {len(expected_pairs)}" in counter
        assert app.is_running
