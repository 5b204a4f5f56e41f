"""The compare screen: base and tuned answers to the same prompts, side by side, blind by default.

In blind mode each prompt's left/right order is drawn per prompt (balanced, seeded) and the labels are
hidden; ``1`` / ``2`` / ``t`` vote left, right or tie, each vote is stored with the run at once, and the
tally shows tuned wins / ties / losses with a 95 % interval. ``b`` reveals which side is which.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, ProgressBar, Static
from textual.worker import get_current_worker

from studio.compare_session import (
    ComparisonResult,
    run_comparison,
    stored_comparison,
    vote_tally,
    write_run_report,
)
from studio.comparison import blind_order
from studio.tui.widgets.candidate_panel import CandidatePanel


@dataclass
class ComparisonProgress(Message):
    phase: str
    done: int
    total: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ComparisonProgress)


@dataclass
class ComparisonReady(Message):
    result: ComparisonResult


@dataclass
class ComparisonFailed(Message):
    error: str


class CompareScreen(Screen):
    BINDINGS = [
        Binding("left", "move(-1)", "Previous"),
        Binding("right", "move(1)", "Next"),
        Binding("1", "vote('a')", "Left better"),
        Binding("2", "vote('b')", "Right better"),
        Binding("t", "vote('tie')", "Tie"),
        Binding("b", "toggle_blind", "Blind on/off"),
        Binding("g", "regenerate", "Generate again"),
        Binding("w", "write_report", "Report"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, run_id: int, fresh: bool = False) -> None:
        super().__init__()
        self.run_id = run_id
        self.fresh = fresh
        self.result: ComparisonResult | None = None
        self.order: list[bool] = []  # per row: is tuned on the left?
        self.index = 0
        self.blind = True

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="compare-body"):
            yield Static(f"Run {self.run_id}: preparing the comparison…", id="compare-title")
            yield ProgressBar(id="compare-progress", show_eta=True)
            yield Static("", id="compare-prompt", markup=False)
            with Horizontal(id="compare-panels"):
                yield CandidatePanel(0, id="compare-left")
                yield CandidatePanel(1, id="compare-right")
            yield Static("", id="compare-metrics", markup=False)
            yield Static("", id="compare-tally", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        stored = None if self.fresh else stored_comparison(self.app.store, self.run_id)
        if stored is not None and stored.rows:
            self.post_message(ComparisonReady(stored))
        else:
            self.compute()

    # --- the work ---

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def compute(self) -> None:
        worker = get_current_worker()
        chat = self.app.chat
        try:
            result = run_comparison(
                self.app.engine, self.app.store, self.run_id, system=chat.system_prompt,
                sampling=self.app.settings.sampling, seed=self.app.settings.seed or 0,
                progress=lambda phase, done, total: self.post_message(ComparisonProgress(phase, done, total)),
                should_stop=lambda: worker.is_cancelled,
            )
        except ValueError as exc:  # RunAdapterError, ComparisonError, ScoringError: user-facing
            self.post_message(ComparisonFailed(str(exc)))
            return
        finally:
            self.app.call_from_thread(self.app.restore_adapter)
        if not worker.is_cancelled:
            self.post_message(ComparisonReady(result))

    def on_comparison_progress(self, message: ComparisonProgress) -> None:
        self.query_one("#compare-progress", ProgressBar).update(total=message.total, progress=message.done)
        self.query_one("#compare-title", Static).update(
            f"Run {self.run_id}: {message.phase} {message.done}/{message.total}…")

    def on_comparison_failed(self, message: ComparisonFailed) -> None:
        self.query_one("#compare-title", Static).update(f"Run {self.run_id}: cannot compare. {message.error}")
        self.query_one("#compare-title", Static).add_class("error-text")

    def on_comparison_ready(self, message: ComparisonReady) -> None:
        self.result = message.result
        self.order = blind_order(len(self.result.rows), seed=self.run_id)
        self.index = 0
        self.query_one("#compare-progress", ProgressBar).display = False
        self.query_one("#compare-metrics", Static).update(self._metrics_text())
        self._show()

    # --- display ---

    def _metrics_text(self) -> str:
        r = self.result
        if r and r.stance:
            b, a = r.stance["before"], r.stance["after"]
            return (f"Stance metric on {b['n']} held-out labelled items (support answer more likely than oppose): "
                    f"base {b['support_preferred']}/{b['n']} ({b['share']:.0%}) → tuned "
                    f"{a['support_preferred']}/{a['n']} ({a['share']:.0%})")
        if not r or not r.before or not r.after:
            return "No held-out pairs in this run: no automatic metrics (votes still count)."
        b, a = r.before, r.after
        return (f"Held-out pairs: {b['n']} · preference accuracy (logp chosen > rejected) base "
                f"{b['raw_accuracy']:.2f} → tuned {a['raw_accuracy']:.2f} · DPO implicit-reward accuracy "
                f"{a['implicit_reward_accuracy']:.2f} · mean margin {b['mean_margin']:+.2f} → {a['mean_margin']:+.2f}")

    def _show(self) -> None:
        result = self.result
        if result is None or not result.rows:
            return
        row = result.rows[self.index]
        tuned_left = self.order[self.index]
        left, right = (row.tuned_text, row.base_text) if tuned_left else (row.base_text, row.tuned_text)
        panels = (self.query_one("#compare-left", CandidatePanel), self.query_one("#compare-right", CandidatePanel))
        names = ("tuned", "base") if tuned_left else ("base", "tuned")
        for panel, text, name in zip(panels, (left, right), names, strict=True):
            panel.finish(text, f"seed {row.seed}")
            panel.border_title = panel.letter if self.blind else f"{panel.letter} · {name}"
        mode = "blind: which is better? 1 left · 2 right · t tie" if self.blind else "revealed (b to hide)"
        self.query_one("#compare-title", Static).update(
            f"Run {self.run_id} · prompt {self.index + 1}/{len(result.rows)} from {result.prompts_source} · {mode}")
        self.query_one("#compare-prompt", Static).update(f"Prompt: {row.prompt}")
        self._update_tally()

    def _update_tally(self) -> None:
        tally = vote_tally(self.app.store, self.run_id)
        self.query_one("#compare-tally", Static).update(f"Blind votes: {tally.describe()}")

    # --- actions ---

    def action_move(self, step: int) -> None:
        if self.result and self.result.rows:
            self.index = (self.index + step) % len(self.result.rows)
            self._show()

    def action_vote(self, vote: str) -> None:
        if not self.result or not self.result.rows:
            return
        if not self.blind:
            self.notify("Votes count only in blind mode (press b).", severity="warning")
            return
        row = self.result.rows[self.index]
        tuned_left = self.order[self.index]
        left, right = (row.tuned_text, row.base_text) if tuned_left else (row.base_text, row.tuned_text)
        self.app.store.record_vote(self.run_id, row.prompt, row.seed, tuned_left, vote, left, right)
        if self.index + 1 < len(self.result.rows):
            self.index += 1
        self._show()

    def action_toggle_blind(self) -> None:
        self.blind = not self.blind
        self._show()

    def action_regenerate(self) -> None:
        self.query_one("#compare-progress", ProgressBar).display = True
        self.compute()

    def action_write_report(self) -> None:
        self.write_report()

    @work(thread=True, exclusive=True, group="report", exit_on_error=False)
    def write_report(self) -> None:
        from pathlib import Path

        run = self.app.store.get_run(self.run_id)
        try:
            path = write_run_report(self.app.store, self.run_id, self.result, Path(run.output_dir) / "report")
        except (ValueError, OSError) as exc:
            self.app.call_from_thread(self.notify, f"Report not written: {exc}", severity="error")
            return
        self.app.call_from_thread(self.notify, f"Report written: {path} (and report.html)", timeout=10)

    def action_back(self) -> None:
        self.workers.cancel_group(self, "compare")
        self.app.return_to_chat()  # back to the chat, also when opened from the train or exercise screen
