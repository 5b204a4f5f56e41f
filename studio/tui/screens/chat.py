"""The chat screen: prompt → 1–4 streaming candidates → one key (or a typed ranking) records the verdict.

One candidate is a plain chat with thumbs (``+`` / ``-``), two a preference (``1`` / ``2``), three or four a
ranking typed best first (``studio/tui/widgets/judge_bar.py`` holds the keys of each mode); F10 or the
palette changes the number between prompts. ``a`` rates the highlighted reply on the session's attributes
(``studio/attributes.py``), ``e`` edits it (stored as an edited judgement and a demonstration).

With safety checkers configured, each finished candidate gets a badge ("safe", "flagged: offensive, S10") from a
worker that runs after the candidates are stored (``studio/safety/candidate_checks.py``): judging never waits for
it. With auto-reject on (config ``safety_auto_reject``, or the palette), ``s`` records what a flagged candidate
suggests (the other of two over it); any other key is recorded as pressed.

A thin client of ``studio.judging.JudgingSession``, which decides what is generated and stored: this screen
lays out, maps keys to judgements, runs the session's generation and every store write that may wait on a
busy database in workers, and shows the results.

States: ``loading`` (model not ready) → ``input`` → ``generating`` → ``judging`` (→ ``saving``) → ``input`` …
(``layout`` while F10 changes the number of panels, between prompts.)
"""

from __future__ import annotations

from dataclasses import replace

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static
from textual.worker import get_current_worker

from store.errors import StoreBusyError, StoreError
from studio.evaluation.prompt_bank import PromptBank, PromptFeed
from studio.inference.engine import ChatEngine, EngineConfig, EngineError
from studio.judging import Judgement, JudgingSession, Round
from studio.personas import PersonaError, personas_path, save_persona
from studio.reward.candidate_scoring import CandidateScoring
from studio.safety.candidate_checks import (
    CandidateSafety,
    ChatSafety,
    check_candidates,
    rejection_suggestion,
    round_conversation,
    speed_mark,
    speeds_since,
)
from studio.safety.registry import LoadedCheckers
from studio.tui.messages import (
    CandidatesFinished,
    CandidateToken,
    EngineFailed,
    EngineReady,
    GenerationFailed,
)
from studio.tui.screens.chat_reward import RewardChat
from studio.tui.screens.modals import ErrorScreen, NameScreen, TextEditScreen
from studio.tui.widgets.candidate_panel import CandidatePanel
from studio.tui.widgets.conversation_turn import ConversationTurn
from studio.tui.widgets.judge_bar import JudgeBar, judge_hint, verdict_mode
from studio.tui.widgets.ranking_input import letter
from studio.tui.widgets.rating_row import RatingRow
from studio.tui.widgets.steer_row import SteerRow
from trainers.prompt_format import ChatTurn
from trainers.steer_format import steerable_attributes

FIRST_SAVE_WAIT_S = 0.1  # how long the UI thread waits on a busy database before a worker takes over
SAVE_RETRY_WAIT_S = 1.0  # each retry in the worker; between them it checks whether it was cancelled
JUDGE_HINT = judge_hint("pair")  # two candidates, the default
MIN_CANDIDATES, MAX_CANDIDATES = 1, 4  # the panels the screen lays out side by side


class ChatScreen(RewardChat, Screen):
    BINDINGS = [
        Binding("escape", "cancel_generation", "Stop", show=False),
        Binding("f10", "cycle_candidates", "Candidates"),
        Binding("s", "accept_safety_suggestion", "Reject flagged"),
        Binding("ctrl+t", "focus_steer", "Steer"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.state = "loading"
        self.judging: JudgingSession | None = None  # created on mount (it opens a store session)
        self.round: Round | None = None  # the round on screen: generating, being judged or being saved
        self.feed: PromptFeed | None = None
        # Bank mode: after each judgement the input gets the next bank prompt. Off until the user turns it
        # on (F4, or choosing a bank in the palette); F3 alone fills one prompt and changes nothing else.
        self.bank_mode = False
        self.safety: ChatSafety | None = None  # created on mount from the settings (checkers load on first use)
        # The current round's checked candidates by slot, and what auto-reject suggests for it (``s`` records it).
        self.round_safety: dict[int, CandidateSafety] = {}
        self.safety_suggestion: Judgement | None = None

    # --- layout ---

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="chat-body"):
            yield VerticalScroll(id="conversation")
            yield Static("", id="notice", markup=False)
            with Horizontal(id="candidates"):
                for slot in range(self.app.settings.candidates):
                    yield CandidatePanel(slot, id=f"candidate-{slot}")
            yield JudgeBar(JUDGE_HINT, id="judge-bar")
            with Horizontal(id="status-line"):
                yield Static("", id="counter", markup=False)
                yield Static("", id="engine-status", markup=False)
            yield Input(placeholder="Loading the model…", id="prompt-input", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#conversation").border_title = "conversation"
        settings = self.app.settings
        self.judging = JudgingSession(
            self.app.store, self._starting_system_prompt(), settings.model.name, sampling=settings.sampling,
            n_candidates=settings.candidates, base_seed=settings.seed, source="tui", engine=self.app.engine,
        )
        self.safety = ChatSafety(self._load_safety_checkers, configured=bool(settings.safety),
                                 auto_reject=settings.safety_auto_reject)
        self.panels[0].highlighted = True
        self.query_one("#judge-bar", JudgeBar).set_candidates(settings.candidates)
        self._update_counter()
        self.query_one("#notice", Static).display = False
        self.query_one("#engine-status", Static).update("loading model…")
        if self.app.engine is None:
            self.load_engine()
        else:
            self._engine_ready(self.app.engine)

    @property
    def session(self) -> JudgingSession:
        assert self.judging is not None, "the chat screen is not mounted yet"
        return self.judging

    @property
    def session_id(self) -> int:
        """The store session this conversation is recorded in (train screen: "this session's pairs")."""
        return self.session.session_id

    @property
    def turns(self) -> list[ChatTurn]:
        return list(self.session.turns)

    @property
    def system_prompt(self) -> str:
        return self.session.system_prompt

    @property
    def generating(self) -> bool:
        """Candidates are being written: the engine must not change under them (F6, F7 wait)."""
        return self.state == "generating"

    @property
    def panels(self) -> list[CandidatePanel]:
        return list(self.query(CandidatePanel))

    def _starting_system_prompt(self) -> str:
        """The last session's system prompt, so an edit survives a restart; a new store starts with the
        configured one (``system_prompt`` in the config file, or the default)."""
        latest = self.app.store.latest_session()
        return latest.system_prompt if latest is not None else self.app.settings.system_prompt

    def _speaker(self, role: str) -> str:
        if role == "user":
            return "you"
        engine = self.app.engine
        name = engine.identity.model_id if engine is not None else "assistant"
        adapter = f" + {self.app.active_adapter}" if self.app.active_adapter else ""
        return f"assistant · {name}{adapter}"

    def _show_pending(self, user_text: str) -> None:
        """The question being answered stays on screen, marked pending, until it is judged or dropped."""
        self._clear_pending()
        conversation = self.query_one("#conversation", VerticalScroll)
        conversation.mount(ConversationTurn("user", user_text, self._speaker("user"), pending=True))
        conversation.scroll_end(animate=False)

    def _clear_pending(self) -> None:
        for turn in self.query(ConversationTurn):
            if turn.pending:
                turn.remove()

    def _highlighted(self) -> int:
        return next(i for i, p in enumerate(self.panels) if p.highlighted)

    # --- engine ---

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False)
    def load_engine(self) -> None:
        settings = self.app.settings
        try:
            engine = ChatEngine(
                EngineConfig(model_path=settings.model, n_ctx=settings.n_ctx, n_threads=settings.threads,
                             prompt_format=settings.prompt_format)
            )
        except EngineError as exc:
            self.post_message(EngineFailed(str(exc)))
            return
        self.post_message(EngineReady(engine))

    def on_engine_ready(self, message: EngineReady) -> None:
        self.app.engine = message.engine
        self._engine_ready(message.engine)

    def _engine_ready(self, engine: ChatEngine) -> None:
        self.session.engine = engine
        self.app.update_header()
        self._show_engine(engine)
        prompt_input = self.query_one("#prompt-input", Input)
        prompt_input.disabled = False
        prompt_input.placeholder = "Type a prompt and press enter (F3: next prompt from the bank)"
        self.state = "input"
        prompt_input.focus()
        self._reward_engine_ready()

    def _show_engine(self, engine: ChatEngine) -> None:
        self.query_one("#engine-status", Static).update(
            f"{engine.identity.model_id} · {engine.prompt_format.name} format · {engine.n_threads} threads"
        )

    # The app loads another model in a worker (the palette's "Switch model…"); these keep the screen in step.

    def model_switch_starting(self, label: str) -> str:
        """Nothing is asked or judged while another model loads; returns the state to come back to if it fails."""
        before, self.state = self.state, "loading"
        self.query_one("#prompt-input", Input).disabled = True
        self.query_one("#engine-status", Static).update(Content(f"loading {label}…"))
        return before

    def model_switch_failed(self, state_before: str) -> None:
        self.state = state_before
        if self.app.engine is not None:
            self._show_engine(self.app.engine)
        if state_before == "input":
            self._back_to_input()

    def model_switched(self, engine: ChatEngine) -> None:
        """Another model serves the chat: a new session records it and the conversation starts afresh."""
        self.session.model_id = engine.identity.model_id
        self.session.engine = engine
        self.adapter_switched(None)  # the app drops the adapter with the old model: its sliders go too
        self.new_session()
        self._engine_ready(engine)

    def on_engine_failed(self, message: EngineFailed) -> None:
        self.query_one("#engine-status", Static).update("model failed to load")
        self.app.push_screen(ErrorScreen("The model could not be loaded", message.error, fatal=True))

    # --- prompting and generation ---

    @on(Input.Submitted, "#prompt-input")
    def submit_prompt(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            self.notify("The prompt is empty: type something to answer.", severity="warning")
            return
        if self.state != "input":
            return
        event.input.value = ""
        self.start_generation(text)

    def start_generation(self, user_text: str) -> None:
        try:
            round_ = self.session.prepare(user_text)
        except EngineError as exc:  # too long for the context, or the model's chat template refused it
            if self.state == "input":
                self.query_one("#prompt-input", Input).value = user_text  # nothing typed is lost
            self.app.push_screen(ErrorScreen("The prompt could not be prepared", str(exc)))
            return
        notice = self.query_one("#notice", Static)
        fitted = round_.fitted
        if fitted.dropped_turns:
            notice.update(
                f"Context full: the {fitted.dropped_turns} oldest turn(s) were left out of this prompt "
                f"({fitted.n_tokens} of {self.app.engine.n_ctx} tokens used)."
            )
            notice.display = True
        else:
            notice.display = False
        self.round = round_
        self._forget_safety()
        for panel in self.panels:
            panel.reset("waiting…")
        self.panels[0].reset("thinking…")
        self.state = "generating"
        self.query_one("#prompt-input", Input).disabled = True
        self._show_pending(user_text)
        self.query_one("#judge-bar", JudgeBar).update(Content(f"generating for: {user_text[:80]} · escape stops"))
        self.run_generation(round_, self._reward_watch(round_))

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def run_generation(self, round_: Round, scoring: CandidateScoring | None = None) -> None:
        """Every candidate under one hold of the engine, then the prompt and its candidates in one write
        (which may wait on a busy database: never on the UI thread). With a reward model each candidate is
        handed to its scoring thread as it finishes; best-of-N orders them by score before they are stored."""
        worker = get_current_worker()
        try:
            generations = self.session.generate(
                round_,
                on_token=lambda slot, text: self.post_message(CandidateToken(round_.number, slot, text)),
                should_stop=lambda: worker.is_cancelled,
                on_finished=self._reward_on_finished(scoring, round_),
            )
        except Exception as exc:  # noqa: BLE001 - any engine failure becomes an error panel
            self.post_message(GenerationFailed(round_.number, f"{type(exc).__name__}: {exc}"))
            return
        if generations is None or worker.is_cancelled:
            return  # stopped: nothing is stored for it
        self._reward_before_storing(scoring, round_)
        try:
            self.session.store_candidates(round_)
        except (StoreError, ValueError) as exc:
            self.post_message(GenerationFailed(round_.number, str(exc), "The candidates were not saved"))
            return
        if scoring is not None:
            scoring.stored(round_)
        self.post_message(CandidatesFinished(round_.number, round_.generations))  # best-of-N: in score order

    def on_candidate_token(self, message: CandidateToken) -> None:
        if self.round and message.job_id == self.round.number and self.state == "generating":
            self.panels[message.slot].show_text(message.text_so_far)

    def on_generation_failed(self, message: GenerationFailed) -> None:
        if self.round and message.job_id == self.round.number:
            self._back_to_input()
            self.app.push_screen(ErrorScreen(message.title, message.error))

    def on_candidates_finished(self, message: CandidatesFinished) -> None:
        if self.round is None or message.job_id != self.round.number or self.state != "generating":
            return
        for slot, gen in enumerate(message.generations):
            self.panels[slot].finish(gen.text, f"seed {gen.seed} · {gen.n_tokens} tok · {gen.duration_s:.1f} s")
        self._show_rewards()
        self.state = "judging"
        bar = self.query_one("#judge-bar", JudgeBar)
        bar.clear_ranking()
        bar.update(bar.hint)
        bar.focus()
        self._start_safety_checks(self.round)

    # --- safety checks (a worker after the candidates are stored; judging never waits for them) ---

    def _load_safety_checkers(self) -> LoadedCheckers:
        from studio.safety.registry import load_checkers

        return load_checkers(self.app.settings.safety, threads=self.app.settings.threads)

    def _start_safety_checks(self, round_: Round) -> None:
        if self.safety is None or not self.safety.configured:
            return
        for panel in self.panels[:len(round_.generations)]:
            panel.show_safety("checking…")
        self.check_safety(round_)

    @work(thread=True, group="safety", exit_on_error=False)
    def check_safety(self, round_: Round) -> None:
        """Every candidate of the round read by every checker that loads, each verdict stored with its candidate.
        Not exclusive: a new round does not cut the last one's checks short, so every candidate gets its verdicts."""
        assert self.safety is not None
        checkers, problems = self.safety.checkers()
        for problem in problems:
            self.app.call_from_thread(self.notify, f"Safety checker not loaded: {problem}. The chat goes on without "
                                      "it.", severity="warning", timeout=10)
        if not checkers:
            self.app.call_from_thread(self._safety_unavailable, round_)
            return
        worker = get_current_worker()
        mark = speed_mark(checkers)
        check_candidates(self.app.store, checkers, round_conversation(round_.history, round_.user_text),
                         [gen.text for gen in round_.generations], round_.candidate_ids,
                         on_checked=lambda _slot, safety: self.app.call_from_thread(self._show_safety, round_, safety),
                         should_stop=lambda: worker.is_cancelled)
        speeds = speeds_since(checkers, mark)
        if speeds:  # a guard model's speed, once per round it read something (a notice: nothing waits on it)
            self.app.call_from_thread(self.notify, "Safety check speed: " + "; ".join(s.describe() for s in speeds),
                                      timeout=6)

    def _safety_unavailable(self, round_: Round) -> None:
        if self.round is round_:
            for panel in self.panels:
                panel.show_safety("")

    def _show_safety(self, round_: Round, safety: CandidateSafety) -> None:
        if self.round is not round_ or safety.slot >= len(self.panels):
            return  # the screen moved on: the verdicts are stored with their candidates all the same
        panel = self.panels[safety.slot]
        panel.show_safety(safety.badge(), safety.flagged)
        for problem in safety.problems:
            self.notify(f"Safety check of {panel.letter} failed: {problem}", severity="warning", timeout=8)
        self.round_safety[safety.slot] = safety
        self._suggest_rejection()

    def _suggest_rejection(self) -> None:
        """With auto-reject on and every candidate checked: what a flagged one suggests, told once, on ``s``."""
        round_ = self.round
        before = self.safety_suggestion
        self.safety_suggestion = None
        if self.safety is not None and self.safety.auto_reject and round_ is not None and not round_.judged:
            checked = [self.round_safety[slot] for slot in sorted(self.round_safety)]
            self.safety_suggestion = rejection_suggestion(checked, len(round_.generations))
        if self.safety_suggestion is not None and self.safety_suggestion != before:
            self.notify(f"{self._suggestion_text(self.safety_suggestion)}: press s to record it.")
        self.refresh_bindings()

    def _suggestion_text(self, judgement: Judgement) -> str:
        flagged = ", ".join(letter(slot) for slot, s in sorted(self.round_safety.items()) if s.flagged)
        if judgement.chosen is not None and judgement.rejected is not None:
            return f"{letter(judgement.rejected)} flagged: {letter(judgement.chosen)} over {letter(judgement.rejected)}"
        if judgement.verdict.value in ("both_bad", "all_bad"):
            return f"{flagged} flagged: {judgement.verdict.value.replace('_', ' ')}"
        return f"{flagged} flagged: thumbs down"

    def _forget_safety(self) -> None:
        self.round_safety = {}
        self.safety_suggestion = None
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "accept_safety_suggestion":  # in the footer only while there is a suggestion to accept
            return (self.safety_suggestion is not None and self.state == "judging" and self.round is not None
                    and not self.round.judged)
        if action == "focus_steer":  # in the footer only while a SteerLM run's sliders are shown
            return bool(self.query(SteerRow))
        return super().check_action(action, parameters)

    # --- SteerLM sliders (widgets/steer_row.py) ---

    def adapter_switched(self, name: str | None) -> None:
        """A SteerLM run's adapter brings a row of sliders for the attributes it was trained on (none other);
        any other adapter, or the base model, takes it away and the prompts carry no values."""
        for old in self.query(SteerRow):
            old.remove()
        self.session.steer = None
        if name is not None:
            try:
                run = self.app.store.get_run(int(name.removeprefix("run-")))
                attributes = steerable_attributes(run.config, run.summary, run.status, run.id)
            except (LookupError, ValueError):  # not a run of the store, or not a SteerLM run (SteerValueError)
                attributes = ()
            if attributes:
                row = SteerRow(run.id, attributes)
                self.query_one("#chat-body").mount(row, before=self.query_one("#prompt-input", Input))
                self.session.steer = dict(row.values)
        self.refresh_bindings()

    def action_focus_steer(self) -> None:
        rows = self.query(SteerRow)
        if rows:
            rows.first().focus()

    @on(SteerRow.Changed)
    def steer_changed(self, event: SteerRow.Changed) -> None:
        self.session.steer = dict(event.values)  # the next round's prompt carries them

    @on(SteerRow.Done)
    def steer_done(self, event: SteerRow.Done) -> None:
        prompt_input = self.query_one("#prompt-input", Input)
        if not prompt_input.disabled:
            prompt_input.focus()

    def action_accept_safety_suggestion(self) -> None:
        round_, suggestion = self.round, self.safety_suggestion
        if self.state != "judging" or round_ is None or suggestion is None or round_.judged:
            return
        self.notify(f"Recorded ({self._suggestion_text(suggestion)}).")
        self._forget_safety()
        self._record(round_, suggestion)

    def toggle_auto_reject(self) -> None:
        """The palette's toggle: flagged candidates suggested as rejected (``s``), or the badges only."""
        if self.safety is None:
            return
        self.safety.auto_reject = not self.safety.auto_reject
        self.app.settings = replace(self.app.settings, safety_auto_reject=self.safety.auto_reject)
        if not self.safety.configured:
            self.notify("No safety checkers are configured (safety in the config file, or --safety): auto-reject "
                        "has nothing to act on.", severity="warning", timeout=10)
        elif self.safety.auto_reject:
            self.notify("Auto-reject on: when one of two candidates is flagged, s records the other over it.")
        else:
            self.notify("Auto-reject off: flagged candidates keep their badge; your keys alone decide.")
        self._suggest_rejection()

    def action_cancel_generation(self) -> None:
        if self.state == "generating":
            self.workers.cancel_group(self, "generate")
            question = self.round.user_text if self.round else ""
            self.round = None
            for panel in self.panels:
                panel.reset("(stopped)")
            self._clear_pending()
            self.notify("Generation stopped; nothing was stored for it. Your prompt is back in the input.")
            self._back_to_input()
            # The question goes back where it was typed, to edit or send again.
            prompt_input = self.query_one("#prompt-input", Input)
            prompt_input.value = question
            prompt_input.cursor_position = len(question)

    # --- judging ---

    @on(JudgeBar.Action)
    def handle_judge_action(self, event: JudgeBar.Action) -> None:
        action = event.action
        if action == "input":
            # Saving: the verdict is not stored yet, moving on waits for it. Loading: another model is coming.
            if self.state in ("saving", "loading"):
                return
            self._clear_pending()
            self._back_to_input()
            return
        if self.state != "judging" or self.round is None:
            return
        round_ = self.round
        bar = self.query_one("#judge-bar", JudgeBar)
        if action in ("highlight_prev", "highlight_next"):
            current = self._highlighted()
            step = -1 if action == "highlight_prev" else 1
            for i, panel in enumerate(self.panels):
                panel.highlighted = i == (current + step) % len(self.panels)
        elif action == "regenerate":
            self.start_generation(round_.user_text)
        elif action == "edit":
            self._edit_reply(round_)
        elif action == "rate":
            self._open_rating(round_)
        elif action in ("good", "bad"):
            self._record(round_, Judgement.label(0, good=action == "good"))
        elif action == "all_bad":
            bar.clear_ranking()
            self._record(round_, Judgement.all_bad())
            bar.update("All bad, recorded. r regenerate · e write a better one · a rate · i move on (no reply kept)")
        elif action in ("a", "b"):
            picked = 0 if action == "a" else 1
            self._record(round_, Judgement.prefer(chosen=picked, rejected=1 - picked))
        elif action == "tie":
            # No pair is made; the conversation goes on with the highlighted reply (◀ ▶ choose; A by default).
            picked = self._highlighted()
            self._record(round_, Judgement.tie(continue_with=picked))
            self.notify(f"Tie recorded (no training pair). The conversation continues with "
                        f"{self.panels[picked].letter}'s reply.")
        elif action == "both_bad":
            self._record(round_, Judgement.both_bad())
            bar.update("Both bad, recorded. r regenerate · e write a better one · i move on (no reply kept)")

    @on(JudgeBar.RankingChanged)
    def show_ranking(self, event: JudgeBar.RankingChanged) -> None:
        """The order typed so far shows on the panels ("A · 1st") as each number is pressed."""
        if self.state != "judging" and event.order:
            return  # numbers pressed while candidates generate rank nothing (the bar drops them when they arrive)
        for panel in self.panels:
            panel.show_place(event.order.index(panel.slot) if panel.slot in event.order else None)

    @on(JudgeBar.RankingCommitted)
    def commit_ranking(self, event: JudgeBar.RankingCommitted) -> None:
        if self.state != "judging" or self.round is None:
            return
        if not event.order:
            self.notify("Press the candidates' numbers best first, then enter (x: all bad).", severity="warning")
            return
        self._record(self.round, Judgement.ranking(event.order))

    _busy_shown = False  # the "database busy" notice is up

    def _record(self, round_: Round, judgement: Judgement) -> None:
        """Store the judgement (with the turns it adds, in one transaction), then go on with its reply.

        A busy database (another program writing) never loses the judgement: it is kept and retried in a
        worker until stored, the screen says so, and it moves on once the judgement is saved.
        """
        self.state = "saving"  # judge keys wait until this verdict is stored
        try:
            # A short wait on the UI thread; a longer one would freeze the screen.
            self.session.record(round_, judgement, wait_at_most_s=FIRST_SAVE_WAIT_S)
        except StoreBusyError:
            self._saving_notice(True)
            self._save_when_free(round_, judgement)
            return
        except (StoreError, ValueError) as exc:
            self._judgement_failed(str(exc))
            return
        self._judgement_saved(round_, judgement)

    @work(thread=True, group="save-judgement", exit_on_error=False)
    def _save_when_free(self, round_: Round, judgement: Judgement) -> None:
        worker = get_current_worker()
        while not worker.is_cancelled:
            try:
                self.session.record(round_, judgement, wait_at_most_s=SAVE_RETRY_WAIT_S)
            except StoreBusyError:
                continue  # still busy: the judgement stays kept, the notice stays up
            except (StoreError, ValueError) as exc:
                self.app.call_from_thread(self._judgement_failed, str(exc))
                return
            self.app.call_from_thread(self._judgement_saved, round_, judgement)
            return

    def _saving_notice(self, busy: bool) -> None:
        if not busy and not self._busy_shown:
            return  # the notice holds something else (the context note): leave it
        notice = self.query_one("#notice", Static)
        if busy:
            notice.update("database busy, retrying… another program is writing to it; your judgement is kept "
                          "and will be saved")
            self.query_one("#judge-bar", JudgeBar).update("saving your judgement: database busy, retrying…")
        notice.display = busy
        self._busy_shown = busy

    def _judgement_saved(self, round_: Round, judgement: Judgement) -> None:
        if self._busy_shown:
            self._saving_notice(False)
            self.notify("The database is free again: your judgement is saved.")
        self._update_counter()
        if self.round is not round_:  # the screen moved on while it waited (a new session): nothing to continue
            return
        self.state = "judging"
        self.query_one("#judge-bar", JudgeBar).clear_ranking()  # stored: the panels lose their places
        reply = judgement.continuing_reply(round_)
        if reply is not None:
            self._continue_with(round_, reply)

    def _judgement_failed(self, error: str) -> None:
        self._saving_notice(False)
        self.state = "judging"  # the verdict was not stored: the same keys try again
        bar = self.query_one("#judge-bar", JudgeBar)
        bar.clear_ranking()
        bar.update(bar.hint)
        self.app.push_screen(ErrorScreen("The judgement was not saved", error))

    def _edit_reply(self, round_: Round) -> None:
        base = self._highlighted()
        letter = self.panels[base].letter
        single = len(round_.candidate_ids) == 1

        def save(text: str | None) -> None:
            if text is None or self.round is not round_:
                return
            self._record(round_, self.session.edited(round_, text, base))

        self.app.push_screen(
            TextEditScreen(
                "Correct the reply" if single else f"Write the better reply (starting from {letter})",
                round_.reply(base).strip(),
                "Your text is stored as a demonstration and continues the conversation"
                + ("." if single else "; it becomes the chosen side."),
            ),
            save,
        )

    # --- attribute ratings ---

    def _open_rating(self, round_: Round) -> None:
        """A rating row under the highlighted reply; one 0–4 value per attribute of the session's set."""
        slot = self._highlighted()
        for panel in self.panels:
            panel.close_rating()
        row = self.panels[slot].open_rating(self.app.settings.attributes)
        self.call_after_refresh(row.focus)

    @on(RatingRow.Cancelled)
    def rating_closed(self, event: RatingRow.Cancelled) -> None:
        event.stop()
        event.row.remove()
        self.query_one("#judge-bar", JudgeBar).focus()

    @on(RatingRow.Saved)
    def rating_saved(self, event: RatingRow.Saved) -> None:
        event.stop()
        round_ = self.round
        if not event.ratings:
            self.notify("Set at least one value (↑↓ or 0–4) before enter, or escape to close.", severity="warning")
            return
        if round_ is None or not round_.stored:
            return
        event.row.remove()
        self.query_one("#judge-bar", JudgeBar).focus()
        self._save_ratings(round_, event.slot, event.ratings)

    @work(thread=True, group="save-ratings", exit_on_error=False)
    def _save_ratings(self, round_: Round, slot: int, ratings: dict[str, int]) -> None:
        """Ratings wait for a busy database in a worker, never on the UI thread; they are kept until stored."""
        worker = get_current_worker()
        told = False
        while not worker.is_cancelled:
            try:
                self.session.rate(round_, slot, ratings, wait_at_most_s=SAVE_RETRY_WAIT_S)
            except StoreBusyError:
                if not told:
                    told = True
                    self.app.call_from_thread(self.notify, "database busy: your ratings are kept and will be saved "
                                              "when it is free", severity="warning")
                continue
            except (StoreError, ValueError) as exc:
                self.app.call_from_thread(self.app.push_screen, ErrorScreen("The ratings were not saved", str(exc)))
                return
            values = ", ".join(f"{name} {value}" for name, value in ratings.items())
            self.app.call_from_thread(self.notify, f"Ratings saved for {letter(slot)}: {values}.")
            return

    # --- how many candidates (F10, the palette) ---

    def action_cycle_candidates(self) -> None:
        n = self.session.n_candidates
        self.set_candidates(n % MAX_CANDIDATES + MIN_CANDIDATES)

    def set_candidates(self, n: int) -> bool:
        """Answer every prompt with ``n`` candidates from now on (1–4); between prompts only, since the
        panels on screen belong to the round being judged. False (with a notice) when refused."""
        if not MIN_CANDIDATES <= n <= MAX_CANDIDATES:
            self.notify(f"The studio shows {MIN_CANDIDATES} to {MAX_CANDIDATES} candidates, not {n}.",
                        severity="warning")
            return False
        if self.state not in ("input", "loading"):
            self.notify("Change the number of candidates between prompts: judge this one (or press i) first.",
                        severity="warning")
            return False
        self.session.n_candidates = n
        self.app.settings = replace(self.app.settings, candidates=n)  # a new session (ctrl+n) keeps it
        self.query_one("#judge-bar", JudgeBar).set_candidates(n)
        # No prompt is sent while the panels change (the old ones leave the screen before the new arrive).
        state_before, self.state = self.state, "layout"
        self.call_later(self._lay_out_panels, n, state_before)
        how = {"label": "a plain chat: + good, - bad", "pair": "1 / 2 picks the better",
               "rank": f"rank them: press 1–{n} best first, enter"}[verdict_mode(n)]
        self.notify(f"{n} candidate{'s' if n > 1 else ''} per prompt from now on ({how}).")
        return True

    async def _lay_out_panels(self, n: int, state_before: str) -> None:
        box = self.query_one("#candidates", Horizontal)
        await box.remove_children()
        await box.mount_all([CandidatePanel(slot, id=f"candidate-{slot}") for slot in range(n)])
        self.panels[0].highlighted = True
        if self.state == "layout":
            self.state = state_before

    def _continue_with(self, round_: Round, reply: str) -> None:
        """The chosen reply (stored as the assistant turn with the judgement) continues the conversation."""
        self._show_exchange(round_.user_text, reply.strip())
        self.round = None
        self._back_to_input()
        if self.bank_mode and self.feed is not None:
            self.query_one("#prompt-input", Input).value = self.feed.next()
            self._update_counter()

    def _show_exchange(self, user_text: str, reply: str) -> None:
        """The judged question and the reply that continues it, each labelled with who said it."""
        self._clear_pending()
        conversation = self.query_one("#conversation", VerticalScroll)
        conversation.mount(ConversationTurn("user", user_text, self._speaker("user")))
        conversation.mount(ConversationTurn("assistant", reply, self._speaker("assistant")))
        conversation.scroll_end(animate=False)

    def _back_to_input(self) -> None:
        if self.app.engine is None:
            return
        self.state = "input"
        for panel in self.panels:
            panel.close_rating()  # ratings and a ranking being typed belong to the round being judged
        self.query_one("#judge-bar", JudgeBar).clear_ranking()
        self.query_one("#judge-bar", JudgeBar).update("type a prompt below · F3 next bank prompt · F2 system prompt")
        prompt_input = self.query_one("#prompt-input", Input)
        prompt_input.disabled = False
        prompt_input.focus()

    def _update_counter(self) -> None:
        pairs = self.session.pair_count()
        thumbs = self.session.label_count()
        bank = f" · thumbs: {thumbs}" if thumbs else ""  # a plain chat (one candidate) makes labels, not pairs
        bank += f" · bank: {self.feed.label}" if self.feed else ""
        bank += " · bank mode on (F4)" if self.bank_mode else ""
        bank += self._reward_status()
        self.query_one("#counter", Static).update(Content(f"pairs this session: {pairs}{bank}"))

    # --- session, system prompt, prompt bank (also reachable from the command palette) ---

    def edit_system_prompt(self) -> None:
        def save(text: str | None) -> None:
            if text is not None:
                self.session.set_system_prompt(text.strip())
                self.notify("System prompt saved for this session.")

        self.app.push_screen(
            TextEditScreen("System prompt for this session", self.system_prompt,
                           "Who the assistant is and what it values; rendered before every turn."),
            save,
        )

    def save_as_persona(self) -> None:
        """Keep this session's system prompt under a name; the palette then offers "Use persona: NAME"."""
        def save(name: str | None) -> None:
            if name is None:
                return
            try:
                save_persona(personas_path(self.app.store.path), name, self.system_prompt)
            except PersonaError as exc:
                self.notify(f"Persona not saved: {exc}", severity="error", timeout=10)
                return
            self.notify(f"Persona '{name}' saved; ctrl+p → Use persona: {name} brings it back.")

        self.app.push_screen(NameScreen("Save this session's system prompt as a persona", "a name, e.g. help desk"),
                             save)

    def use_persona(self, name: str, text: str) -> None:
        self.session.set_system_prompt(text)
        self.notify(f"Persona '{name}' is now this session's system prompt.")

    def use_bank(self, bank: PromptBank) -> None:
        """Choosing a bank means working through it: bank mode goes on."""
        self.feed = PromptFeed(bank)
        self.bank_mode = True
        self.next_bank_prompt()

    def toggle_bank_mode(self) -> None:
        self.bank_mode = not self.bank_mode
        if self.bank_mode:
            self.notify("Bank mode on: after each judgement the input gets the next bank prompt (F4 turns it off).")
            if self.state in ("input", "loading") and not self.query_one("#prompt-input", Input).value.strip():
                self.next_bank_prompt()
        else:
            self.notify("Bank mode off: judging leaves the input empty (F3 still fills one prompt).")
        self._update_counter()

    def next_bank_prompt(self) -> None:
        if self.feed is None:
            banks = self.app.prompt_banks
            if not banks:
                self.notify("No prompt banks found under assets/prompts/.", severity="warning")
                return
            self.feed = PromptFeed(banks[0])
        if self.state in ("input", "loading"):
            prompt_input = self.query_one("#prompt-input", Input)
            prompt_input.value = self.feed.next()
            prompt_input.focus()
            self._update_counter()

    def new_session(self) -> None:
        if self.state == "generating":
            self.action_cancel_generation()
        session_id = self.session.new_session()  # same system prompt, and the model recorded again
        self.round = None
        self.query_one("#conversation", VerticalScroll).remove_children()
        for panel in self.panels:
            panel.reset("")
        self._update_counter()
        self._back_to_input()
        self.notify(f"New session {session_id}.")
