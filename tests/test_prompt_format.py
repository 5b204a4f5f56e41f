import pytest

from trainers.prompt_format import ChatTemplateFormat, ChatTurn, TranscriptFormat, format_for_metadata

GEMMA_LIKE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def test_transcript_renders_system_turns_and_generation_prompt():
    fmt = TranscriptFormat()
    text = fmt.render(
        "Be brief.",
        [ChatTurn("user", " Hi "), ChatTurn("assistant", "Hello!"), ChatTurn("user", "How are you?")],
    )
    assert text == "Be brief.\n\nUser: Hi\nAssistant: Hello!\nUser: How are you?\nAssistant:"
    assert "\nUser:" in fmt.stop


def test_transcript_without_system_text_starts_with_the_first_turn():
    assert TranscriptFormat().render("  ", [ChatTurn("user", "Hi")]) == "User: Hi\nAssistant:"


def test_transcript_completion_keeps_the_leading_space_the_model_generates():
    assert TranscriptFormat().as_completion("  Paris.\n") == " Paris."


@pytest.mark.parametrize("turns", [[], [ChatTurn("user", "a"), ChatTurn("assistant", "b")]])
def test_a_prompt_must_end_with_a_user_turn(turns):
    with pytest.raises(ValueError):
        TranscriptFormat().render("", turns)


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="unknown role"):
        ChatTurn("robot", "beep")


def test_chat_template_is_rendered_and_bos_left_to_the_tokenizer():
    fmt = format_for_metadata({"tokenizer.chat_template": GEMMA_LIKE_TEMPLATE}, {"bos": "<bos>", "eos": "<eos>"})
    assert isinstance(fmt, ChatTemplateFormat)
    text = fmt.render("Sys", [ChatTurn("user", "Hi")])
    assert text == "<start_of_turn>system\nSys<end_of_turn>\n<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert fmt.stop == ("<eos>",)
    assert fmt.as_completion(" ok ") == "ok"


def test_metadata_without_template_gives_transcript():
    assert isinstance(format_for_metadata({"general.architecture": "gemma3"}), TranscriptFormat)
