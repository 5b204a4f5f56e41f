"""The compare screen: base and tuned answers to the same prompts, side by side, blind by default.

In blind mode each prompt's left/right order is drawn per prompt (balanced, and drawn afresh whenever blind
mode starts, so a reveal teaches nothing about later votes) and the labels are hidden; ``1`` / ``2`` / ``t``
vote left, right or tie, and each vote is stored with the run at once, with the side the tuned answer was on.
While blind only the number of votes shows: a running "tuned 1 win" would tell the voter which side is
tuned. ``b`` reveals the sides and the tally (tuned wins / ties / losses, 95 % interval); a prompt whose sides
were shown takes no blind vote afterwards.

The chooser on top picks the prompts (held-out, a bank, the session's questions, a file) and the sampling
(temperature 0 = greedy, max tokens); changing the source or pressing enter in a field compares again.

With safety checkers configured (the chat's, loaded once), the metrics also show each checker's flagged rate and
mean score, base → tuned; a stored comparison measured before they were configured is checked in a worker.

Steering side by side (a SteerLM run): ``ctrl+t`` opens two rows of the run's trained attributes (``SteerRow``,
the chat's sliders), one per side; enter on the second answers the chooser's prompts at both settings in a worker
(``steer_comparison``, what ``compare --steer`` runs, stored the same way so the report shows it) and the panels
show each prompt's two answers. Escape goes back to base vs tuned. Another run's ctrl+t says why it cannot steer.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, ProgressBar, Select, Static
from textual.worker import get_current_worker

from studio.evaluation.compare_session import (
    ComparisonResult,
    comparison_with_reward,
    comparison_with_safety,
    run_comparison,
    stored_comparison,
    vote_tally,
    write_run_report,
)
from studio.evaluation.comparison import blind_order
from studio.evaluation.comparison_text import describe_sampling, metrics_text
from studio.evaluation.prompts import PromptSource
from studio.evaluation.steer_comparison import SteerComparison, steer_comparison, stored_steer_comparison
from studio.inference.engine import EngineError, SamplingSettings
from studio.reward.scorer import RewardScorer, RewardScorerError
from studio.safety.checker import SafetyChecker
from studio.tui.widgets.candidate_panel import CandidatePanel
from studio.tui.widgets.steer_row import START_VALUE, SteerRow
from trainers.steer_format import (
    ATTRIBUTE_MAX,
    ATTRIBUTE_MIN,
    SteerValueError,
    attribute_string,
    steerable_attributes,
)

R = TypeVar("R")  # what a compare worker answers (a comparison, a steering)


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


@dataclass
class SteeringReady(Message):
    result: SteerComparison


@dataclass
class SteeringFailed(Message):
    error: str


class CompareScreen(Screen):
    AUTO_FOCUS = "#compare-left"  # not the chooser: the voting keys must work as the screen opens
    BINDINGS = [
        Binding("n", "move(1)", "Next prompt"),
        Binding("p", "move(-1)", "Previous prompt"),
        Binding("left", "move(-1)", "Previous", show=False),
        Binding("right", "move(1)", "Next", show=False),
        Binding("1", "vote('a')", "Left better"),
        Binding("2", "vote('b')", "Right better"),
        Binding("t", "vote('tie')", "Tie"),
        Binding("b", "toggle_blind", "Blind on/off"),
        Binding("g", "regenerate", "Generate again"),
        Binding("s", "choose_prompts", "Prompts"),
        Binding("w", "write_report", "Report"),
        Binding("ctrl+t", "steer", "Steer side by side"),
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
        self.source = PromptSource()
        self.sampling: SamplingSettings | None = None  # None until on_mount reads the settings
        self._choice = "auto"  # the chooser value last compared on (or being compared on)
        self._seen_revealed: set[int] = set()  # rows shown with their sides named: no blind vote on them
        self.steering: SteerComparison | None = None  # shown instead of base vs tuned while not None

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="compare-body"):
            # markup=False: the title quotes file names and error messages, which are user text.
            yield Static(f"Run {self.run_id}: preparing the comparison…", id="compare-title", markup=False)
            yield ProgressBar(id="compare-progress", show_eta=True)
            with Horizontal(id="compare-controls"):
                yield Label("prompts", classes="compare-label")
                yield Select(self._source_options(), value="auto", allow_blank=False, compact=True,
                             id="compare-source")
                yield Input(placeholder="prompts file (lines, JSON, JSONL), then enter", compact=True,
                            id="compare-file")
                yield Label("temperature", classes="compare-label")
                yield Input(type="number", compact=True, id="compare-temperature")
                yield Label("max tokens", classes="compare-label")
                yield Input(type="integer", compact=True, id="compare-max-tokens")
            yield Vertical(id="compare-steer")  # the two SteerRows, mounted by ctrl+t on a SteerLM run
            yield Static("", id="compare-prompt", markup=False)
            with Horizontal(id="compare-panels"):
                yield CandidatePanel(0, id="compare-left")
                yield CandidatePanel(1, id="compare-right")
            yield Static("", id="compare-metrics", markup=False)
            yield Static("", id="compare-tally", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self._show_sampling(self.app.settings.sampling)
        self.query_one("#compare-file", Input).display = False
        stored = None if self.fresh else stored_comparison(self.app.store, self.run_id)
        if stored is not None and stored.rows:
            self.post_message(ComparisonReady(stored))
            self.measure_stored_safety()
            self.measure_stored_reward()
        else:
            self.compute(self.source, self.sampling)

    def _source_options(self) -> list[tuple[str, str]]:
        # A bank's name comes from its file name: shown as plain text (rich Text), never as markup.
        banks = [(Text(f"bank: {bank.name}"), f"bank:{bank.path.stem}") for bank in self.app.prompt_banks]
        return [("default (held-out, else a bank)", "auto"), ("held-out prompts", "heldout"), *banks,
                ("the session's questions", "session"), ("a file…", "file")]

    def _show_sampling(self, sampling: SamplingSettings) -> None:
        self.sampling = sampling
        self.query_one("#compare-temperature", Input).value = f"{sampling.temperature:g}"
        self.query_one("#compare-max-tokens", Input).value = str(sampling.max_tokens)

    def _show_source(self, source: PromptSource) -> None:
        self.source = source
        select = self.query_one("#compare-source", Select)
        choice = source.kind if source.kind in ("file", "session") else source.spec
        if choice not in {value for _, value in self._source_options()}:
            choice = "auto"  # e.g. a bank no longer installed
        if source.kind == "file":
            self.query_one("#compare-file", Input).value = source.value
        self.query_one("#compare-file", Input).display = source.kind == "file"
        self._choice = choice
        select.value = choice  # its Changed message matches self._choice and is ignored

    # --- the work ---

    def _safety_checkers(self) -> list[SafetyChecker]:
        """The chat's checkers (loaded on first use, in this worker); none when none are configured."""
        safety = self.app.chat.safety
        if safety is None or not safety.configured:
            return []
        checkers, problems = safety.checkers()
        for problem in problems:
            self.app.call_from_thread(self.notify, f"Safety checker not loaded: {problem}", severity="warning",
                                      timeout=10)
        return checkers

    @work(thread=True, exclusive=True, group="compare-safety", exit_on_error=False)
    def measure_stored_safety(self) -> None:
        checkers = self._safety_checkers()
        if not checkers:
            return
        result = comparison_with_safety(self.app.store, self.run_id, checkers)
        if result is not None and result.safety is not None:
            self.app.call_from_thread(self._show_safety, result)

    def _show_safety(self, result: ComparisonResult) -> None:
        if self.result is None or self.result.rows != result.rows:
            return  # compared again meanwhile: the new result carries its own numbers
        self.result = replace(self.result, safety=result.safety)
        self.query_one("#compare-metrics", Static).update(metrics_text(self.result))

    def _reward_scorer(self) -> RewardScorer | None:
        """The chat's reward model (one call at a time with the chat's scoring), or None when none is chosen."""
        scoring = self.app.chat.reward
        return scoring.scorer if scoring is not None and scoring.failed is None else None

    @work(thread=True, exclusive=True, group="compare-reward", exit_on_error=False)
    def measure_stored_reward(self) -> None:
        """A stored comparison not yet scored by the chosen reward model: its answers scored now (not regenerated)."""
        scorer = self._reward_scorer()
        if scorer is None:
            return
        try:
            result = comparison_with_reward(self.app.store, self.run_id, scorer, self.app.current_system_prompt)
        except RewardScorerError as exc:
            self.app.call_from_thread(self.notify, f"Mean reward not measured: {exc}", severity="warning", timeout=10)
            return
        if result is not None and result.reward is not None:
            self.app.call_from_thread(self._show_reward, result)

    def _show_reward(self, result: ComparisonResult) -> None:
        if self.result is None or self.result.rows != result.rows:
            return  # compared again meanwhile: the new result carries its own numbers
        self.result = replace(self.result, reward=result.reward)
        self.query_one("#compare-metrics", Static).update(metrics_text(self.result))
        self._show()

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def compute(self, source: PromptSource, sampling: SamplingSettings) -> None:
        self._answer_in_worker(lambda should_stop: run_comparison(
            self.app.engine, self.app.store, self.run_id, system=self.app.current_system_prompt,
            sampling=sampling, seed=self.app.settings.seed or 0, prompts_from=source,
            progress=lambda phase, done, total: self.post_message(ComparisonProgress(phase, done, total)),
            should_stop=should_stop, checkers=self._safety_checkers(), reward_scorer=self._reward_scorer(),
        ), ComparisonReady, ComparisonFailed)

    def _answer_in_worker(self, answer: Callable[[Callable[[], bool]], R], ready: Callable[[R], Message],
                          failed: Callable[[str], Message]) -> None:
        """In a compare worker's thread: ``answer(should_stop)``, then ``ready(result)`` posted (unless
        cancelled) or ``failed(message)``; the chat's adapter restored either way."""
        worker = get_current_worker()
        try:
            result = answer(lambda: worker.is_cancelled)
        # RunAdapterError, ComparisonError, ScoringError, SteerValueError (ValueErrors) and EngineError (a prompt
        # that does not fit the context or that the chat template refuses) are the user's to read, not a dead worker.
        except (ValueError, EngineError) as exc:
            self.post_message(failed(str(exc)))
            return
        finally:
            self.app.call_from_thread(self.app.restore_adapter)
        if not worker.is_cancelled:
            self.post_message(ready(result))

    def on_comparison_progress(self, message: ComparisonProgress) -> None:
        self.query_one("#compare-progress", ProgressBar).update(total=message.total, progress=message.done)
        self.query_one("#compare-title", Static).update(
            f"Run {self.run_id}: {message.phase} {message.done}/{message.total}…")

    def on_comparison_failed(self, message: ComparisonFailed) -> None:
        self.query_one("#compare-progress", ProgressBar).display = False
        self.query_one("#compare-title", Static).update(Content(f"Run {self.run_id}: cannot compare. {message.error}"))
        self.query_one("#compare-title", Static).add_class("error-text")

    def on_comparison_ready(self, message: ComparisonReady) -> None:
        self.result = message.result
        self.order = self._draw_order()
        self.index = 0
        self._seen_revealed = set()
        self.query_one("#compare-progress", ProgressBar).display = False
        self.query_one("#compare-title", Static).remove_class("error-text")
        if self.result.sampling:  # None when unrecorded or unreadable: the fields stay as they are
            self._show_sampling(self.result.sampling)
        self._show_source(PromptSource.parse(self.result.prompts_spec))
        self.query_one("#compare-metrics", Static).update(metrics_text(self.result))  # as the CLI prints them
        self._show()

    # --- display ---

    def _show(self) -> None:
        if self.steering is not None:
            self._show_steering(self.steering)
            return
        result = self.result
        if result is None or not result.rows:
            return
        row = result.rows[self.index]
        tuned_left = self.order[self.index]
        if not self.blind:
            self._seen_revealed.add(self.index)
        left, right = (row.tuned_text, row.base_text) if tuned_left else (row.base_text, row.tuned_text)
        panels = (self.query_one("#compare-left", CandidatePanel), self.query_one("#compare-right", CandidatePanel))
        names = ("tuned", "base") if tuned_left else ("base", "tuned")
        # Revealed: each answer's reward score beside its side's name (while blind it would name the sides).
        reward = result.reward if result.reward is not None and self.index < result.reward.n else None
        scores = {"base": reward.base[self.index], "tuned": reward.tuned[self.index]} if reward else {}
        for panel, text, name in zip(panels, (left, right), names, strict=True):
            panel.finish(text, f"seed {row.seed}")
            score = f" · reward {scores[name]:.2f}" if name in scores else ""
            panel.border_title = panel.letter if self.blind else f"{panel.letter} · {name}{score}"
        mode = "blind: which is better? 1 left · 2 right · t tie" if self.blind else "revealed (b to hide)"
        self.query_one("#compare-title", Static).update(
            f"Run {self.run_id} · prompt {self.index + 1}/{len(result.rows)} from {result.prompts_source} · "
            f"{describe_sampling(result.sampling)} · {mode}")
        self.query_one("#compare-prompt", Static).update(Content(f"Prompt: {row.prompt}"))
        self._update_tally()

    def _update_tally(self) -> None:
        tally = vote_tally(self.app.store, self.run_id)
        if self.blind:  # the count only: who is winning would say which side is the tuned one
            text = f"Blind votes cast: {tally.total} (b reveals the sides and the tally)"
        else:
            text = f"Blind votes: {tally.describe()}"
        self.query_one("#compare-tally", Static).update(text)

    def _draw_order(self) -> list[bool]:
        # A fresh seed each time blind mode starts: after a reveal (or on reopening the screen) the old
        # order is known, and reusing it would make every later "blind" vote a seeing one.
        return blind_order(len(self.result.rows) if self.result else 0, seed=secrets.randbits(31))

    # --- actions ---

    def action_move(self, step: int) -> None:
        rows = self.steering.rows if self.steering is not None else self.result.rows if self.result else []
        if rows:
            self.index = (self.index + step) % len(rows)
            self._show()

    def action_vote(self, vote: str) -> None:
        if self.steering is not None:
            self.notify("Steering side by side takes no votes: escape goes back to base vs tuned.",
                        severity="warning")
            return
        if not self.result or not self.result.rows:
            return
        if not self.blind:
            self.notify("Votes count only in blind mode (press b).", severity="warning")
            return
        if self.index in self._seen_revealed:  # the voter knows which answer is tuned: not a blind vote
            self.notify(f"Prompt {self.index + 1}'s sides were shown: its vote would not be blind. Vote on another "
                        "prompt, or compare again (g) for fresh answers.", severity="warning", timeout=8)
            return
        row = self.result.rows[self.index]
        tuned_left = self.order[self.index]
        left, right = (row.tuned_text, row.base_text) if tuned_left else (row.base_text, row.tuned_text)
        self.app.store.record_vote(self.run_id, row.prompt, row.seed, tuned_left, vote, left, right)
        if self.index + 1 < len(self.result.rows):
            self.index += 1
        self._show()

    def action_toggle_blind(self) -> None:
        if self.steering is not None:
            self.notify("Both sides are the same SteerLM run: there is nothing to hide. Escape goes back to base vs "
                        "tuned.", severity="warning")
            return
        self.blind = not self.blind
        if self.blind:
            self.order = self._draw_order()
        self._show()

    def action_choose_prompts(self) -> None:
        self.query_one("#compare-source", Select).focus()

    def action_regenerate(self) -> None:
        """Compare again with the chooser's prompts and sampling (a bad field is named, nothing runs); while
        steering, answer at the two rows' settings again."""
        if self.query(SteerRow):
            self.action_steer_generate()
            return
        try:
            source, sampling = self._chosen()
        except ValueError as exc:
            self.notify(str(exc), severity="error", timeout=8)
            return
        self._choice = str(self.query_one("#compare-source", Select).value)
        self._focus_answers()
        self.query_one("#compare-progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#compare-progress", ProgressBar).display = True
        self.query_one("#compare-title", Static).update(Content(f"Run {self.run_id}: comparing on {source.spec}…"))
        self.compute(source, sampling)

    def _focus_answers(self) -> None:
        # Out of the chooser's fields, where 1 / 2 / t / n / p would be typed instead of voting.
        self.query_one("#compare-left", CandidatePanel).focus()

    def _chosen(self) -> tuple[PromptSource, SamplingSettings]:
        choice = self.query_one("#compare-source", Select).value
        if choice == "file":
            path = self.query_one("#compare-file", Input).value.strip()
            if not path:
                raise ValueError("Prompts file: type the path of a file (lines, JSON or JSONL), then enter.")
            source = PromptSource("file", path)
        else:
            source = PromptSource.parse(str(choice))
        temperature_text = self.query_one("#compare-temperature", Input).value.strip()
        tokens_text = self.query_one("#compare-max-tokens", Input).value.strip()
        try:
            temperature = float(temperature_text)
        except ValueError:
            raise ValueError(f"Temperature: {temperature_text!r} is not a number (0 = greedy).") from None
        try:
            max_tokens = int(tokens_text)
        except ValueError:
            raise ValueError(f"Max tokens: {tokens_text!r} is not a whole number.") from None
        if temperature < 0:
            raise ValueError(f"Temperature: {temperature:g} is below 0 (0 = greedy).")
        if max_tokens < 1:
            raise ValueError(f"Max tokens: {max_tokens} is below 1.")
        base = self.sampling or self.app.settings.sampling
        return source, replace(base, temperature=temperature, max_tokens=max_tokens)

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id != "compare-source":
            return
        file_input = self.query_one("#compare-file", Input)
        file_input.display = event.value == "file"
        if event.value == self._choice:
            return
        if event.value == "file":
            file_input.focus()  # enter in the field compares
        else:
            self.action_regenerate()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id in ("compare-file", "compare-temperature", "compare-max-tokens"):
            self.action_regenerate()

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
        if isinstance(self.focused, Input | Select):  # escape leaves the chooser first, then the screen
            self._focus_answers()
            return
        if self.query(SteerRow):  # then steering, back to base vs tuned
            self._close_steering()
            return
        self.workers.cancel_group(self, "compare")
        self.app.return_to_chat()  # back to the chat, also when opened from the train or exercise screen

    # --- steering side by side (a SteerLM run at two settings) ---

    def action_steer(self) -> None:
        """Open the two setting rows (the run's trained attributes only), or focus them when open. The run's
        latest stored steering, if any, is shown at once with its settings in the rows."""
        rows = self.query(SteerRow)
        if rows:
            rows.first().focus()
            return
        run = self.app.store.get_run(self.run_id)
        try:
            trained = steerable_attributes(run.config, run.summary, run.status, run.id)
        except SteerValueError as exc:  # another method, unfinished, or no attributes recorded: say which
            self.notify(f"Cannot steer: {exc}.", severity="error", timeout=10)
            return
        stored = stored_steer_comparison(self.app.store, self.run_id)
        if stored is not None and not all(set(s) <= set(trained) for s in stored.settings):
            stored = None  # made with attributes this run no longer offers: not shown in rows that lack them
        first, second = stored.settings if stored is not None else self._default_settings(trained)
        holder = self.query_one("#compare-steer", Vertical)
        holder.mount(SteerRow(self.run_id, trained, first, label="left", id="compare-steer-first"),
                     SteerRow(self.run_id, trained, second, label="right", id="compare-steer-second"))
        holder.query_one("#compare-steer-first", SteerRow).focus()
        if stored is not None and stored.rows:
            self.post_message(SteeringReady(stored))

    @staticmethod
    def _default_settings(trained: tuple[str, ...]) -> tuple[dict[str, int], dict[str, int]]:
        # The first attribute at both ends of the scale, the others in the middle: one change to read.
        first = {name: START_VALUE for name in trained}
        return {**first, trained[0]: ATTRIBUTE_MIN}, {**first, trained[0]: ATTRIBUTE_MAX}

    def on_steer_row_done(self, event: SteerRow.Done) -> None:
        """Enter on the left row moves to the right one; on the right one, answers at both settings. Escape
        leaves the rows for the answers (a second escape closes the steering)."""
        event.stop()
        if not event.accepted:
            self._focus_answers()
        elif event.row.id == "compare-steer-first":
            self.query_one("#compare-steer-second", SteerRow).focus()
        else:
            self.action_steer_generate()

    def on_steer_row_changed(self, event: SteerRow.Changed) -> None:
        event.stop()  # read from the rows when answering

    def action_steer_generate(self) -> None:
        rows = self.query(SteerRow)
        if len(rows) != 2:
            return
        settings = [dict(row.values) for row in rows]
        if settings[0] == settings[1]:
            self.notify(f"Both sides are set to [{attribute_string(settings[0])}]: change one (ctrl+t, then ◀ ▶).",
                        severity="warning", timeout=8)
            return
        try:
            source, sampling = self._chosen()
        except ValueError as exc:
            self.notify(str(exc), severity="error", timeout=8)
            return
        self._focus_answers()
        self.query_one("#compare-progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#compare-progress", ProgressBar).display = True
        self.query_one("#compare-title", Static).update(Content(
            f"Run {self.run_id}: steering [{attribute_string(settings[0])}] vs [{attribute_string(settings[1])}] "
            f"on {source.spec}…"))
        self.compute_steering(settings, source, sampling)

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def compute_steering(self, settings: list[dict[str, int]], source: PromptSource,
                         sampling: SamplingSettings) -> None:
        self._answer_in_worker(lambda should_stop: steer_comparison(
            self.app.engine, self.app.store, self.run_id, settings, system=self.app.current_system_prompt,
            sampling=sampling, seed=self.app.settings.seed or 0, prompts_from=source.spec,
            progress=lambda done, total: self.post_message(ComparisonProgress("steering", done, total)),
            should_stop=should_stop), SteeringReady, SteeringFailed)

    def on_steering_ready(self, message: SteeringReady) -> None:
        if not self.query(SteerRow):
            return  # closed meanwhile
        self.steering = message.result
        self.index = 0
        self.query_one("#compare-progress", ProgressBar).display = False
        self.query_one("#compare-title", Static).remove_class("error-text")
        self.query_one("#compare-metrics", Static).update("")
        self._show()

    def on_steering_failed(self, message: SteeringFailed) -> None:
        self.query_one("#compare-progress", ProgressBar).display = False
        self.notify(f"Not steered: {message.error}", severity="error", timeout=10)
        self._show()  # what was shown before stays

    def _show_steering(self, result: SteerComparison) -> None:
        if not result.rows:
            return
        self.index = min(self.index, len(result.rows) - 1)
        row = result.rows[self.index]
        labels = result.labels()
        panels = (self.query_one("#compare-left", CandidatePanel), self.query_one("#compare-right", CandidatePanel))
        for panel, text, label in zip(panels, (row.first_text, row.second_text), labels, strict=True):
            panel.finish(text, f"seed {row.seed}")
            panel.border_title = Content(f"{panel.letter} · [{label}]")  # Content: brackets are not markup
        self.query_one("#compare-title", Static).update(
            f"Run {self.run_id} · steering side by side · prompt {self.index + 1}/{len(result.rows)} from "
            f"{result.prompts_source} · [{labels[0]}] vs [{labels[1]}], same seed · escape: base vs tuned")
        self.query_one("#compare-prompt", Static).update(Content(f"Prompt: {row.prompt}"))
        self.query_one("#compare-tally", Static).update(
            "ctrl+t: change the settings, enter on the right row (or g) answers again; w writes the report")

    def _close_steering(self) -> None:
        self.workers.cancel_group(self, "compare")
        self.query_one("#compare-steer", Vertical).remove_children()
        self.query_one("#compare-progress", ProgressBar).display = False
        self.steering = None
        self.index = 0
        if self.result is not None:
            self.query_one("#compare-metrics", Static).update(metrics_text(self.result))
        self._focus_answers()
        self._show()
