"""Queue mode: the next queued prompt with its candidates already there, judged with one key.

A client of ``studio.labelling_queue``. The screen shows the oldest generated, unjudged item; the keys
depend on how many candidates it has (N = 1: + / -, N = 2: 1 / 2 / t / x, N ≥ 3: the numbers best first,
backspace undoes, enter commits, x all bad). Each verdict is one committed judgement and the next item shows
at once (on a busy database the verdict is kept and retried in a worker, as on the chat screen). Meanwhile a thread worker generates the rest of the queue (``QueueGenerator``: one transaction per
prompt; ``g`` pauses and resumes, leaving the screen stops it at the next token; a restart goes on with the
rest). Progress (generated / left, judged / left, items per minute) stays on screen.
"""

from __future__ import annotations

from collections.abc import Callable

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Key
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

MAX_SLOTS = 4
FIRST_SAVE_WAIT_S = 0.1  # how long a verdict waits on a busy database on the UI thread before a worker takes over
SAVE_RETRY_WAIT_S = 1.0  # each retry in the worker; between them it checks whether it was cancelled
SAVING_TEXT = "saving your judgement: database busy, retrying…"
HINTS = {
    1: "+ good · - bad · g pause/resume generation · escape back to the chat",
    2: "1 A better · 2 B better · t tie · x both bad · g pause/resume generation · escape back",
}
RANK_HINT = "numbers best first · backspace undo · enter commit · x all bad · g pause/resume · escape back"
EMPTY_TEXT = ("Nothing to judge yet. Queue prompts with `prefstudio queue add --prompts FILE -n 4` "
              "(or the palette's \"Queue prompt bank\"); generation runs here in the background.")


def ordinal(place: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(place, f"{place}th")


class QueueScreen(Screen):
    """Judge the labelling queue one key per item while the rest generates."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back to chat"),
        Binding("g", "toggle_generation", "Pause/resume generation"),
    ]
    DEFAULT_CSS = """
    QueueScreen #queue-prompt { height: auto; max-height: 8; border: round $panel-lighten-2; padding: 0 1; }
    QueueScreen #queue-candidates { height: 1fr; }
    QueueScreen #queue-hint, QueueScreen #queue-progress { height: 1; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.entry: QueueEntry | None = None
        self.ranking: list[int] = []  # slots best first, while ranking 3–4 candidates
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
            yield Static("", id="queue-hint", markup=False)
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

    # --- showing ---

    def show_next(self) -> None:
        """The oldest generated, unjudged item, or the empty state."""
        entries = next_entries(self.app.store, limit=1)
        self.entry = entries[0] if entries else None
        self.ranking = []
        prompt = self.query_one("#queue-prompt", Static)
        if self.entry is None:
            prompt.update(EMPTY_TEXT)
            for panel in self.panels:
                panel.display = False
            self.query_one("#queue-hint", Static).update("")
        else:
            prompt.update(self.entry.item.text)
            prompt.border_subtitle = self.entry.item.origin
            n = len(self.entry.candidates)
            for panel in self.panels:
                panel.display = panel.slot < n
                if panel.slot < n:
                    candidate = self.entry.candidates[panel.slot]
                    panel.finish(candidate.text, f"seed {candidate.seed}")
            self.query_one("#queue-hint", Static).update(HINTS.get(n, RANK_HINT))
            self._show_ranking()
        self.update_progress()

    def _show_ranking(self) -> None:
        for panel in self.panels:
            place = self.ranking.index(panel.slot) + 1 if panel.slot in self.ranking else None
            panel.border_title = panel.letter + (f" · {ordinal(place)}" if place else "")
            panel.highlighted = place is not None

    def update_progress(self) -> None:
        counts = self.app.store.queue_counts()
        rate = self.generator.rate.per_minute() if self.generator is not None else None
        line = progress_line(counts, rate, self.judge_rate.per_minute())
        if counts.waiting:
            line += " · generation " + ("paused (g)" if self.paused else "running" if self._generating() else "waiting")
        self.query_one("#queue-progress", Static).update(line)

    # --- judging ---

    def on_key(self, event: Key) -> None:
        entry = self.entry
        if entry is None or self.saving:
            return
        n, key, char = len(entry.candidates), event.key, event.character
        judge = QueueJudge(self.app.store)
        if n == 1 and char in ("+", "-"):
            self._record(lambda: judge.label(entry, good=char == "+"))
        elif n == 2 and key in ("1", "2"):
            self._record(lambda: judge.prefer(entry, int(key) - 1))
        elif n == 2 and key == "t":
            self._record(lambda: judge.tie(entry))
        elif key == "x":
            self._record(lambda: judge.all_bad(entry))
        elif n >= 3 and key.isdigit() and 1 <= int(key) <= n:
            if int(key) - 1 not in self.ranking:
                self.ranking.append(int(key) - 1)
                self._show_ranking()
        elif n >= 3 and key == "backspace" and self.ranking:
            self.ranking.pop()
            self._show_ranking()
        elif n >= 3 and key == "enter":
            if not self.ranking:
                self.app.notify("Press the candidates' numbers best first, then enter (x: all bad).")
            else:
                order = list(self.ranking)
                self._record(lambda: judge.rank(entry, order))
        else:
            return
        event.stop()

    def _record(self, write: Callable[[], int]) -> None:
        """Store a verdict: a short wait on the UI thread, then (database busy) kept and retried in a worker
        until stored, the item staying on screen and the keys waiting, as the chat screen does."""
        try:
            with self.app.store.waiting_at_most(FIRST_SAVE_WAIT_S):
                write()
        except StoreBusyError:
            self.saving = True
            self.query_one("#queue-hint", Static).update(SAVING_TEXT)
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
