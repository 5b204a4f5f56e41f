"""The one prompt renderer, shared by the chat engine and the trainers.

Every candidate is stored with the exact text this module rendered for it, so a DPO run later trains on
the very prompt the chat engine evaluated. Two formats exist:

* ``ChatTemplateFormat``: the model's own Jinja chat template (GGUF key ``tokenizer.chat_template``),
  rendered the way transformers and llama.cpp do (sandboxed Jinja, ``add_generation_prompt=True``).
* ``TranscriptFormat``: for base models without a template (the embedded Gemma 3 270M). Gemma's own
  turn markers make a base model echo the prompt; a plain ``User:`` / ``Assistant:`` transcript with a
  stop at the next ``User:`` gives short, usable replies.

Completions keep the model's own leading whitespace (``" Hello"`` after ``"Assistant:"``): that is how the
tokenizer saw them during generation, and how they must be tokenised during training.
``as_completion`` puts a human-written reply (an edit, an imported pair) into the same convention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatTurn:
    """One turn of a conversation as the user sees it (content without the model's leading space)."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {', '.join(ROLES)}")


class PromptFormat(Protocol):
    """What the engine and trainers need from a prompt format."""

    name: str
    stop: tuple[str, ...]

    def render(self, system: str, turns: Sequence[ChatTurn]) -> str:
        """Render the system text and turns (ending with a user turn) up to where the reply starts."""
        ...

    def as_completion(self, reply: str) -> str:
        """Put a reply written by a person into the whitespace convention the model generates in."""
        ...


def _check_turns(turns: Sequence[ChatTurn]) -> None:
    if not turns:
        raise ValueError("a prompt needs at least one user turn")
    if turns[-1].role != "user":
        raise ValueError("the last turn of a prompt must be the user's")


@dataclass(frozen=True)
class TranscriptFormat:
    """``{system}\\n\\nUser: …\\nAssistant: …\\nUser: …\\nAssistant:`` — for models without a template."""

    user_label: str = "User"
    assistant_label: str = "Assistant"
    name: str = "transcript"

    @property
    def stop(self) -> tuple[str, ...]:
        # A base model happily writes both sides of the dialogue; the next turn label ends the reply.
        return (f"\n{self.user_label}:", f"\n{self.assistant_label}:")

    def render(self, system: str, turns: Sequence[ChatTurn]) -> str:
        _check_turns(turns)
        lines: list[str] = []
        for turn in turns:
            if turn.role == "system":
                continue
            label = self.user_label if turn.role == "user" else self.assistant_label
            lines.append(f"{label}: {turn.content.strip()}")
        lines.append(f"{self.assistant_label}:")
        body = "\n".join(lines)
        system = system.strip()
        return f"{system}\n\n{body}" if system else body

    def as_completion(self, reply: str) -> str:
        return " " + reply.strip()


def _raise_exception(message: str) -> None:
    # Templates call raise_exception() to reject, e.g., a system turn they do not support.
    raise jinja2.TemplateError(message)


@dataclass(frozen=True)
class ChatTemplateFormat:
    """A model's own Jinja chat template, rendered as transformers does."""

    template: str
    bos_token: str = ""
    eos_token: str = ""
    stop: tuple[str, ...] = ()
    name: str = "chat_template"

    def render(self, system: str, turns: Sequence[ChatTurn]) -> str:
        _check_turns(turns)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        messages = [{"role": "system", "content": system.strip()}] if system.strip() else []
        messages += [{"role": t.role, "content": t.content.strip()} for t in turns if t.role != "system"]
        text = env.from_string(self.template).render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )
        # llama.cpp and the HF tokenizer both add BOS themselves; a template that writes it too would
        # give the model two of them.
        if self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]
        return text

    def as_completion(self, reply: str) -> str:
        return reply.strip()


def format_for_metadata(metadata: Mapping[str, str], token_texts: Mapping[str, str] | None = None) -> PromptFormat:
    """Choose the format for a model from its GGUF metadata (``tokenizer.chat_template`` or not).

    ``token_texts`` may carry ``bos``/``eos`` token strings for templates that reference them.
    """
    template = metadata.get("tokenizer.chat_template")
    if template:
        tokens = token_texts or {}
        eos = tokens.get("eos", "")
        return ChatTemplateFormat(
            template=template,
            bos_token=tokens.get("bos", ""),
            eos_token=eos,
            stop=(eos,) if eos else (),
        )
    return TranscriptFormat()
