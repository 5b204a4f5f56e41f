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


def test_chat_template_is_rendered_and_bos_left_to_the_tokenizer_that_adds_it():
    metadata = {"tokenizer.chat_template": GEMMA_LIKE_TEMPLATE, "tokenizer.ggml.add_bos_token": True}
    fmt = format_for_metadata(metadata, {"bos": "<bos>", "eos": "<eos>"})
    assert isinstance(fmt, ChatTemplateFormat)
    text = fmt.render("Sys", [ChatTurn("user", "Hi")])
    assert text == "<start_of_turn>system\nSys<end_of_turn>\n<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert fmt.stop == ("<eos>",)
    assert fmt.as_completion(" ok ") == "ok"


def test_a_template_bos_stays_when_the_tokenizer_does_not_add_one():
    # The tokenizer will not put BOS in front, so the template's own BOS text is the prompt's one BOS.
    metadata = {"tokenizer.chat_template": GEMMA_LIKE_TEMPLATE, "tokenizer.ggml.add_bos_token": False}
    text = format_for_metadata(metadata, {"bos": "<bos>"}).render("", [ChatTurn("user", "Hi")])
    assert text.startswith("<bos><start_of_turn>user\n")


def test_a_bos_token_that_opens_every_chatml_turn_is_never_cut():
    # SmolLM2: bos_token is <|im_start|>, add_bos_token false. Cutting it would lose the first turn's opening.
    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    metadata = {"tokenizer.chat_template": chatml, "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.model": "gpt2"}
    fmt = format_for_metadata(metadata, {"bos": "<|im_start|>", "eos": "<|im_end|>"})
    assert fmt.render("S", [ChatTurn("user", "Hi")]) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(("metadata", "adds"), [
    ({"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.model": "gpt2"}, True),
    ({"tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.model": "llama"}, False),
    ({"tokenizer.ggml.model": "llama"}, True),
    ({"tokenizer.ggml.model": "gpt2"}, False),
])
def test_whether_the_tokenizer_adds_bos_is_read_from_the_gguf(metadata, adds):
    from trainers.prompt_format import tokenizer_adds_bos

    assert tokenizer_adds_bos(metadata) is adds


def test_every_end_of_turn_token_is_a_stop_beside_the_eos():
    fmt = format_for_metadata({"tokenizer.chat_template": GEMMA_LIKE_TEMPLATE}, {"eos": "<eos>"},
                              end_of_turn=["<eos>", "<end_of_turn>"])
    assert fmt.stop == ("<eos>", "<end_of_turn>")


def test_metadata_without_template_gives_transcript():
    assert isinstance(format_for_metadata({"general.architecture": "gemma3"}), TranscriptFormat)


# --- chat templates that fail: a clear message, at once, never a crash or a 10 GB string ---------------

BAD_TEMPLATES = {
    "syntax error": ("{% for m in messages %}{{ m.content }", "syntax error on line 1"),
    "raise_exception": ("{{ raise_exception('Conversation roles must alternate') }}",
                        "the template refused: Conversation roles must alternate"),
    "sandbox violation": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "not allowed in the sandbox"),
    "huge repeat": ("{{ 'x' * 10 ** 10 }}", "the * operator would build 10,000,000,000 characters"),
    "doubling loop": ("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                      "{% endfor %}{{ ns.s }}", "the ~ operator would build"),
    "doubling with +": ("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
                        "{% endfor %}{{ ns.s }}", "the + operator would build"),
    "padding method": ("{{ 'x'.ljust(10000000000) }}", "str.ljust() would build"),
    "format width": ("{{ '{:>10000000000}'.format('x') }}", "str.format() would build"),
    "percent width": ("{{ '%10000000000s' % 'x' }}", "the % operator would build"),
    "center filter": ("{{ 'x'|center(10000000000) }}", "the center filter would build"),
    "join of repeats": ("{{ ([('x' * 900000)] * 1000)|join }}", "the join filter would build"),
    "endless output": ("{% for i in range(100000) %}{% for j in range(100000) %}0123456789{% endfor %}"
                       "{% endfor %}", "passed 1,000,000 characters"),
}


@pytest.mark.parametrize("name", list(BAD_TEMPLATES))
def test_a_failing_chat_template_is_refused_with_its_problem_named(name):
    import time

    from trainers.prompt_format import PromptFormatError

    template, phrase = BAD_TEMPLATES[name]
    start = time.monotonic()
    with pytest.raises(PromptFormatError, match="chat template") as caught:
        format_for_metadata({"tokenizer.chat_template": template})
    assert phrase in str(caught.value)
    assert time.monotonic() - start < 5  # refused before the string is built, not after


def test_a_template_that_fails_only_on_some_content_fails_at_render_with_a_clear_error():
    from trainers.prompt_format import PromptFormatError

    template = ("{% for m in messages %}{% if 'forbidden' in m['content'] %}{{ raise_exception('no forbidden "
                "words') }}{% endif %}{{ m['content'] }}\n{% endfor %}")
    fmt = format_for_metadata({"tokenizer.chat_template": template})  # the probe conversation renders
    assert fmt.render("", [ChatTurn("user", "fine")]) == "fine\n"
    with pytest.raises(PromptFormatError, match="the template refused: no forbidden words"):
        fmt.render("", [ChatTurn("user", "a forbidden word")])


def test_a_template_that_refuses_the_system_turn_gets_the_system_text_in_the_first_user_turn():
    template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                "{% endif %}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>")
    fmt = format_for_metadata({"tokenizer.chat_template": template})
    assert fmt.fold_system
    text = fmt.render("Be kind.", [ChatTurn("user", "Hi"), ChatTurn("assistant", "Hello"), ChatTurn("user", "Bye")])
    assert text == "<user>Be kind.\n\nHi\n<assistant>Hello\n<user>Bye\n<assistant>"
    assert fmt.render("", [ChatTurn("user", "Hi")]) == "<user>Hi\n<assistant>"


def test_an_ordinary_template_keeps_its_system_turn():
    fmt = format_for_metadata({"tokenizer.chat_template": GEMMA_LIKE_TEMPLATE})
    assert not fmt.fold_system
