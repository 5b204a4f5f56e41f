"""The Preference Studio Textual app: one store, one engine, screens on top."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from store.studio_store import Store
from studio.assets import assets_dir
from studio.engine import ChatEngine
from studio.prompt_bank import PromptBank, bundled_banks
from studio.settings import StudioSettings
from studio.tui.screens.chat import ChatScreen


class PreferenceStudioApp(App[None]):
    TITLE = "Preference Studio"
    CSS_PATH = str(assets_dir() / "styles" / "studio.tcss")
    BINDINGS = [
        Binding("f2", "edit_system_prompt", "System prompt"),
        Binding("f3", "next_bank_prompt", "Bank prompt"),
        Binding("ctrl+n", "new_session", "New session"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(
        self,
        settings: StudioSettings,
        store: Store,
        stale_runs: Sequence[int] = (),
        engine: ChatEngine | None = None,
    ) -> None:
        super().__init__()
        if settings.model is None:
            raise ValueError("PreferenceStudioApp needs a resolved model path (settings.model)")
        self.settings = settings
        self.store = store
        self.engine: ChatEngine | None = engine
        self.active_adapter: str | None = None
        self.stale_runs = list(stale_runs)
        try:
            self.prompt_banks: list[PromptBank] = bundled_banks()
        except ValueError as exc:
            self.prompt_banks = []
            self._bank_error = str(exc)
        else:
            self._bank_error = None

    def on_mount(self) -> None:
        self.update_header()
        self.push_screen(ChatScreen())
        if self.stale_runs:
            self.notify(f"Marked {len(self.stale_runs)} training run(s) failed: their process was gone.",
                        severity="warning")
        if self._bank_error:
            self.notify(f"Prompt bank not loaded: {self._bank_error}", severity="warning")

    def update_header(self) -> None:
        model = self.engine.identity.model_id if self.engine else self.settings.model.name
        self.sub_title = f"model: {model} · adapter: {self.active_adapter or 'none'}"

    @property
    def chat(self) -> ChatScreen:
        return next(s for s in self.screen_stack if isinstance(s, ChatScreen))

    # --- actions (keys and command palette) ---

    def action_edit_system_prompt(self) -> None:
        self.chat.edit_system_prompt()

    def action_next_bank_prompt(self) -> None:
        self.chat.next_bank_prompt()

    def action_new_session(self) -> None:
        self.chat.new_session()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Edit system prompt", "The persona / values text rendered before every turn",
                            self.action_edit_system_prompt)
        yield SystemCommand("Next prompt from the bank", "Fill the input with the next bundled prompt",
                            self.action_next_bank_prompt)
        for bank in self.prompt_banks:
            yield SystemCommand(f"Use prompt bank: {bank.name}", f"{len(bank.prompts)} prompts from {bank.path.name}",
                                lambda bank=bank: self.chat.use_bank(bank))
        yield SystemCommand("New session", "Start a fresh conversation (pairs so far stay stored)",
                            self.action_new_session)
        yield SystemCommand("Regenerate candidates", "New seeds for the prompt being judged",
                            lambda: self.chat.handle_judge_action(self.chat.query_one("#judge-bar").Action("regenerate")))
