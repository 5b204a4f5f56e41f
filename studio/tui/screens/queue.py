"""Queue mode: the next queued prompt with its candidates already there, judged with one key.

A client of ``studio.labelling_queue``. The screen shows the oldest generated, unjudged item; its keys are
the chat's judge bar (``widgets/judge_bar.py``) in the mode the item's number of candidates calls for (N = 1:
+ / -, N = 2: 1 / 2 / t / x, N ≥ 3: the numbers best first, shown on the panels, backspace undoes, enter
commits, x all bad; ``a`` rates the highlighted reply on the session's attributes, ◀ ▶ pick it). Each verdict is
one committed judgement and the next item shows at once (on a busy database the verdict is kept and retried in
a worker, as on the chat screen). Meanwhile a thread worker
generates the rest of the queue (``QueueGenerator``: one transaction per prompt; ``g`` pauses and resumes,
leaving the screen stops it at the next token; a restart goes on with the rest). Progress (generated / left,
judged / left, items per minute) stays on screen.
"""

from __future__ import annotations

from collections.abc import Callable

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Static
from textual.worker import Worker, get_current_worker

from store.errors import StoreBusyError, StoreError
from studio.inference.engine import EngineError
from studio.labelling_queue import (
    GenerationReport,
    QueueEntry,
    QueueGenerator,
    QueueJudge,
    RateMeter,
    next_entries,
    progress_line,
)
from studio.tui.widgets.candidate_panel import CandidatePanel
from studio.tui.widgets.judge_bar import JudgeBar
from studio.tui.widgets.ranking_input import letter
from studio.tui.widgets.rating_row import RatingRow

MAX_SLOTS = 4
FIRST_SAVE_WAIT_S = 0.1  # how long a verdict waits on a busy database on the UI thread before a worker takes over
SAVE_RETRY_WAIT_S = 1.0  # each retry in the worker; between them it checks whether it was cancelled
SAVING_TEXT = "saving your judgement: database busy, retrying…"
EMPTY_TEXT = ("Nothing to judge yet. Queue prompts with `prefstudio queue add --prompts FILE -n 4` "
              "(or the palette's \"Queue prompt bank\"); generation runs here in the background.")




class QueueJudgeBar(JudgeBar):
    """The chat's judge bar with the queue's keys: every mode's verdicts and ``a`` rating the highlighted reply
    (◀ ▶ pick it); regenerating, editing and the input are the chat's (a queued item is judged as generated)."""

    _CHAT_ONLY = frozenset({"regenerate", "edit", "input"})

    @property
    def hint(self) -> str:
        if self.mode == "label":
            keys = "+ good · - bad"
        elif self.mode == "pair":
            keys = "1 A better · 2 B better · t tie · x both bad"
        else:
            keys = f"rank: press 1–{self.ranking.size} best first (backspace undoes, enter commits) · x all bad"
        return f"{keys} · a rate (◀ ▶ pick) · g pause/resume generation · escape back"

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "judge" and parameters and parameters[0] in self._CHAT_ONLY:
            return False
        return super().check_action(action, parameters)


class QueueScreen(Screen):
    """Judge the labelling queue one key per item while the rest generates."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back to chat"),
        Binding("g", "toggle_generation", "Pause/resume generation"),
    ]
    DEFAULT_CSS = """
    QueueScreen #queue-prompt { height: auto; max-height: 8; border: round $panel-lighten-2; padding: 0 1; }
    QueueScreen #queue-candidates { height: 1fr; }
    QueueScreen #queue-bar, QueueScreen #queue-progress { height: 1; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.entry: QueueEntry | None = None
        self.judge_rate = RateMeter()
        self.generator: QueueGenerator | None = None
        self._worker: Worker[None] | None = None
        self.paused = False
        self.saving = False  # a verdict is waiting for a busy database: keys wait too

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="queue-body"):
            yield Static("", id="queue-prompt", markup=False)
            with Horizontal(id="queue-candidates"):
                for slot in range(MAX_SLOTS):
                    yield CandidatePanel(slot, id=f"queue-candidate-{slot}")
            yield QueueJudgeBar("", id="queue-bar")
            yield Static("", id="queue-progress", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#queue-prompt", Static).border_title = "queued prompt"
        self.show_next()
        self.set_interval(2.0, self.update_progress)  # the rates move with the clock, not only with events
        self.start_generation()

    @property
    def panels(self) -> list[CandidatePanel]:
        return list(self.query(CandidatePanel))

    @property
    def bar(self) -> QueueJudgeBar:
        return self.query_one("#queue-bar", QueueJudgeBar)

    # --- showing ---

    def show_next(self) -> None:
        """The oldest generated, unjudged item, or the empty state."""
        entries = next_entries(self.app.store, limit=1)
        self.entry = entries[0] if entries else None
        prompt = self.query_one("#queue-prompt", Static)
        for panel in self.panels:
            panel.show_place(None)
            panel.close_rating()
            panel.highlighted = panel.slot == 0
        if self.entry is None:
            prompt.update(EMPTY_TEXT)
            for panel in self.panels:
                panel.display = False
            self.bar.update("")
        else:
            prompt.update(self.entry.item.text)
            prompt.border_subtitle = self.entry.item.origin
            n = len(self.entry.candidates)
            for panel in self.panels:
                panel.display = panel.slot < n
                if panel.slot < n:
                    candidate = self.entry.candidates[panel.slot]
                    panel.finish(candidate.text, f"seed {candidate.seed}")
            self.bar.set_candidates(n)
            self.bar.update(self.bar.hint)
            self.bar.focus()
        self.update_progress()

    def update_progress(self) -> None:
        counts = self.app.store.queue_counts()
        rate = self.generator.rate.per_minute() if self.generator is not None else None
        line = progress_line(counts, rate, self.judge_rate.per_minute())
        if counts.waiting:
            line += " · generation " + ("paused (g)" if self.paused else "running" if self._generating() else "waiting")
        self.query_one("#queue-progress", Static).update(line)

    # --- judging ---

    @on(JudgeBar.Action)
    def judge_action(self, event: JudgeBar.Action) -> None:
        entry = self.entry
        if entry is None or self.saving:
            return
        judge = QueueJudge(self.app.store)
        action = event.action
        if action in ("good", "bad"):
            self._record(lambda: judge.label(entry, good=action == "good"))
        elif action in ("a", "b"):
            self._record(lambda: judge.prefer(entry, 0 if action == "a" else 1))
        elif action == "tie":
            self._record(lambda: judge.tie(entry))
        elif action in ("both_bad", "all_bad"):
            self._record(lambda: judge.all_bad(entry))
        elif action in ("highlight_prev", "highlight_next"):
            n = len(entry.candidates)
            current = self._highlighted()
            for panel in self.panels:
                panel.highlighted = panel.slot == (current + (1 if action == "highlight_next" else -1)) % n
        elif action == "rate":
            panel = self.panels[self._highlighted()]
            for other in self.panels:
                other.close_rating()
            row = panel.open_rating(self.app.settings.attributes)
            self.call_after_refresh(row.focus)

    def _highlighted(self) -> int:
        return next((panel.slot for panel in self.panels if panel.highlighted), 0)

    # --- attribute ratings: standalone rows of the candidate, before or after the item's verdict ---

    @on(RatingRow.Cancelled)
    def rating_closed(self, event: RatingRow.Cancelled) -> None:
        event.stop()
        event.row.remove()
        self.bar.focus()

    @on(RatingRow.Saved)
    def rating_saved(self, event: RatingRow.Saved) -> None:
        event.stop()
        if not event.ratings:
            self.app.notify("Set at least one value (↑↓ or 0–4) before enter, or escape to close.",
                            severity="warning")
            return
        if self.entry is None:
            return
        event.row.remove()
        self.bar.focus()
        self.save_ratings(self.entry, event.slot, event.ratings)

    @work(thread=True, group="queue-ratings", exit_on_error=False)
    def save_ratings(self, entry: QueueEntry, slot: int, ratings: dict[str, int]) -> None:
        """Ratings wait for a busy database in a worker, never on the UI thread; kept until stored."""
        worker = get_current_worker()
        judge = QueueJudge(self.app.store)
        told = False
        while not worker.is_cancelled:
            try:
                with self.app.store.waiting_at_most(SAVE_RETRY_WAIT_S):
                    judge.rate(entry, slot, ratings)
            except StoreBusyError:
                if not told:
                    told = True
                    self.app.call_from_thread(self.app.notify, "database busy: your ratings are kept and will be "
                                              "saved when it is free", severity="warning")
                continue
            except (StoreError, ValueError) as exc:
                self.app.call_from_thread(self.app.notify, f"Ratings not saved: {exc}", severity="error", timeout=10)
                return
            values = ", ".join(f"{name} {value}" for name, value in ratings.items())
            self.app.call_from_thread(self.app.notify, f"Ratings saved for {letter(slot)}: {values}.")
            return

    @on(JudgeBar.RankingChanged)
    def show_ranking(self, event: JudgeBar.RankingChanged) -> None:
        """The order typed so far shows on the panels ("A · 1st") as each number is pressed."""
        for panel in self.panels:
            panel.show_place(event.order.index(panel.slot) if panel.slot in event.order else None)

    @on(JudgeBar.RankingCommitted)
    def commit_ranking(self, event: JudgeBar.RankingCommitted) -> None:
        entry = self.entry
        if entry is None or self.saving:
            return
        if not event.order:
            self.app.notify("Press the candidates' numbers best first, then enter (x: all bad).", severity="warning")
            return
        order = list(event.order)
        judge = QueueJudge(self.app.store)
        self._record(lambda: judge.rank(entry, order))

    def _record(self, write: Callable[[], int]) -> None:
        """Store a verdict: a short wait on the UI thread, then (database busy) kept and retried in a worker
        until stored, the item staying on screen and the keys waiting, as the chat screen does."""
        try:
            with self.app.store.waiting_at_most(FIRST_SAVE_WAIT_S):
                write()
        except StoreBusyError:
            self.saving = True
            self.bar.update(SAVING_TEXT)
            self.app.notify("The database is busy (another program is writing): your judgement is kept and "
                            "saved as soon as it is free.", severity="warning", timeout=8)
            self.save_when_free(write)
            return
        except (StoreError, ValueError) as exc:
            self.app.notify(f"Not stored: {exc}", severity="error", timeout=10)
            return
        self._recorded()

    def _recorded(self) -> None:
        self.saving = False
        if not self.is_attached:  # stored by the retrying worker after the screen was left
            return
        self.judge_rate.tick()
        self.show_next()

    @work(thread=True, exclusive=True, group="queue-save", exit_on_error=False)
    def save_when_free(self, write: Callable[[], int]) -> None:
        worker = get_current_worker()
        while not worker.is_cancelled:
            try:
                with self.app.store.waiting_at_most(SAVE_RETRY_WAIT_S):
                    write()
            except StoreBusyError:
                continue
            except (StoreError, ValueError) as exc:
                self.app.call_from_thread(self._not_saved, str(exc))
                return
            self.app.call_from_thread(self._recorded)
            return

    def _not_saved(self, error: str) -> None:
        self.saving = False
        self.app.notify(f"Not stored: {error}", severity="error", timeout=10)
        self.show_next()

    # --- background generation ---

    def _generating(self) -> bool:
        return self._worker is not None and not self._worker.is_finished

    def on_unmount(self) -> None:
        if self.generator is not None:
            self.generator.cancel()  # leaving the queue stops generation at the next token

    def start_generation(self) -> None:
        engine = self.app.engine
        if self.paused or self._generating() or self.app.store.queue_counts().waiting == 0:
            self.update_progress()
            return
        if engine is None:  # the chat loads the model; look again shortly
            self.set_timer(0.5, self.start_generation)
            return
        settings = self.app.settings
        self.generator = QueueGenerator(self.app.store, engine, settings.sampling, base_seed=settings.seed)
        self._worker = self.generate(self.generator)
        self.update_progress()

    def action_toggle_generation(self) -> None:
        self.paused = not self.paused
        if self.paused and self.generator is not None:
            self.generator.cancel()  # stops at the next token; the prompt being generated stays waiting
        elif not self.paused:
            self.start_generation()
        self.update_progress()

    @work(thread=True, exclusive=True, group="queue-generate", exit_on_error=False)
    def generate(self, generator: QueueGenerator) -> None:
        worker = get_current_worker()
        try:
            report = generator.run(should_stop=lambda: worker.is_cancelled,
                                   on_item_done=lambda item, prompt_id: self.app.call_from_thread(self._generated))
        except (StoreError, EngineError) as exc:  # EngineBusy included: another job holds the engine
            if not worker.is_cancelled:
                self.app.call_from_thread(self.app.notify, f"Queue generation stopped: {exc}", severity="error",
                                          timeout=10)
            return
        if not worker.is_cancelled:
            self.app.call_from_thread(self._generation_ended, report)

    def _generated(self) -> None:
        if not self.is_attached:  # the screen was left while the item was being stored
            return
        if self.entry is None:
            self.show_next()
        else:
            self.update_progress()

    def _generation_ended(self, report: GenerationReport) -> None:
        if not self.is_attached:
            return
        for item, why in report.skipped:
            self.app.notify(f"Skipped {item.origin}: {why}", severity="warning", timeout=10)
        self.update_progress()
