"""SteerLM's attribute string and its one place in a prompt, shared by training and the studio.

The string is ``quality:4,humor:0``: ``name:value`` pairs (0–4) joined by commas, in a fixed order (the order of
``ATTRIBUTE_ORDER``, SteerLM's own, then any other name alphabetically), so the same values always give the same
text, whatever order a user typed them in.

Where it goes: at the very end of the rendered prompt, where the reply begins, in square brackets. This is
SteerLM's own place (NeMo-Aligner writes the attribute line at the start of the assistant turn) and it renders
through every prompt format alike, because it is added *after* the format rendered the conversation:

* transcript: ``…\\nAssistant: [quality:4,humor:0]`` and the reply follows with its usual leading space
  (``Assistant: [quality:4] Sure, …``);
* a chat template: ``…<|im_start|>assistant\\n[quality:4,humor:0]\\n`` and the reply starts on the next line.

Putting it there, rather than in the system turn, means (1) a template cannot refuse, fold or drop it (Gemma's
and Mistral's refuse a system turn; some templates ignore it), (2) a stored candidate's exact rendered prompt
can be steered by appending, with no re-rendering, so training reads the very prompt text the chat evaluated,
and (3) a small model sees the values right next to what it writes. ``split_steered_prompt`` parses it back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

ATTRIBUTE_MIN, ATTRIBUTE_MAX = 0, 4

# SteerLM's order (Llama2-13B-SteerLM-RM, HelpSteer), so strings line up with theirs; other names follow, sorted.
ATTRIBUTE_ORDER: tuple[str, ...] = (
    "quality", "toxicity", "humor", "creativity", "helpfulness", "correctness", "coherence", "complexity",
    "verbosity",
)

TRANSCRIPT_FORMAT = "transcript"
_NAME = r"[a-z][a-z0-9_]{0,39}"
_PAIR = re.compile(rf"({_NAME}):(\d+)")
# The steering at the end of a rendered prompt: " [a:1,b:2]" (transcript) or "[a:1,b:2]\n" (chat template).
_STEERED = re.compile(rf"(?: \[|\[)((?:{_NAME}:\d+)(?:,{_NAME}:\d+)*)\]\n?\Z")


class SteerValueError(ValueError):
    """An attribute setting that cannot be used; the message names the attribute or value that is wrong."""


def ordered_names(names: list[str] | tuple[str, ...] | set[str]) -> list[str]:
    """``names`` in the attribute string's fixed order."""
    rank = {name: i for i, name in enumerate(ATTRIBUTE_ORDER)}
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


def check_values(values: Mapping[str, int], allowed: tuple[str, ...] | list[str] | None = None,
                 where: str = "attributes") -> dict[str, int]:
    """``values`` checked (integers 0–4; names among ``allowed`` when given), in the fixed order."""
    if not values:
        raise SteerValueError(f"{where}: no attribute values given (e.g. quality=4,humor=0)")
    out: dict[str, int] = {}
    for name in ordered_names(list(values)):
        value = values[name]
        if not re.fullmatch(_NAME, name):
            raise SteerValueError(f"{where}: {name!r} is not an attribute name (lower-case letters, digits and _)")
        if allowed is not None and name not in allowed:
            trained = ", ".join(allowed) if allowed else "none"
            raise SteerValueError(f"{where}: {name!r} is not an attribute this run was trained on (trained on: "
                                  f"{trained})")
        if isinstance(value, bool) or not isinstance(value, int) or not ATTRIBUTE_MIN <= value <= ATTRIBUTE_MAX:
            raise SteerValueError(f"{where}: {name}={value!r} is outside {ATTRIBUTE_MIN}–{ATTRIBUTE_MAX} (whole "
                                  "numbers)")
        out[name] = value
    return out


def attribute_string(values: Mapping[str, int]) -> str:
    """``{"humor": 0, "quality": 4}`` -> ``"quality:4,humor:0"`` (checked, fixed order)."""
    return ",".join(f"{name}:{value}" for name, value in check_values(values).items())


def parse_attribute_string(text: str, where: str = "attribute string") -> dict[str, int]:
    """``"quality:4,humor:0"`` -> ``{"quality": 4, "humor": 0}``; SteerValueError naming the bad part."""
    out: dict[str, int] = {}
    for part in text.strip().split(","):
        match = _PAIR.fullmatch(part.strip())
        if not match:
            raise SteerValueError(f"{where}: {part.strip()!r} is not name:value (e.g. quality:4)")
        if match.group(1) in out:
            raise SteerValueError(f"{where}: {match.group(1)} is given twice")
        out[match.group(1)] = int(match.group(2))
    return check_values(out, where=where)


def parse_settings(text: str, where: str = "--attributes") -> dict[str, int]:
    """A user's ``quality=4,humor=0`` (``:`` also accepted) as checked values."""
    out: dict[str, int] = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, sep, value = part.replace(":", "=", 1).partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not re.fullmatch(r"-?\d+", value):
            raise SteerValueError(f"{where}: {part!r} is not name=value with a whole number 0–4 (e.g. quality=4)")
        if name in out:
            raise SteerValueError(f"{where}: {name} is given twice")
        out[name] = int(value)
    return check_values(out, where=where)


def steer_suffix(values: Mapping[str, int], format_name: str) -> str:
    """What goes after the rendered prompt for ``values`` in the format named ``format_name``."""
    string = attribute_string(values)
    return f" [{string}]" if format_name == TRANSCRIPT_FORMAT else f"[{string}]\n"


def steered_prompt(rendered: str, values: Mapping[str, int] | None, format_name: str) -> str:
    """``rendered`` (a prompt up to where the reply starts) with the values at the place of the rule; unchanged
    when ``values`` is empty or None."""
    return rendered + steer_suffix(values, format_name) if values else rendered


def split_steered_prompt(rendered: str) -> tuple[str, dict[str, int] | None]:
    """(the prompt without the steering, its values) for a steered prompt; (``rendered``, None) otherwise."""
    match = _STEERED.search(rendered)
    if not match:
        return rendered, None
    return rendered[:match.start()], parse_attribute_string(match.group(1))


def steerable_attributes(config: Mapping[str, object] | None, summary: Mapping[str, object] | None,
                         status: str, run_id: int) -> tuple[str, ...]:
    """The attributes run ``run_id`` can be steered by (its ``steer_attributes``); SteerValueError saying why
    when it is not a finished SteerLM run. Plain values, so the studio and trainers both call it."""
    method = (config or {}).get("method")
    if method != "steerlm":
        raise SteerValueError(f"run {run_id} is a {method or 'dpo'} run, not a SteerLM run: attribute values "
                              "steer only a model trained with --method steerlm")
    if status != "done":
        raise SteerValueError(f"run {run_id} is {status}, not done: steer with a finished SteerLM run")
    names = (summary or {}).get("steer_attributes") or ((summary or {}).get("selection") or {}).get("attributes")
    if not isinstance(names, list) or not names:
        raise SteerValueError(f"run {run_id} records no attributes it was trained on")
    return tuple(str(name) for name in names)
