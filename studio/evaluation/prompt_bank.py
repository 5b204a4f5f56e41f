"""Prompt banks: text files of prompts under ``assets/prompts/`` (or any folder), fed one after another.

Format: one prompt per block; blocks are separated by a blank line, so a prompt may span lines.
Lines starting with ``#`` are comments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studio.assets import assets_dir
from trainers.rl_prompts import parse_prompt_bank as parse_bank  # one reader: RLOO's bank:NAME uses it too


@dataclass(frozen=True)
class PromptBank:
    name: str
    path: Path
    prompts: tuple[str, ...]


def load_bank(path: Path) -> PromptBank:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    prompts = parse_bank(text)
    if not prompts:
        raise ValueError(f"{path}: holds no prompts")
    return PromptBank(name=path.stem.replace("_", " "), path=path, prompts=prompts)


def bundled_banks(folder: Path | None = None) -> list[PromptBank]:
    folder = folder or assets_dir() / "prompts"
    return [load_bank(p) for p in sorted(folder.glob("*.txt"))]


class PromptFeed:
    """Walks through a bank one prompt at a time, wrapping around at the end."""

    def __init__(self, bank: PromptBank) -> None:
        self.bank = bank
        self.position = 0

    def next(self) -> str:
        prompt = self.bank.prompts[self.position % len(self.bank.prompts)]
        self.position += 1
        return prompt

    @property
    def label(self) -> str:
        shown = (self.position - 1) % len(self.bank.prompts) + 1 if self.position else 0
        return f"{self.bank.name} {shown}/{len(self.bank.prompts)}"
