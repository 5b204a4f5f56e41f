"""SteerLM part 2 (issue 17): the attribute string's one rule, attribute-conditioned SFT (``steerlm``)."""

from __future__ import annotations

import pytest

from trainers.prompt_format import ChatTemplateFormat, ChatTurn, TranscriptFormat
from trainers.steer_format import (
    SteerValueError,
    attribute_string,
    check_values,
    parse_attribute_string,
    parse_settings,
    split_steered_prompt,
    steered_prompt,
)

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_attribute_string_has_one_fixed_order():
    assert attribute_string({"humor": 0, "quality": 4}) == "quality:4,humor:0"
    assert attribute_string({"verbosity": 2, "zeal": 1, "toxicity": 0}) == "toxicity:0,verbosity:2,zeal:1"
    assert parse_attribute_string("quality:4,humor:0") == {"quality": 4, "humor": 0}


def test_transcript_rule_renders_and_parses_back():
    fmt = TranscriptFormat()
    base = fmt.render("Be brief.", [ChatTurn("user", "Hi")])
    steered = steered_prompt(base, {"humor": 0, "quality": 4}, fmt.name)
    assert steered == "Be brief.\n\nUser: Hi\nAssistant: [quality:4,humor:0]"
    # The reply keeps the transcript's leading space after the steering.
    assert split_steered_prompt(steered) == (base, {"quality": 4, "humor": 0})
    assert split_steered_prompt(base) == (base, None)
    assert steered_prompt(base, None, fmt.name) == base


def test_chat_template_rule_renders_and_parses_back():
    fmt = ChatTemplateFormat(CHATML, stop=("<|im_end|>",))
    base = fmt.render("Be brief.", [ChatTurn("user", "Hi")])
    steered = steered_prompt(base, {"verbosity": 4}, fmt.name)
    assert steered.endswith("<|im_start|>assistant\n[verbosity:4]\n")
    assert split_steered_prompt(steered) == (base, {"verbosity": 4})


@pytest.mark.parametrize(("text", "named"), [
    ("quality=5", "outside 0–4"),
    ("quality=-1", "outside 0–4"),
    ("quality=high", "not name=value"),
    ("quality=1,quality=2", "given twice"),
    ("Quality=1", "not an attribute name"),
    ("", "no attribute values"),
])
def test_bad_settings_say_what_is_wrong(text, named):
    with pytest.raises(SteerValueError, match=named):
        parse_settings(text)


def test_settings_for_attributes_the_run_was_not_trained_on_are_refused():
    assert check_values({"humor": 1}, allowed=("quality", "humor")) == {"humor": 1}
    with pytest.raises(SteerValueError, match=r"'verbosity' is not an attribute this run was trained on \(trained "
                                              r"on: quality, humor\)"):
        check_values({"verbosity": 1}, allowed=("quality", "humor"))
