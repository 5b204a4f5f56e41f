"""A compact row of attribute ratings (0–4 each) for one candidate, set with the keyboard.

Tab / shift+tab (or ◀ ▶) move between attributes, up / down change the value, a digit 0–4 sets it, enter
saves the values set (an attribute left at "–" is not rated), escape closes without saving. The row posts
``Saved`` or ``Cancelled``; storing is the screen's business. Reused wherever a reply is rated (the chat
screen, the labelling queue).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Static

RATING_MIN, RATING_MAX = 0, 4


class RatingRow(Static, can_focus=True):
    """The ratings of candidate ``slot`` on ``attributes``; nothing is set until the user sets it."""

    DEFAULT_CSS = """
    RatingRow {
        dock: bottom;
        height: auto;
        padding: 0 1;
        background: $boost;
    }
    RatingRow:focus {
        background: $accent 30%;
    }
    """

    BINDINGS = [
        Binding("tab", "move(1)", "Next attribute", priority=True),
        Binding("shift+tab", "move(-1)", "Previous attribute", priority=True),
        Binding("right", "move(1)", "▶", show=False),
        Binding("left", "move(-1)", "◀", show=False),
        Binding("up", "step(1)", "+1"),
        Binding("down", "step(-1)", "-1"),
        *(Binding(str(value), f"set({value})", str(value), show=False) for value in range(RATING_MIN, RATING_MAX + 1)),
        Binding("enter", "save", "Save ratings"),
        Binding("escape", "cancel", "Close"),
    ]

    class Saved(Message):
        def __init__(self, row: RatingRow, slot: int, ratings: dict[str, int]) -> None:
            super().__init__()
            self.row = row
            self.slot = slot
            self.ratings = ratings

    class Cancelled(Message):
        def __init__(self, row: RatingRow, slot: int) -> None:
            super().__init__()
            self.row = row
            self.slot = slot

    def __init__(self, slot: int, attributes: Sequence[str], **kwargs) -> None:
        super().__init__(**kwargs)
        if not attributes:
            raise ValueError("a rating row needs at least one attribute")
        self.slot = slot
        self.attributes = tuple(attributes)
        self.values: dict[str, int | None] = dict.fromkeys(self.attributes)
        self.cursor = 0

    def on_mount(self) -> None:
        self._render_row()

    @property
    def current(self) -> str:
        return self.attributes[self.cursor]

    def chosen(self) -> dict[str, int]:
        """The attributes set so far and their values (the ones left at "–" are not rated)."""
        return {name: value for name, value in self.values.items() if value is not None}

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # tab is the row's only while it has focus (its binding is a priority one, to beat focus cycling)
        if action == "move" and self.app.focused is not self:
            return False
        return True

    def action_move(self, step: int) -> None:
        self.cursor = (self.cursor + step) % len(self.attributes)
        self._render_row()

    def action_step(self, step: int) -> None:
        value = self.values[self.current]
        start = (RATING_MIN if step > 0 else RATING_MAX) if value is None else value + step
        self.values[self.current] = max(RATING_MIN, min(RATING_MAX, start))
        self._render_row()

    def action_set(self, value: int) -> None:
        self.values[self.current] = value
        # the next attribute is the likely next one to set: one digit per attribute, left to right
        if self.cursor < len(self.attributes) - 1:
            self.cursor += 1
        self._render_row()

    def action_save(self) -> None:
        self.post_message(self.Saved(self, self.slot, self.chosen()))

    def action_cancel(self) -> None:
        self.post_message(self.Cancelled(self, self.slot))

    def describe(self) -> str:
        """The row as text: ``quality 3 · [humor –] · toxicity 0`` (the attribute being set in brackets)."""
        return " · ".join(self._cell(i, name) for i, name in enumerate(self.attributes))

    def _cell(self, index: int, name: str) -> str:
        value = self.values[name]
        cell = f"{name} {'–' if value is None else value}"
        return f"[{cell}]" if index == self.cursor else cell

    def _render_row(self) -> None:
        text = Text("rate 0–4: ", style="italic")
        for i, name in enumerate(self.attributes):
            if i:
                text.append(" · ")
            value = self.values[name]
            text.append(f"{name} {'–' if value is None else value}", style="reverse bold" if i == self.cursor else "")
        text.append("  ↑↓ 0–4 · tab · enter", style="dim")  # the footer names every key in full
        self.update(text)
