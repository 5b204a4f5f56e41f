"""The reward-model picker (command palette → "Use reward model…"): none, or one of the finished reward runs.

The screen only chooses; the chat opens the chosen run's scorer in a worker (``ChatScreen.use_reward_run``).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from store.records import RunRecord


@dataclass(frozen=True)
class RewardRunOption:
    """One row of the picker: a reward run (``run_id``), or no reward model (``run_id`` None)."""

    run_id: int | None
    label: str
    note: str
    current: bool  # scoring the chat's candidates now


def reward_run_options(runs: list[RunRecord], current: int | None) -> list[RewardRunOption]:
    """"No reward model" first, then each finished reward run, newest first, with what it was trained on and its
    held-out accuracy when the run recorded one."""
    options = [RewardRunOption(None, "no reward model", "candidates are not scored", current is None)]
    for run in runs:
        heldout = (run.summary or {}).get("heldout")
        after = heldout.get("after") if isinstance(heldout, dict) else None
        accuracy = after.get("accuracy") if isinstance(after, dict) else None  # trainers/methods/reward.py's summary
        details = [f"trained {run.created_at[:16].replace('T', ' ')}", f"{len(run.pair_ids)} pairs"]
        if isinstance(accuracy, int | float):
            details.append(f"held-out accuracy {accuracy:.2f}")
        options.append(RewardRunOption(run.id, f"run {run.id} · {run.model_id}", " · ".join(details),
                                       run.id == current))
    return options


def _row(option: RewardRunOption) -> Text:
    # Plain Text: a model id is a file name, never markup.
    row = Text(option.label, style="bold")
    row.append("  (in use)" if option.current else "")
    row.append(f"\n  {option.note}", style="dim")
    return row


class RewardPickerScreen(ModalScreen[RewardRunOption | None]):
    """Pick a reward model; enter returns the row, escape returns None (nothing changes)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, options: list[RewardRunOption]) -> None:
        super().__init__()
        self.options = options

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Use reward model", classes="dialog-title", markup=False)
            yield Static("Each candidate shows the reward model's score as it finishes and its pick is marked "
                         "suggested; you still decide.", classes="dialog-hint", markup=False)
            yield OptionList(*(Option(_row(o), id=f"reward-{i}") for i, o in enumerate(self.options)),
                             id="reward-list", markup=False)
            yield Static("enter choose · escape cancel", classes="dialog-hint", markup=False)

    def on_mount(self) -> None:
        listing = self.query_one(OptionList)
        listing.highlighted = next((i for i, o in enumerate(self.options) if o.current), 0)
        listing.focus()

    @on(OptionList.OptionSelected, "#reward-list")
    def chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.options[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)
