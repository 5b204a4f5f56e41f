"""One candidate reply, streaming in, with its seed and timing once finished."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.widgets import Static


class CandidatePanel(VerticalScroll):
    """Shows candidate ``A``, ``B``, … The highlighted panel is the one ``e`` edits."""

    DEFAULT_CLASSES = "candidate"
    highlighted: reactive[bool] = reactive(False)

    def __init__(self, slot: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.slot = slot
        self.letter = chr(ord("A") + slot)
        self.text = ""
        self.border_title = f"{self.letter}"

    def compose(self) -> ComposeResult:
        yield Static("", id=f"candidate-text-{self.slot}", classes="candidate-text", markup=False)

    def reset(self, waiting: str = "…") -> None:
        self.text = ""
        self.border_subtitle = ""
        self.query_one(Static).update(waiting)

    def show_text(self, text: str) -> None:
        self.text = text
        self.query_one(Static).update(text.strip() or "…")
        self.scroll_end(animate=False)

    def finish(self, text: str, detail: str) -> None:
        self.show_text(text)
        if not text.strip():
            self.query_one(Static).update("(empty reply)")
        self.border_subtitle = detail

    def watch_highlighted(self, value: bool) -> None:
        self.set_class(value, "highlighted")
