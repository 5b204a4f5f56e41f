"""The judging panel: focused once the candidates are in; its keys record the verdict."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Static


class JudgeBar(Static, can_focus=True):
    """Key presses here become ``JudgeBar.Action`` messages for the chat screen to act on."""

    BINDINGS = [
        Binding("1", "judge('a')", "A better"),
        Binding("2", "judge('b')", "B better"),
        Binding("t", "judge('tie')", "Tie"),
        Binding("x", "judge('both_bad')", "Both bad"),
        Binding("r", "judge('regenerate')", "Regenerate"),
        Binding("e", "judge('edit')", "Edit"),
        Binding("left", "judge('highlight_prev')", "◀", show=False),
        Binding("right", "judge('highlight_next')", "▶", show=False),
        Binding("i", "judge('input')", "Input"),
    ]

    def __init__(self, content: str = "", **kwargs) -> None:
        # The bar quotes the user's prompt ("generating for: …"): never parse it as markup.
        kwargs.setdefault("markup", False)
        super().__init__(content, **kwargs)

    class Action(Message):
        def __init__(self, action: str) -> None:
            super().__init__()
            self.action = action

    def action_judge(self, action: str) -> None:
        self.post_message(self.Action(action))
