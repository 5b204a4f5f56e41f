"""SteerLM's sliders: a compact row of attribute values (0–4) that conditions every generation in the chat.

Shown while a SteerLM run's adapter is active, with the attributes that run was trained on and no other.
Up / down (or tab / shift+tab) pick the attribute, left / right change its value, a digit 0–4 sets it, enter or
escape hands the keyboard back to the prompt. Each change posts ``Changed`` with every value; the chat screen
puts them on the judging session, so the next round's prompt carries them (``trainers/steer_format.py``) and
its stored candidates record them. Reference: ``rating_row.py`` (the same keys, for rating a reply).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Static

from trainers.steer_format import ATTRIBUTE_MAX, ATTRIBUTE_MIN

# Where a slider starts: the middle of the scale, so either direction is one key away.
START_VALUE = 2


class SteerRow(Static, can_focus=True):
    """Attribute values for run ``run_id`` (``attributes``: those it was trained on)."""

    DEFAULT_CSS = """
    SteerRow {
        height: auto;
        padding: 0 1;
        background: $boost;
    }
    SteerRow:focus {
        background: $accent 30%;
    }
    """

    BINDINGS = [
        Binding("tab", "move(1)", "Next attribute", priority=True),
        Binding("shift+tab", "move(-1)", "Previous attribute", priority=True),
        Binding("down", "move(1)", "Next attribute", show=False),
        Binding("up", "move(-1)", "Previous attribute", show=False),
        Binding("right", "step(1)", "+1"),
        Binding("left", "step(-1)", "-1"),
        *(Binding(str(v), f"set({v})", str(v), show=False) for v in range(ATTRIBUTE_MIN, ATTRIBUTE_MAX + 1)),
        Binding("enter", "done(True)", "Back to the prompt"),
        Binding("escape", "done(False)", "Back to the prompt", show=False),
    ]

    class Changed(Message):
        def __init__(self, row: SteerRow, values: dict[str, int]) -> None:
            super().__init__()
            self.row = row
            self.values = values

    class Done(Message):
        def __init__(self, row: SteerRow, accepted: bool = True) -> None:
            super().__init__()
            self.row = row
            self.accepted = accepted  # enter (True) or escape (False): the compare screen answers on enter only

    def __init__(self, run_id: int, attributes: Sequence[str], values: Mapping[str, int] | None = None,
                 label: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if not attributes:
            raise ValueError("a steering row needs at least one attribute")
        self.run_id = run_id
        self.label = label or f"steer (run {run_id})"  # the compare screen's two rows: "left", "right"
        self.attributes = tuple(attributes)
        given = values or {}
        self.values: dict[str, int] = {name: int(given.get(name, START_VALUE)) for name in self.attributes}
        self.cursor = 0

    def on_mount(self) -> None:
        self._render_row()

    @property
    def current(self) -> str:
        return self.attributes[self.cursor]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # tab is the row's only while it has focus (a priority binding, to beat focus cycling)
        if action == "move" and self.app.focused is not self:
            return False
        return True

    def action_move(self, step: int) -> None:
        self.cursor = (self.cursor + step) % len(self.attributes)
        self._render_row()

    def action_step(self, step: int) -> None:
        self._set(max(ATTRIBUTE_MIN, min(ATTRIBUTE_MAX, self.values[self.current] + step)))

    def action_set(self, value: int) -> None:
        self._set(value)

    def action_done(self, accepted: bool = True) -> None:
        self.post_message(self.Done(self, accepted))

    def _set(self, value: int) -> None:
        if self.values[self.current] != value:
            self.values[self.current] = value
            self.post_message(self.Changed(self, dict(self.values)))
        self._render_row()

    def describe(self) -> str:
        """The row as text: ``[quality 4] · humor 0`` (the attribute being set in brackets)."""
        return " · ".join(f"[{name} {self.values[name]}]" if i == self.cursor else f"{name} {self.values[name]}"
                          for i, name in enumerate(self.attributes))

    def _render_row(self) -> None:
        text = Text(f"{self.label}: ", style="italic")
        for i, name in enumerate(self.attributes):
            if i:
                text.append(" · ")
            text.append(f"{name} {self.values[name]}", style="reverse bold" if i == self.cursor else "")
        text.append("  ◀▶ value · ↑↓ attribute · enter", style="dim")
        self.update(text)
