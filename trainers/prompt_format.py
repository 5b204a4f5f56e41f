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
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal, Protocol

import jinja2

from trainers.template_sandbox import TemplateLimitError, compile_template, render_capped

# What a template is tried on when a model loads: a system text and a finished exchange before the question,
# so a template that fails on any ordinary conversation fails at load time, not at the first prompt.
PROBE_SYSTEM = "You are a helpful assistant."
PROBE_TURNS = ("Hello!", "Hello! How can I help?", "What is the capital of France?")

ROLES = ("system", "user", "assistant")

# What a user may ask for: "auto" renders with the model's own chat template when it has one (else the
# transcript); "transcript" uses the transcript even then, the way past a template that cannot render.
PromptFormatName = Literal["auto", "transcript"]
PROMPT_FORMAT_NAMES: tuple[PromptFormatName, ...] = ("auto", "transcript")


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


class PromptFormatError(ValueError):
    """A chat template that cannot render a conversation; the message says which problem, and where."""


def _template_problem(exc: Exception) -> str:
    """One line naming what went wrong in a template, with its line number when Jinja knows it."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"syntax error on line {exc.lineno}: {exc.message}"
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"not allowed in the sandbox: {exc}"
    if isinstance(exc, TemplateLimitError):
        return str(exc)
    if isinstance(exc, jinja2.TemplateError):
        # raise_exception(...) from the template itself lands here with the template's own words.
        return f"the template refused: {exc.message or type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class ChatTemplateFormat:
    """A model's own Jinja chat template, rendered as transformers does, in a sandbox with limits.

    ``fold_system``: the template refuses a system turn (Gemma's and Mistral's do), so the system text
    is put at the top of the first user turn instead, as transformers users do by hand.

    ``tokenizer_adds_bos``: whether the model's tokenizer puts BOS in front of a text itself (GGUF
    ``tokenizer.ggml.add_bos_token``; llama.cpp's ``tokenize(add_bos=True)`` and the HF tokenizer both obey
    it). When it does, a BOS the template writes is cut from the rendered text, so the prompt has BOS once, as
    llama.cpp's own chat code does; when it does not, the template's BOS text stays and is parsed as the BOS
    token. Never cut otherwise: SmolLM2's ``bos_token`` is ``<|im_start|>``, the opening of every ChatML turn.
    """

    template: str
    bos_token: str = ""
    eos_token: str = ""
    stop: tuple[str, ...] = ()
    name: str = "chat_template"
    fold_system: bool = False
    tokenizer_adds_bos: bool = True

    @cached_property
    def _compiled(self) -> jinja2.Template:
        try:
            return compile_template(self.template)
        except jinja2.TemplateSyntaxError as exc:
            raise PromptFormatError(f"chat template: {_template_problem(exc)}") from None

    def check(self) -> None:
        """Compile the template now (a syntax error raises PromptFormatError)."""
        self._compiled  # noqa: B018 - compiling is the check

    def render(self, system: str, turns: Sequence[ChatTurn]) -> str:
        _check_turns(turns)
        turns = [t for t in turns if t.role != "system"]
        messages = []
        system = system.strip()
        if system and self.fold_system:
            first, *rest = turns
            turns = [ChatTurn(first.role, f"{system}\n\n{first.content.strip()}"), *rest]
        elif system:
            messages.append({"role": "system", "content": system})
        messages += [{"role": t.role, "content": t.content.strip()} for t in turns]
        try:
            text = render_capped(
                self._compiled,
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except PromptFormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure inside a template is the template's problem
            raise PromptFormatError(f"chat template: {_template_problem(exc)}") from None
        # A tokenizer that adds BOS itself, given a template that writes it too, would give the model two.
        if self.tokenizer_adds_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]
        return text

    def as_completion(self, reply: str) -> str:
        return reply.strip()


def tokenizer_adds_bos(metadata: Mapping[str, object]) -> bool:
    """Whether a GGUF's tokenizer puts BOS in front of a text: ``tokenizer.ggml.add_bos_token`` when the file
    says, else the usual default for its tokenizer type (SentencePiece adds it, BPE does not). The engine asks
    llama.cpp itself instead (``llama_vocab_get_add_bos``), which also knows its per-model exceptions."""
    said = metadata.get("tokenizer.ggml.add_bos_token")
    if isinstance(said, bool):
        return said
    return metadata.get("tokenizer.ggml.model") in ("llama", "t5", "bert")


def format_for_metadata(
    metadata: Mapping[str, object],
    token_texts: Mapping[str, str] | None = None,
    adds_bos: bool | None = None,
    end_of_turn: Sequence[str] = (),
) -> PromptFormat:
    """Choose the format for a model from its GGUF metadata (``tokenizer.chat_template`` or not), and try
    it on a probe conversation (``probe_format``): a template that cannot work fails here, with
    PromptFormatError, rather than at the first prompt.

    ``token_texts`` may carry ``bos``/``eos`` token strings for templates that reference them; ``adds_bos``
    whether the tokenizer adds BOS itself (default: read from the metadata, ``tokenizer_adds_bos``);
    ``end_of_turn`` the text of every token that ends a reply (llama.cpp's end-of-generation tokens), all stop
    strings beside the EOS.
    """
    template = metadata.get("tokenizer.chat_template")
    if template:
        if not isinstance(template, str):
            raise PromptFormatError(f"chat template: tokenizer.chat_template is a {type(template).__name__}, "
                                    "not text")
        tokens = token_texts or {}
        eos = tokens.get("eos", "")
        return probe_format(ChatTemplateFormat(
            template=template,
            bos_token=tokens.get("bos", ""),
            eos_token=eos,
            stop=tuple(dict.fromkeys(s for s in (eos, *end_of_turn) if s)),
            tokenizer_adds_bos=tokenizer_adds_bos(metadata) if adds_bos is None else adds_bos,
        ))
    return TranscriptFormat()


def probe_format(fmt: PromptFormat) -> PromptFormat:
    """Render a short conversation with ``fmt``; return the format to use, or raise PromptFormatError.

    A chat template that refuses the system turn but renders the rest gets ``fold_system`` (the system
    text goes into the first user turn), so the studio's system prompt still reaches the model.
    """
    turns = [ChatTurn(role, text) for role, text in zip(("user", "assistant", "user"), PROBE_TURNS, strict=True)]
    if not isinstance(fmt, ChatTemplateFormat):
        fmt.render(PROBE_SYSTEM, turns)
        return fmt
    fmt.check()
    try:
        fmt.render(PROBE_SYSTEM, turns)
        return fmt
    except PromptFormatError as with_system:
        folded = replace(fmt, fold_system=True)
        try:
            folded.render(PROBE_SYSTEM, turns)
        except PromptFormatError:
            raise with_system from None
        return folded
