"""Stored or user text made safe to print to a terminal.

A dataset record, a prompt or a model reply may hold terminal control sequences (``ESC ]0;title BEL``
sets the window title, ``ESC [2J`` clears the screen, ``\\x9b`` is a one-byte CSI on some terminals).
Everything the CLI echoes from data goes through ``visible`` first, so such bytes are shown as
``\\x1b`` and never acted on.
"""

from __future__ import annotations

import re

# C0 controls, DEL and the C1 range, plus the Unicode line/paragraph separators and bidi overrides that
# reorder what the terminal shows. \n and \t are kept unless asked otherwise: layout uses them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_JSON_RAW_CONTROL = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: object, keep: str = "\n\t") -> str:
    """``text`` with every control character shown as an escape (``\\x1b``), except those in ``keep``."""
    value = str(text)
    return _CONTROL.sub(lambda m: m.group() if m.group() in keep else _escape(m), value)


def one_line(text: object, width: int) -> str:
    """``text`` on one line (whitespace runs become one space), controls escaped, cut to ``width``."""
    flat = " ".join(visible(text, keep="\n\t").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def json_visible(dumped: str) -> str:
    """JSON text (``json.dumps(..., ensure_ascii=False)``) with DEL and C1 controls written as ``\\u`` escapes.

    ``json.dumps`` escapes C0 controls itself; DEL and C1 (``\\x9b`` is CSI) pass through raw. They can only
    occur inside JSON strings, where ``\\u009b`` is the same value, so the document still parses the same.
    """
    return _JSON_RAW_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", dumped)
