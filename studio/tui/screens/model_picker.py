"""The model picker (command palette → "Switch model…"): the bundled models, and the served one if it is not.

The screen only chooses; the app loads the chosen model in a worker and swaps the engine (``tui/app.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from studio.inference.engine import ModelIdentity
from studio.inference.model_files import BUNDLED_MODELS, bundled_name_of


@dataclass(frozen=True)
class ModelOption:
    """One row of the picker: a bundled model by name, or a model file the user brought (``name`` None)."""

    label: str
    name: str | None
    path: Path | None
    current: bool  # the model serving the chat now
    installed: bool
    note: str  # the install hint of a missing bundled model; else what it is


def model_options(serving: ModelIdentity) -> list[ModelOption]:
    """The bundled models, the serving one marked (recognised by its sha256, wherever its file lives), and
    the serving model itself first when it is not a bundled one."""
    current_name = bundled_name_of(serving.sha256)
    options = []
    if current_name is None:
        options.append(ModelOption(serving.model_id, None, serving.path, True, True, str(serving.path)))
    for model in BUNDLED_MODELS.values():
        files = model.files()
        options.append(ModelOption(
            model.name, model.name, None, model.name == current_name, files.installed,
            model.title if files.installed else f"not installed: {model.install_hint}",
        ))
    return options


def _row(option: ModelOption) -> Text:
    # Plain Text: a model file's name is user text and must never be read as markup.
    row = Text(option.label, style="bold")
    row.append("  (serving now)" if option.current else "")
    row.append(f"\n  {option.note}", style="dim")
    return row


class ModelPickerScreen(ModalScreen[ModelOption | None]):
    """Pick a model; enter returns it, escape returns None. Models that are not installed cannot be picked."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, options: list[ModelOption]) -> None:
        super().__init__()
        self.options = options

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Switch model", classes="dialog-title", markup=False)
            yield Static("The chat restarts with the chosen model in a new session; an active adapter is "
                         "dropped (it was trained for this model).", classes="dialog-hint", markup=False)
            yield OptionList(*(Option(_row(o), id=f"model-{i}", disabled=not o.installed)
                               for i, o in enumerate(self.options)), id="model-list", markup=False)
            yield Static("enter switch · escape cancel", classes="dialog-hint", markup=False)

    def on_mount(self) -> None:
        listing = self.query_one(OptionList)
        listing.highlighted = next((i for i, o in enumerate(self.options) if o.current), 0)
        listing.focus()

    @on(OptionList.OptionSelected, "#model-list")
    def chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.options[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)
