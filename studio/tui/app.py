"""The Preference Studio Textual app: one store, one engine, screens on top."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.markup import escape
from textual.notifications import SeverityLevel
from textual.screen import Screen

from store.studio_store import Store
from studio.assets import assets_dir
from studio.evaluation.prompt_bank import PromptBank, bundled_banks
from studio.inference.engine import ChatEngine, EngineConfig, EngineError
from studio.inference.model_files import ModelFileError, bundled_model_path
from studio.settings import StudioSettings
from studio.tui.screens.chat import ChatScreen
from studio.tui.screens.model_picker import ModelOption, ModelPickerScreen, model_options


class PreferenceStudioApp(App[None]):
    TITLE = "Preference Studio"
    CSS_PATH = str(assets_dir() / "styles" / "studio.tcss")
    BINDINGS = [
        Binding("f2", "edit_system_prompt", "System prompt"),
        Binding("f3", "next_bank_prompt", "Bank prompt"),
        Binding("f4", "toggle_bank_mode", "Bank mode"),
        Binding("ctrl+n", "new_session", "New session"),
        Binding("f5", "train", "Train"),
        Binding("f6", "compare", "Compare"),
        Binding("f7", "cycle_adapter", "Adapter"),
        Binding("f8", "exercise", "Exercise"),
        Binding("f9", "queue", "Queue"),
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
        # What the studio told the user, newest last: toasts vanish after their timeout, this stays readable
        # (the tests read it instead of Textual's private notification list).
        self.notices: deque[str] = deque(maxlen=200)
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

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """Every notification is plain text, whoever sends it (screens pass ``markup=True`` by default):
        they quote prompts, model replies, dataset names, paths and error messages, and a ``[/]`` in any
        of them would raise MarkupError and end the app."""
        self.notices.append(message)
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    _quit_anyway = False  # a second ctrl+q while a judgement is still being saved

    async def action_quit(self) -> None:
        """Quit, unless a judgement is still waiting for a busy database: say so; a second ctrl+q quits."""
        chat = next((s for s in self.screen_stack if isinstance(s, ChatScreen)), None)
        if chat is not None and chat.state == "saving" and not self._quit_anyway:
            self._quit_anyway = True
            self.notify("A judgement is still waiting for the busy database: quitting now loses it. "
                        "Press ctrl+q again to quit anyway.", severity="warning", timeout=10)
            return
        self.exit()

    def update_header(self) -> None:
        model = self.engine.identity.model_id if self.engine else self.settings.model.name
        self.sub_title = f"model: {model} · adapter: {self.active_adapter or 'none'}"

    @property
    def chat(self) -> ChatScreen:
        return next(s for s in self.screen_stack if isinstance(s, ChatScreen))

    @property
    def current_session_id(self) -> int | None:
        """The session the chat is in: what "this session" means on the train and compare screens (they ask
        the app, not the chat screen)."""
        return self.chat.session_id

    @property
    def current_system_prompt(self) -> str:
        """The chat's system prompt, which the compare screen answers its prompts under."""
        return self.chat.system_prompt

    # --- actions (keys and command palette) ---

    def action_edit_system_prompt(self) -> None:
        self.chat.edit_system_prompt()

    def action_next_bank_prompt(self) -> None:
        self.chat.next_bank_prompt()

    def action_toggle_bank_mode(self) -> None:
        self.chat.toggle_bank_mode()

    def action_new_session(self) -> None:
        self.chat.new_session()

    def action_train(self) -> None:
        from studio.tui.screens.train import TrainScreen

        if not isinstance(self.screen, TrainScreen):
            self.push_screen(TrainScreen())

    def action_exercise(self) -> None:
        from studio.tui.screens.exercise import ExerciseScreen

        if not isinstance(self.screen, ExerciseScreen):
            self.push_screen(ExerciseScreen())

    def action_queue(self) -> None:
        from studio.tui.screens.queue import QueueScreen

        if not isinstance(self.screen, QueueScreen):
            self.push_screen(QueueScreen())

    def queue_bank(self, bank: PromptBank) -> None:
        from studio.labelling_queue import prompts_from_bank

        self.queue_prompts(lambda: prompts_from_bank(bank.path.stem), bank.name)

    def queue_dataset(self, name: str) -> None:
        from studio.labelling_queue import prompts_from_dataset

        self.queue_prompts(lambda: prompts_from_dataset(self.store, name), f"dataset {name}")

    def action_queue_file(self) -> None:
        """Ask for a prompts file (as ``--prompts`` reads it), queue it, open queue mode."""
        from studio.labelling_queue import prompts_from_file
        from studio.tui.screens.modals import NameScreen

        def chosen(path: str | None) -> None:
            if path:
                self.queue_prompts(lambda: prompts_from_file(Path(path).expanduser()), Path(path).name)

        self.push_screen(NameScreen("Queue prompts from a file", "prompts.txt (one per line), .jsonl or .json"),
                         chosen)

    def queue_prompts(self, load: Callable[[], list[tuple[str, str]]], what: str) -> None:
        """Queue prompts (N = the chat's candidates, its system prompt), then open queue mode; a file or bank
        that cannot be read is named with the problem and nothing is queued."""
        from studio.labelling_queue import QueueError, enqueue

        n = max(1, min(self.settings.candidates, 4))
        try:
            queue_id, counts = enqueue(self.store, load(), n, self.current_system_prompt, self.settings.model.name)
        except (QueueError, ValueError) as exc:
            self.notify(f"Not queued: {exc}", severity="error", timeout=10)
            return
        self.notify(f"Queued {counts.added} prompt(s) of {what} with {n} candidate(s) each in queue "
                    f"{queue_id}" + (f" ({counts.already_queued} already queued)." if counts.already_queued else "."))
        self.action_queue()

    def action_compare(self, run_id: int | None = None) -> None:
        from studio.evaluation.run_adapters import usable_runs
        from studio.tui.screens.compare import CompareScreen

        if self.engine is None:
            self.notify("The model is still loading.", severity="warning")
            return
        if self._engine_busy("compare"):
            return
        if run_id is None:
            runs = usable_runs(self.store)
            if not runs:
                self.notify("No finished training run to compare yet: train one first (F5).", severity="warning")
                return
            run_id = runs[0].id
        if isinstance(self.screen, CompareScreen):
            self.pop_screen()  # F6 on a comparison replaces it: escape must not lead into an older one
        self.push_screen(CompareScreen(run_id))

    def _engine_busy(self, what: str) -> bool:
        """While candidates are being written (or any job holds the engine), the model must not change
        under them: say so and refuse. True when refused."""
        chat = next((s for s in self.screen_stack if isinstance(s, ChatScreen)), None)
        owner = self.engine.owner if self.engine is not None else None
        if (chat is not None and chat.generating) or owner is not None:
            self.notify(f"Cannot {what} now: the model is {owner or 'generating candidates'}. Wait for it, or "
                        "press escape to stop it.", severity="warning", timeout=10)
            return True
        return False

    def return_to_chat(self) -> None:
        """Close every screen above the chat (compare opened from the train or exercise screen included)."""
        while not isinstance(self.screen, ChatScreen) and len(self.screen_stack) > 1:
            self.pop_screen()

    def action_cycle_adapter(self) -> None:
        """One key walks base → newest run → older runs → base; judgements record the active one."""
        from studio.evaluation.run_adapters import adapter_name, usable_runs

        if self.engine is None or self._engine_busy("switch the adapter"):
            return
        choices: list[str | None] = [None, *(adapter_name(r) for r in usable_runs(self.store))]
        if len(choices) == 1:
            self.notify("No finished training run yet: the base model is all there is (F5 trains).")
            return
        current = choices.index(self.active_adapter) if self.active_adapter in choices else 0
        self.switch_adapter(choices[(current + 1) % len(choices)])

    @work(thread=True, exclusive=True, group="adapter", exit_on_error=False)
    def switch_adapter(self, name: str | None) -> None:
        from studio.evaluation.run_adapters import gguf_adapter_for_run

        try:
            if name is not None:
                run = self.store.get_run(int(name.removeprefix("run-")))
                self.engine.load_adapter(name, gguf_adapter_for_run(run, self.engine.info, self.store.path))
            self.engine.activate_adapter(name)
        except (ValueError, RuntimeError, EngineError) as exc:  # EngineBusy: a job holds the engine
            self.call_from_thread(self.notify, f"Adapter not switched: {exc}", severity="error", timeout=10)
            return
        self.call_from_thread(self._adapter_switched, name)

    def _adapter_switched(self, name: str | None) -> None:
        self.active_adapter = name
        self.update_header()
        self.chat.adapter_switched(name)  # a SteerLM run's sliders come and go with its adapter
        self.notify(f"Now chatting with {'the base model' if name is None else name}.")

    def restore_adapter(self) -> None:
        """After a comparison (which leaves the base active), bring back the adapter the chat uses."""
        if self.engine is not None and self.engine.active_adapter != self.active_adapter:
            self.switch_adapter(self.active_adapter)

    # --- switching the model (the command palette's "Switch model…") ---

    def action_switch_model(self) -> None:
        """Pick another model; refused while candidates are generating, a job holds the engine, or a
        judgement is still being saved (the switch starts a new session)."""
        if self.engine is None:
            self.notify("The model is still loading.", severity="warning")
            return
        if not isinstance(self.screen, ChatScreen):
            self.notify("Switch the model from the chat screen (escape back to it first).", severity="warning")
            return
        if self._engine_busy("switch the model") or self._saving_refuses("switch the model"):
            return
        self.push_screen(ModelPickerScreen(model_options(self.engine.identity)), self.switch_to)

    def _saving_refuses(self, what: str) -> bool:
        if self.chat.state != "saving":
            return False
        self.notify(f"Cannot {what} now: a judgement is still being saved.", severity="warning", timeout=10)
        return True

    def switch_to(self, option: ModelOption | None) -> None:
        """The picker's answer: start loading the chosen model (None: the picker was cancelled)."""
        if option is None:
            return
        if option.current:
            self.notify(f"Already chatting with {option.label}.")
            return
        if self.engine is None or self._engine_busy("switch the model") or self._saving_refuses("switch the model"):
            return
        before = self.chat.model_switch_starting(option.label)
        self.switch_model(option, before)

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def switch_model(self, option: ModelOption, state_before: str) -> None:
        """Load the chosen model beside the serving one (a failure keeps the old one serving), swap, then
        free the old one once nothing uses it (its adapters go with it)."""
        old = self.engine
        try:
            path = option.path if option.name is None else bundled_model_path(option.name)
            assert path is not None
            engine = ChatEngine(EngineConfig(model_path=path, n_ctx=self.settings.n_ctx,
                                             n_threads=self.settings.threads,
                                             prompt_format=self.settings.prompt_format))
        except (ModelFileError, EngineError) as exc:
            self.call_from_thread(self._model_not_switched, option.label, str(exc), state_before)
            return
        self.call_from_thread(self._model_switched, engine, option.name, path)
        if old is not None:
            with old.exclusive():  # a call still running on the old context finishes first
                pass
            old.close()

    def _model_not_switched(self, label: str, error: str, state_before: str) -> None:
        self.chat.model_switch_failed(state_before)
        self.notify(f"Model not switched to {label}: {error}", severity="error", timeout=15)

    def _model_switched(self, engine: ChatEngine, name: str | None, path: Path) -> None:
        dropped = self.active_adapter
        self.engine = engine
        self.active_adapter = None
        # Training (F5, F8) trains on the served model: it follows the switch.
        self.settings = replace(self.settings, model=path, model_name=name)
        self.chat.model_switched(engine)
        self.update_header()
        self.notify(f"Now chatting with {engine.identity.model_id}, in a new session.")
        if dropped is not None:
            self.notify(f"Adapter {dropped} dropped: it was trained for the previous model and cannot apply to "
                        f"{engine.identity.model_id}.", severity="warning", timeout=10)

    def _persona_commands(self) -> Iterable[SystemCommand]:
        from studio.personas import PersonaError, load_personas, personas_path

        yield SystemCommand("Save system prompt as persona", "Keep this session's system prompt under a name",
                            lambda: self.chat.save_as_persona())
        try:
            personas = load_personas(personas_path(self.store.path))
        except PersonaError as exc:
            problem = str(exc)  # the except variable is gone once the block ends; the callback runs later
            yield SystemCommand("Personas file unreadable", "Show what is wrong with it",
                                lambda: self.notify(problem, severity="error", timeout=15))
            return
        for name, text in personas.items():
            yield SystemCommand(f"Use persona: {escape(name)}", escape(" ".join(text.split())[:80]),
                                lambda name=name, text=text: self.chat.use_persona(name, text))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Edit system prompt", "The persona / values text rendered before every turn",
                            self.action_edit_system_prompt)
        yield from self._persona_commands()
        yield SystemCommand("Next prompt from the bank", "Fill the input with the next bundled prompt",
                            self.action_next_bank_prompt)
        yield SystemCommand("Bank mode on/off", "After each judgement, fill the input with the next bank prompt (F4)",
                            self.action_toggle_bank_mode)
        for bank in self.prompt_banks:
            # The palette parses titles as markup; a bank's name is a file name, so it is escaped.
            yield SystemCommand(f"Use prompt bank: {escape(bank.name)}",
                                f"{len(bank.prompts)} prompts from {escape(bank.path.name)}",
                                lambda bank=bank: self.chat.use_bank(bank))
        yield SystemCommand("New session", "Start a fresh conversation (pairs so far stay stored)",
                            self.action_new_session)
        yield SystemCommand("Train a LoRA adapter with DPO", "Open the train screen (F5)", self.action_train)
        yield SystemCommand("Compare the newest run with the base", "Side by side, blind (F6)", self.action_compare)
        yield SystemCommand("Labelling queue", "Judge queued prompts one key each while the rest generates (F9)",
                            self.action_queue)
        for bank in self.prompt_banks:
            yield SystemCommand(f"Queue prompt bank: {escape(bank.name)}",
                                f"Generate candidates for its {len(bank.prompts)} prompts in the background",
                                lambda bank=bank: self.queue_bank(bank))
        yield SystemCommand("Queue prompts from a file…", "A prompts file (.txt, .jsonl, .json) into the labelling "
                            "queue", self.action_queue_file)
        for dataset in self.store.list_datasets():
            yield SystemCommand(f"Queue dataset prompts: {escape(dataset.name)}",
                                f"The prompts of the imported {dataset.kind} dataset into the labelling queue",
                                lambda name=dataset.name: self.queue_dataset(name))
        yield SystemCommand("DPO exercise", "Labelled stance data, support ratio, data size, epochs (F8)",
                            self.action_exercise)
        yield SystemCommand("Switch adapter", "Base → newest run → … (F7)", self.action_cycle_adapter)
        if isinstance(screen, ChatScreen):
            yield SystemCommand("Switch model…", "Restart the chat with another model (bundled or the one "
                                "served now)", self.action_switch_model)
            yield SystemCommand("Use reward model…", "A finished reward run scores each candidate and marks its pick "
                                "suggested", lambda: self.chat.choose_reward_model())
            yield SystemCommand("Best-of-N on/off", "With a reward model: the candidates shown best first, by score",
                                lambda: self.chat.toggle_best_first())
        if isinstance(screen, ChatScreen):
            yield SystemCommand("Auto-reject flagged candidates on/off", "When one of two candidates is flagged by a "
                                "safety checker, s records the other over it", lambda: self.chat.toggle_auto_reject())
            for n, how in ((1, "a plain chat: + good, - bad"), (2, "pick the better: 1 / 2"),
                           (3, "rank them best first"), (4, "rank them best first")):
                yield SystemCommand(f"Candidates per prompt: {n}", f"{how} (F10 cycles; between prompts)",
                                    lambda n=n: self.chat.set_candidates(n))
        yield SystemCommand("Regenerate candidates", "New seeds for the prompt being judged",
                            lambda: self.chat.handle_judge_action(self.chat.query_one("#judge-bar").Action("regenerate")))
