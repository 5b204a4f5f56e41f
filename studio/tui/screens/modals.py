"""Modal dialogs: edit a reply, edit the system prompt, show an error."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static, TextArea


class TextEditScreen(ModalScreen[str | None]):
    """Edit a block of text; ctrl+s saves (returns the text), escape cancels (returns None).

    ctrl+u clears the whole text and ctrl+a selects all of it (typing then replaces it): rewriting a system
    prompt from scratch is common. Both take priority over the TextArea's own line-wise keys.
    """

    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("ctrl+u", "clear", "Clear", priority=True),
        Binding("ctrl+a", "select_all", "Select all", priority=True),
        Binding("escape", "cancel", "Cancel"),
    ]

    def __init__(self, title: str, text: str, hint: str = "") -> None:
        super().__init__()
        self._title = title
        self._text = text
        self._hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self._title, classes="dialog-title", markup=False)
            if self._hint:
                yield Static(self._hint, classes="dialog-hint", markup=False)
            yield TextArea(self._text, id="edit-area", soft_wrap=True)
            yield Static("ctrl+s save · ctrl+u clear · ctrl+a select all · escape cancel", classes="dialog-hint",
                         markup=False)

    def on_mount(self) -> None:
        area = self.query_one(TextArea)
        area.focus()
        area.move_cursor(area.document.end)

    def action_save(self) -> None:
        text = self.query_one(TextArea).text
        if not text.strip():
            self.notify("empty text: nothing saved (escape to cancel)", severity="warning")
            return
        self.dismiss(text)

    def action_clear(self) -> None:
        self.query_one(TextArea).clear()

    def action_select_all(self) -> None:
        self.query_one(TextArea).select_all()

    def action_cancel(self) -> None:
        self.dismiss(None)


class NameScreen(ModalScreen[str | None]):
    """Ask for a short name; enter returns it (stripped), escape returns None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, placeholder: str = "") -> None:
        super().__init__()
        self._title = title
        self._placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self._title, classes="dialog-title", markup=False)
            yield Input(placeholder=self._placeholder, id="name-input")
            yield Static("enter save · escape cancel", classes="dialog-hint", markup=False)

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            self.notify("Type a name first (escape to cancel).", severity="warning")
            return
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class ErrorScreen(ModalScreen[None]):
    """A problem the user must read: what went wrong and what to do. q quits, escape closes."""

    BINDINGS = [Binding("escape", "close", "Close"), Binding("q", "quit_app", "Quit")]

    def __init__(self, title: str, message: str, fatal: bool = False) -> None:
        super().__init__()
        self._title = title
        self._message = message
        self._fatal = fatal

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog error-dialog"):
            yield Label(self._title, classes="dialog-title", markup=False)
            yield Static(self._message, id="error-message", markup=False)
            yield Static("q quit" if self._fatal else "escape close · q quit", classes="dialog-hint", markup=False)

    def action_close(self) -> None:
        if not self._fatal:
            self.dismiss(None)

    def action_quit_app(self) -> None:
        self.app.exit(return_code=1 if self._fatal else 0)
