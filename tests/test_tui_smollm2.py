"""Chatting with SmolLM2-135M-Instruct through the real TUI (App.run_test + Pilot, real SQLite): its own ChatML
template, replies that end at its end of turn with no template text on screen or in the store, and the kept
reply carried into the next prompt as a ChatML assistant turn."""

from __future__ import annotations

from dataclasses import replace

from conftest import error_shown, wait_for

from store.studio_store import Store
from studio.inference.engine import SamplingSettings
from studio.inference.model_files import SMOLLM2_SHA256
from studio.settings import load_settings
from studio.tui.app import PreferenceStudioApp
from studio.tui.screens.chat import JUDGE_HINT
from studio.tui.widgets.conversation_turn import ConversationTurn

TEMPLATE_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")


def input_ready(app: PreferenceStudioApp) -> bool:
    return app.engine is not None and not app.chat.query_one("#prompt-input").disabled


def judging(app: PreferenceStudioApp) -> bool:
    return str(app.chat.query_one("#judge-bar").render()) == JUDGE_HINT


async def ask(pilot, app: PreferenceStudioApp, text: str) -> None:  # noqa: ANN001
    await wait_for(pilot, lambda: input_ready(app))
    app.chat.query_one("#prompt-input").value = text
    await pilot.press("enter")
    await wait_for(pilot, lambda: judging(app))


def has_template_text(text: str) -> bool:
    return any(marker in text for marker in TEMPLATE_MARKERS)


async def test_chat_with_smollm2_shows_and_stores_replies_without_template_text(tmp_path, smollm2_model, studio_home):
    with Store.open(tmp_path / "studio.db") as store:
        settings = replace(load_settings(), model=smollm2_model, seed=11, system_prompt="Answer in one sentence.",
                           sampling=SamplingSettings(max_tokens=48))
        app = PreferenceStudioApp(settings=settings, store=store)
        async with app.run_test(size=(120, 36)) as pilot:
            await ask(pilot, app, "What is the capital of France?")
            assert "chat_template format" in str(app.chat.query_one("#engine-status").render())
            first_texts = [panel.text for panel in app.chat.panels]
            assert all(t.strip() and not has_template_text(t) for t in first_texts), first_texts
            await pilot.press("1")
            await wait_for(pilot, lambda: input_ready(app))
            # The kept reply is on screen as the assistant's turn, literally and without markup.
            shown = list(app.chat.query(ConversationTurn))
            assert [t.role for t in shown] == ["user", "assistant"]
            assert shown[1].text == first_texts[0].strip()
            assert not any(has_template_text(str(t.render())) for t in shown)

            await ask(pilot, app, "And of Italy?")
            second_texts = [panel.text for panel in app.chat.panels]
            assert all(t.strip() and not has_template_text(t) for t in second_texts), second_texts
            await pilot.press("2")
            await wait_for(pilot, lambda: input_ready(app))

        session = store.latest_session().id
        (first_prompt, first_rendered), (second_prompt, second_rendered) = store.session_questions(session)
        assert first_rendered == ("<|im_start|>system\nAnswer in one sentence.<|im_end|>\n"
                                  "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                                  "<|im_start|>assistant\n")
        # The second prompt carries the first exchange in ChatML, the kept reply as the assistant turn.
        assert second_rendered == (first_rendered + first_texts[0].strip() + "<|im_end|>\n"
                                   "<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n")
        for judgement in store.judgements():
            for candidate in store.candidates(judgement.prompt_id):
                assert candidate.text.strip() and not has_template_text(candidate.text)
                assert candidate.model_sha256 == SMOLLM2_SHA256  # the candidate names the model that wrote it
        pairs = store.pairs()
        assert len(pairs) == 2 and not any(has_template_text(p.chosen + p.rejected) for p in pairs)
        assert [t.content for t in store.turns(session)][1::2] == [first_texts[0].strip(), second_texts[1].strip()]


async def test_a_broken_template_is_named_and_the_transcript_serves_only_when_asked(tmp_path, smollm2_model,
                                                                                     studio_home):
    from test_bad_inputs import with_chat_template

    broken = with_chat_template(smollm2_model, tmp_path / "smollm2-broken.gguf", "{{ messages[0].nope() }}")
    with Store.open(tmp_path / "studio.db") as store:
        base = replace(load_settings(), model=broken, seed=3, sampling=SamplingSettings(max_tokens=12))
        app = PreferenceStudioApp(settings=base, store=store)
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_for(pilot, lambda: error_shown(app))
            message = str(app.screen.query_one("#error-message").render())
            assert "smollm2-broken.gguf" in message and "tokenizer.chat_template" in message
            assert "--prompt-format transcript" in message
        app = PreferenceStudioApp(settings=replace(base, prompt_format="transcript"), store=store)
        async with app.run_test(size=(120, 36)) as pilot:
            await ask(pilot, app, "Hi")
            assert "transcript format" in str(app.chat.query_one("#engine-status").render())
        (candidate, *_) = store.candidates(max(row["id"] for row in store.db["prompts"].rows))
        assert candidate.rendered_prompt.endswith("User: Hi\nAssistant:")
