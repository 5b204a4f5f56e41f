"""One turn of the conversation pane, labelled with who said it; the question being judged shows as pending."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

PENDING_NOTE = "pending: judge the replies below"


class ConversationTurn(Static):
    """``speaker`` heads the turn ("you", "assistant · model"); the text is shown literally, never as markup."""

    def __init__(self, role: str, text: str, speaker: str, pending: bool = False) -> None:
        classes = f"turn {role}-turn" + (" pending-turn" if pending else "")
        super().__init__(classes=classes, markup=False)
        self.role = role
        self.text = text
        self.speaker = speaker
        self.pending = pending
        self.update(self._content())

    def _content(self) -> Text:
        heading = f"{self.speaker} · {PENDING_NOTE}" if self.pending else self.speaker
        # A rich Text is never parsed: "[/]" or "[bold]" typed by the user or written by the model stays as is.
        return Text.assemble((heading, "italic" if self.pending else "underline"), "\n", self.text)
