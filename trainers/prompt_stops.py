"""Where a reply to an already rendered prompt ends: stop strings that follow the prompt's own format.

The engine's stop strings belong to the format it renders new prompts in (the transcript's ``\\nUser:``, a
chat template's end-of-turn). A *stored* prompt — a held-out pair, an imported dataset, an older session —
may be in another format: Anthropic HH writes ``\\n\\nHuman: …\\n\\nAssistant:``, and a base model given that
prompt happily invents the next ``Human:`` turn. ``stops_for_prompt`` reads the turn labels from the prompt
itself, so whoever generates from a stored prompt stops where that prompt's format ends a reply::

    stop = stops_for_prompt(engine.prompt_format, rendered)
    engine.generate(rendered, sampling, seed, stop=stop)
"""

from __future__ import annotations

import re

from trainers.prompt_format import PromptFormat

# A speaker label opening a line: "User:", "Human:", "Assistant:" (one capitalised word, as transcripts and
# HH write them). Multi-word or lower-case prefixes are ordinary text, not turns.
_LABEL = re.compile(r"(?m)^([A-Z][A-Za-z0-9_]{0,31}):")

# End-of-turn markers of the common chat templates. A rendered prompt that contains one was written by that
# template, so the reply ends at the same marker (llama.cpp also stops at the model's own EOG tokens).
END_OF_TURN_MARKERS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "</s>")


def transcript_speakers(rendered_prompt: str) -> tuple[str, ...]:
    """The speaker labels of a transcript-style prompt that ends by opening a turn (``…\\nAssistant:``).

    The answering label is the last one; the others are the labels that open the turn just before each of
    its turns (``Human`` in HH, ``User`` in the studio's transcript). A system text line such as ``Note:``
    that never precedes a reply is not a speaker. Empty when the prompt does not end in a label.
    """
    tail = rendered_prompt.rstrip()
    matches = list(_LABEL.finditer(tail))
    if not matches or matches[-1].end() != len(tail):
        return ()
    answering = matches[-1].group(1)
    speakers = [answering]
    for previous, current in zip(matches, matches[1:], strict=False):
        if current.group(1) == answering and previous.group(1) not in speakers:
            speakers.append(previous.group(1))
    return tuple(speakers)


def stops_for_prompt(fmt: PromptFormat, rendered_prompt: str) -> tuple[str, ...]:
    """The stop strings for generating a reply to ``rendered_prompt``.

    The format's own stops, plus what the prompt shows of its format: a transcript's next turn label
    (``\\nHuman:`` for HH, which also ends HH's ``\\n\\nHuman:``; ``\\nUser:`` for the studio's transcript) and
    any chat-template end-of-turn marker the prompt contains.
    """
    stops = list(fmt.stop)
    stops += [f"\n{label}:" for label in transcript_speakers(rendered_prompt)]
    stops += [marker for marker in END_OF_TURN_MARKERS if marker in rendered_prompt]
    return tuple(dict.fromkeys(s for s in stops if s))
