"""The prompt format a training model is chatted with, for prompts the trainer renders itself (the exercise's).

Judged pairs carry the prompt the chat engine rendered; an exercise's labelled items carry only a question, so
the trainer renders them, and must render them as the chat engine would for that model: with the model's own
chat template when it has one (SmolLM2's ChatML), else the transcript format (Gemma 3 270M base). The template
and the special-token texts come from the tokenizer the run trains with, which transformers reads from the
GGUF's own ``tokenizer.chat_template`` and ``tokenizer.ggml.*`` keys (the converted copy keeps them), and go
through ``format_for_metadata``, the one choice the chat engine makes too.
"""

from __future__ import annotations

from pathlib import Path

from trainers.pair_selection import PairSelectionError
from trainers.prompt_format import PromptFormat, PromptFormatError, TranscriptFormat, format_for_metadata


def prompt_format_for_model(model: Path | str | None) -> PromptFormat:
    """The format the chat engine renders ``model``'s prompts in (a .gguf or an HF model directory); the
    transcript format when there is no model or it has no chat template. Raises ``PairSelectionError`` naming
    the model when its template cannot render a conversation."""
    if not model:
        return TranscriptFormat()
    from trainers.model_source import load_tokenizer_for

    tokenizer = load_tokenizer_for(model)  # memoised: the run's planning loads the same one
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        return TranscriptFormat()
    # Whether the tokenizer puts BOS in front of a text itself decides whether a template's own BOS is cut.
    bos_id = tokenizer.bos_token_id
    adds_bos = bos_id is not None and tokenizer("a")["input_ids"][:1] == [bos_id]
    try:
        return format_for_metadata({"tokenizer.chat_template": template},
                                   {"bos": tokenizer.bos_token or "", "eos": tokenizer.eos_token or ""},
                                   adds_bos=adds_bos)
    except PromptFormatError as exc:
        raise PairSelectionError(f"the chat template of {Path(model).name} cannot render the exercise's "
                                 f"prompts: {exc}") from exc
