"""The replies ``prefstudio safety check FILE`` reads: JSON Lines, one reply (or a TRL row of them) per line.

Each line is one of
- ``{"prompt": "…", "reply": "…"}`` or ``{"messages": [{"role", "content"}, …], "reply": "…"}``;
- ``{"messages": [… , {"role": "assistant", "content": "…"}]}``: the last assistant message is the reply;
- TRL's prompt-completion row ``{"prompt": …, "completion": …}``;
- TRL's preference row ``{"prompt": …, "chosen": …, "rejected": …}``: both replies are checked, each labelled.

A prompt is text (one user turn) or a list of messages; a reply is text or one assistant message (TRL's
conversational rows). A line that is none of these is named with its line number; nothing is checked then.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trainers.prompt_format import ChatTurn

_REPLY_KEYS = ("reply", "completion", "chosen", "rejected")


class ReplyFileError(ValueError):
    """A replies file that cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class ReplyToCheck:
    """One reply and the conversation before it, with where it came from."""

    where: str  # "line 3", "prompt 2"
    label: str  # "reply", "completion", "chosen", "rejected"; "base" / "tuned" for a comparison's answers
    conversation: tuple[ChatTurn, ...]
    reply: str


def _turns(value: object, where: str) -> tuple[ChatTurn, ...]:
    if isinstance(value, str):
        return (ChatTurn("user", value),)
    if not isinstance(value, list) or not value:
        raise ReplyFileError(f"{where}: the prompt must be text or a non-empty list of messages")
    turns = []
    for number, message in enumerate(value, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                or not isinstance(message.get("role"), str):
            raise ReplyFileError(f"{where}: message {number} must be {{\"role\": …, \"content\": \"text\"}}")
        try:
            turns.append(ChatTurn(message["role"], message["content"]))
        except ValueError as exc:
            raise ReplyFileError(f"{where}: message {number}: {exc}") from None
    return tuple(turns)


def _reply_text(value: object, where: str, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) \
            and isinstance(value[0].get("content"), str):
        return value[0]["content"]
    raise ReplyFileError(f"{where}: \"{key}\" must be text or one assistant message")


def replies_in_row(row: object, where: str, shown: str | None = None) -> list[ReplyToCheck]:
    """The replies one JSON row holds (see the module's list of shapes); ``where`` names the row in an error
    (file and line), ``shown`` in each reply (the line alone; default ``where``)."""
    shown = shown or where
    if not isinstance(row, dict):
        raise ReplyFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
    found = [key for key in _REPLY_KEYS if key in row]
    if not found:
        messages = row.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
                and messages[-1].get("role") == "assistant":
            turns = _turns(messages, where)
            return [ReplyToCheck(shown, "reply", turns[:-1], turns[-1].content)]
        raise ReplyFileError(f"{where}: no reply in it; expected \"reply\", \"completion\", \"chosen\"/\"rejected\", "
                             "or \"messages\" ending with an assistant message")
    prompt = row.get("prompt", row.get("messages"))
    if prompt is None:
        raise ReplyFileError(f"{where}: no \"prompt\" (text or messages) or \"messages\" before the reply")
    turns = _turns(prompt, where)
    return [ReplyToCheck(shown, key, turns, _reply_text(row[key], where, key)) for key in found]


def read_reply_file(path: Path) -> list[ReplyToCheck]:
    """Every reply in a JSON Lines file; ReplyFileError naming the file and line of the first bad one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReplyFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ReplyFileError(f"{path} is a folder; give a JSON Lines file") from None
    except OSError as exc:
        raise ReplyFileError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    replies: list[ReplyToCheck] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        where = f"{path} line {number}"
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ReplyFileError(f"{where}: not UTF-8 text ({exc.reason})") from None
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReplyFileError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise ReplyFileError(f"{where}: JSON nested too deeply to read") from None
        replies += replies_in_row(row, where, f"line {number}")
    if not replies:
        raise ReplyFileError(f"{path}: no replies in it (one JSON object a line, e.g. "
                             "{\"prompt\": \"…\", \"reply\": \"…\"})")
    return replies
