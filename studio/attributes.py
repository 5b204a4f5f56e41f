"""The attributes a reply is rated on (0–4 each): the presets, and a user's own set checked.

The default is a short set drawn from SteerLM's attributes (the Llama2-13B-SteerLM-RM rates quality, toxicity,
humor, creativity, helpfulness, correctness, coherence, complexity, verbosity): ``quality`` (the overall
judgement SteerLM steers by), ``helpfulness`` and ``correctness`` (HelpSteer's first two: a reply can sound
helpful and be wrong, the usual failure of a small model), ``humor`` (style, which a preference alone cannot
separate from content) and ``toxicity`` (the safety axis; higher means *more* toxic, as in SteerLM). Five keys
fit one compact row and take a few seconds per reply. The names are spelt as SteerLM, HelpSteer and OASST
spell them (``humor``), so an export's columns line up with theirs.

``oasst`` is OpenAssistant's label set (oasst1/oasst2 ``labels``), ``helpsteer`` HelpSteer's five columns.
"""

from __future__ import annotations

from collections.abc import Sequence

from store.datasets.feedback_formats import ATTRIBUTE_NAME

DEFAULT_ATTRIBUTES: tuple[str, ...] = ("quality", "helpfulness", "correctness", "humor", "toxicity")

ATTRIBUTE_PRESETS: dict[str, tuple[str, ...]] = {
    "steerlm": DEFAULT_ATTRIBUTES,
    "helpsteer": ("helpfulness", "correctness", "coherence", "complexity", "verbosity"),
    "oasst": ("spam", "fails_task", "lang_mismatch", "pii", "not_appropriate", "hate_speech", "sexual_content",
              "quality", "toxicity", "humor", "helpfulness", "creativity", "violence"),
}

# An attribute becomes a column of the ratings export (HelpSteer-style): a plain lower-case name that is not
# one of the columns the export already has.
_NAME = ATTRIBUTE_NAME
_RESERVED = {"prompt", "response", "messages", "candidate_id", "prompt_id"}
MAX_ATTRIBUTES = 16


class AttributeSetError(ValueError):
    """An attribute set that cannot be used; the message names the value that is wrong."""


def attribute_set(value: str | Sequence[str], where: str) -> tuple[str, ...]:
    """A preset name (``oasst``), a comma-separated list (``quality,humor``) or a list of names, as the
    checked attribute set; AttributeSetError naming ``where`` (a flag or a config key) and the bad name."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ATTRIBUTE_PRESETS:
            return ATTRIBUTE_PRESETS[text.lower()]
        names = [part.strip() for part in text.split(",")]
    elif isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        names = [item.strip() for item in value]
    else:
        raise AttributeSetError(f"{where} must be a preset ({', '.join(ATTRIBUTE_PRESETS)}), names separated by "
                              f"commas, or a list of names, got {value!r}")
    names = [name for name in names if name]
    if not names:
        raise AttributeSetError(f"{where} is empty: give a preset ({', '.join(ATTRIBUTE_PRESETS)}) or attribute "
                              "names such as quality,helpfulness")
    if len(names) > MAX_ATTRIBUTES:
        raise AttributeSetError(f"{where} names {len(names)} attributes; at most {MAX_ATTRIBUTES} fit a rating row")
    for name in names:
        if not _NAME.fullmatch(name):
            raise AttributeSetError(f"{where}: attribute {name!r} must be lower-case letters, digits and _ (starting "
                                  "with a letter, at most 40 characters): it becomes a column name on export")
        if name in _RESERVED:
            raise AttributeSetError(f"{where}: {name!r} is a column the ratings export already has; choose another "
                                  "name")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise AttributeSetError(f"{where} names {', '.join(repeated)} more than once")
    return tuple(names)
