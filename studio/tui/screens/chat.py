"""The chat screen: prompt → two streaming candidates → one key records the preference.

States: ``loading`` (model not ready) → ``input`` → ``generating`` → ``judging`` → ``input`` …
Inference runs in a thread worker; every store write is a quick transaction on the UI thread, and each
judgement is committed before the screen moves on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static
from textual.worker import get_current_worker

from store.errors import StoreBusyError, StoreError
from store.records import Verdict
from studio.evaluation.prompt_bank import PromptBank, PromptFeed
from studio.inference.engine import ChatEngine, EngineConfig, EngineError, FittedPrompt, Generation, new_seed
from studio.personas import PersonaError, personas_path, save_persona
from studio.tui.messages import (
    CandidatesFinished,
    CandidateToken,
    EngineFailed,
    EngineReady,
    GenerationFailed,
)
from studio.tui.screens.modals import ErrorScreen, NameScreen, TextEditScreen
from studio.tui.widgets.candidate_panel import CandidatePanel
from studio.tui.widgets.conversation_turn import ConversationTurn
from studio.tui.widgets.judge_bar import JudgeBar
from trainers.prompt_format import ChatTurn

FIRST_SAVE_WAIT_S = 0.1  # how long the UI thread waits on a busy database before a worker takes over
SAVE_RETRY_WAIT_S = 1.0  # each retry in the worker; between them it checks whether it was cancelled
JUDGE_HINT = "1 A better · 2 B better · t tie · x both bad · r regenerate · e edit (◀ ▶ pick) · i input"


@dataclass
class GenerationJob:
    """One prompt being answered: what the model saw, with which seeds."""

    id: int
    user_text: str
    history: list[ChatTurn]
    fitted: FittedPrompt
    seeds: list[int]
    prompt_id: int | None = None
    candidate_ids: list[int] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)
    judged: bool = False


class ChatScreen(Screen):
    BINDINGS = [
        Binding("escape", "cancel_generation", "Stop", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.state = "loading"
        self.turns: list[ChatTurn] = []
        self.job: GenerationJob | None = None
        self._job_counter = 0
        self.feed: PromptFeed | None = None
        # Bank mode: after each judgement the input gets the next bank prompt. Off until the user turns it
        # on (F4, or choosing a bank in the palette); F3 alone fills one prompt and changes nothing else.
        self.bank_mode = False
        self.session_id: int | None = None

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
        store = self.app.store
        self.session_id = store.create_session(
            self._starting_system_prompt(), model_id=self.app.settings.model.name if self.app.settings.model else None
        )
        self.panels[0].highlighted = True
        self._update_counter()
        self.query_one("#notice", Static).display = False
        self.query_one("#engine-status", Static).update("loading model…")
        if self.app.engine is None:
            self.load_engine()
        else:
            self._engine_ready(self.app.engine)

    @property
    def panels(self) -> list[CandidatePanel]:
        return list(self.query(CandidatePanel))

    @property
    def system_prompt(self) -> str:
        return self.app.store.get_session(self.session_id).system_prompt

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

    # --- engine ---

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False)
    def load_engine(self) -> None:
        settings = self.app.settings
        try:
            engine = ChatEngine(
                EngineConfig(model_path=settings.model, n_ctx=settings.n_ctx, n_threads=settings.threads)
            )
        except EngineError as exc:
            self.post_message(EngineFailed(str(exc)))
            return
        self.post_message(EngineReady(engine))

    def on_engine_ready(self, message: EngineReady) -> None:
        self.app.engine = message.engine
        self._engine_ready(message.engine)

    def _engine_ready(self, engine: ChatEngine) -> None:
        self.app.update_header()
        self.query_one("#engine-status", Static).update(
            f"{engine.identity.model_id} · {engine.prompt_format.name} format · {engine.n_threads} threads"
        )
        prompt_input = self.query_one("#prompt-input", Input)
        prompt_input.disabled = False
        prompt_input.placeholder = "Type a prompt and press enter (F3: next prompt from the bank)"
        self.state = "input"
        prompt_input.focus()

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
        engine: ChatEngine = self.app.engine
        sampling = self.app.settings.sampling
        try:
            fitted = engine.fit_prompt(self.system_prompt, [*self.turns, ChatTurn("user", user_text)], sampling.max_tokens)
        except EngineError as exc:  # too long for the context, or the model's chat template refused it
            if self.state == "input":
                self.query_one("#prompt-input", Input).value = user_text  # nothing typed is lost
            self.app.push_screen(ErrorScreen("The prompt could not be prepared", str(exc)))
            return
        notice = self.query_one("#notice", Static)
        if fitted.dropped_turns:
            notice.update(
                f"Context full: the {fitted.dropped_turns} oldest turn(s) were left out of this prompt "
                f"({fitted.n_tokens} of {engine.n_ctx} tokens used)."
            )
            notice.display = True
        else:
            notice.display = False
        self._job_counter += 1
        self.job = GenerationJob(
            id=self._job_counter,
            user_text=user_text,
            history=list(self.turns),
            fitted=fitted,
            seeds=self._seeds_for_next_job(),
        )
        for panel in self.panels:
            panel.reset("waiting…")
        self.panels[0].reset("thinking…")
        self.state = "generating"
        self.query_one("#prompt-input", Input).disabled = True
        self._show_pending(user_text)
        self.query_one("#judge-bar", JudgeBar).update(f"generating for: {user_text[:80]} · escape stops")
        self.run_generation(self.job)

    def _seeds_for_next_job(self) -> list[int]:
        """Fresh random seeds, or, with a base seed in the settings, a reproducible sequence."""
        n = len(self.panels)
        base = self.app.settings.seed
        if base is None:
            return [new_seed() for _ in range(n)]
        return [base + (self._job_counter - 1) * n + slot for slot in range(n)]

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def run_generation(self, job: GenerationJob) -> None:
        worker = get_current_worker()
        engine: ChatEngine = self.app.engine
        sampling = self.app.settings.sampling
        results: list[Generation] = []
        try:
            for slot, seed in enumerate(job.seeds):
                pieces: list[str] = []

                def on_token(piece: str, slot: int = slot, pieces: list[str] = pieces) -> None:
                    pieces.append(piece)
                    self.post_message(CandidateToken(job.id, slot, "".join(pieces)))

                gen = engine.generate(
                    job.fitted.text, sampling, seed, on_token=on_token, should_stop=lambda: worker.is_cancelled
                )
                if worker.is_cancelled:
                    return
                results.append(gen)
        except Exception as exc:  # noqa: BLE001 - any engine failure becomes an error panel
            self.post_message(GenerationFailed(job.id, f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(CandidatesFinished(job.id, results))

    def on_candidate_token(self, message: CandidateToken) -> None:
        if self.job and message.job_id == self.job.id and self.state == "generating":
            self.panels[message.slot].show_text(message.text_so_far)

    def on_generation_failed(self, message: GenerationFailed) -> None:
        if self.job and message.job_id == self.job.id:
            self._back_to_input()
            self.app.push_screen(ErrorScreen("Generation failed", message.error))

    def on_candidates_finished(self, message: CandidatesFinished) -> None:
        job = self.job
        if job is None or message.job_id != job.id or self.state != "generating":
            return
        engine: ChatEngine = self.app.engine
        store = self.app.store
        job.generations = message.generations
        job.prompt_id = store.add_prompt(
            self.session_id, job.user_text, [{"role": t.role, "content": t.content} for t in job.history]
        )
        for slot, gen in enumerate(message.generations):
            job.candidate_ids.append(
                store.add_candidate(
                    job.prompt_id, slot, gen.text, job.fitted.text, engine.identity.model_id,
                    engine.identity.sha256, gen.sampling.to_dict(), gen.seed, adapter=self.app.active_adapter,
                    finish_reason=gen.finish_reason, n_tokens=gen.n_tokens, duration_s=round(gen.duration_s, 3),
                )
            )
            self.panels[slot].finish(gen.text, f"seed {gen.seed} · {gen.n_tokens} tok · {gen.duration_s:.1f} s")
        self.state = "judging"
        bar = self.query_one("#judge-bar", JudgeBar)
        bar.update(JUDGE_HINT)
        bar.focus()

    def action_cancel_generation(self) -> None:
        if self.state == "generating":
            self.workers.cancel_group(self, "generate")
            question = self.job.user_text if self.job else ""
            self.job = None
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
            if self.state == "saving":  # the verdict is not stored yet: moving on waits for it
                return
            self._clear_pending()
            self._back_to_input()
            return
        if self.state != "judging" or self.job is None:
            return
        job = self.job
        if action in ("highlight_prev", "highlight_next"):
            current = next(i for i, p in enumerate(self.panels) if p.highlighted)
            step = -1 if action == "highlight_prev" else 1
            for i, panel in enumerate(self.panels):
                panel.highlighted = i == (current + step) % len(self.panels)
        elif action == "regenerate":
            self.start_generation(job.user_text)
        elif action == "edit":
            self._edit_reply(job)
        elif action in ("a", "b"):
            picked = 0 if action == "a" else 1
            self._record(job, Verdict(action), chosen=picked, rejected=1 - picked, reply=job.generations[picked].text)
        elif action == "tie":
            # No pair is made; the conversation goes on with the highlighted reply (◀ ▶ choose; A by default).
            picked = next(i for i, p in enumerate(self.panels) if p.highlighted)
            self._record(job, Verdict.TIE, reply=job.generations[picked].text)
            self.notify(f"Tie recorded (no training pair). The conversation continues with "
                        f"{self.panels[picked].letter}'s reply.")
        elif action == "both_bad":
            self._record(job, Verdict.BOTH_BAD)
            self.query_one("#judge-bar", JudgeBar).update(
                "Both bad, recorded. r regenerate · e write a better one · i move on (no reply kept)"
            )

    _busy_shown = False  # the "database busy" notice is up

    def _record(self, job: GenerationJob, verdict: Verdict, chosen: int | None = None, rejected: int | None = None,
                edited_text: str | None = None, reply: str | None = None) -> None:
        """Store the verdict and, when `reply` continues the conversation, the user's turn and that reply,
        in one transaction (a kill can never keep the judgement without its turns); then go on with it.

        A busy database (another program writing) never loses the judgement: it is kept and retried in a
        worker until stored, the screen says so, and it moves on once the judgement is saved.
        """
        turns = (("user", job.user_text), ("assistant", reply.strip())) if reply is not None else ()
        save = partial(
            self.app.store.record_judgement,
            job.prompt_id,
            verdict,
            chosen_candidate_id=job.candidate_ids[chosen] if chosen is not None else None,
            rejected_candidate_id=job.candidate_ids[rejected] if rejected is not None else None,
            edited_text=edited_text,
            source="tui",
            adapter=self.app.active_adapter,
            turns=turns,
        )
        job.judged = True
        self.state = "saving"  # judge keys wait until this verdict is stored
        try:
            # A short wait on the UI thread; a longer one would freeze the screen.
            with self.app.store.waiting_at_most(FIRST_SAVE_WAIT_S):
                save()
        except StoreBusyError:
            self._saving_notice(True)
            self._save_when_free(job, save, reply)
            return
        except (StoreError, ValueError) as exc:
            self._judgement_failed(job, str(exc))
            return
        self._judgement_saved(job, reply)

    @work(thread=True, group="save-judgement", exit_on_error=False)
    def _save_when_free(self, job: GenerationJob, save: Callable[[], int], reply: str | None) -> None:
        worker = get_current_worker()
        while not worker.is_cancelled:
            try:
                with self.app.store.waiting_at_most(SAVE_RETRY_WAIT_S):
                    save()
            except StoreBusyError:
                continue  # still busy: the judgement stays kept, the notice stays up
            except (StoreError, ValueError) as exc:
                self.app.call_from_thread(self._judgement_failed, job, str(exc))
                return
            self.app.call_from_thread(self._judgement_saved, job, reply)
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

    def _judgement_saved(self, job: GenerationJob, reply: str | None) -> None:
        if self._busy_shown:
            self._saving_notice(False)
            self.notify("The database is free again: your judgement is saved.")
        if self.job is not job:  # the screen moved on while it waited (a new session): nothing to continue
            self._update_counter()
            return
        self.state = "judging"
        self._update_counter()
        if reply is not None:
            self._continue_with(job, reply)

    def _judgement_failed(self, job: GenerationJob, error: str) -> None:
        self._saving_notice(False)
        self.state = "judging"  # the verdict was not stored: the same keys try again
        job.judged = False
        self.query_one("#judge-bar", JudgeBar).update(JUDGE_HINT)
        self.app.push_screen(ErrorScreen("The judgement was not saved", error))

    def _edit_reply(self, job: GenerationJob) -> None:
        base = next(i for i, p in enumerate(self.panels) if p.highlighted)
        letter = self.panels[base].letter

        def save(text: str | None) -> None:
            if text is None or self.job is not job:
                return
            completion = self.app.engine.prompt_format.as_completion(text)
            others = [i for i in range(len(job.candidate_ids)) if i != base]
            self._record(job, Verdict.EDITED, chosen=base, rejected=others[0] if others else None,
                         edited_text=completion, reply=completion)

        self.app.push_screen(
            TextEditScreen(
                f"Write the better reply (starting from {letter})",
                job.generations[base].text.strip(),
                "Your text is stored as a demonstration and becomes the chosen side.",
            ),
            save,
        )

    def _continue_with(self, job: GenerationJob, reply: str) -> None:
        """The chosen reply (stored as the assistant turn with the judgement) continues the conversation."""
        self.turns += [ChatTurn("user", job.user_text), ChatTurn("assistant", reply.strip())]
        self._show_exchange(job.user_text, reply.strip())
        self.job = None
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
        self.query_one("#judge-bar", JudgeBar).update("type a prompt below · F3 next bank prompt · F2 system prompt")
        prompt_input = self.query_one("#prompt-input", Input)
        prompt_input.disabled = False
        prompt_input.focus()

    def _update_counter(self) -> None:
        pairs = self.app.store.count_pairs(session_id=self.session_id)
        bank = f" · bank: {self.feed.label}" if self.feed else ""
        bank += " · bank mode on (F4)" if self.bank_mode else ""
        self.query_one("#counter", Static).update(f"pairs this session: {pairs}{bank}")

    # --- session, system prompt, prompt bank (also reachable from the command palette) ---

    def edit_system_prompt(self) -> None:
        def save(text: str | None) -> None:
            if text is not None:
                self.app.store.update_system_prompt(self.session_id, text.strip())
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
        self.app.store.update_system_prompt(self.session_id, text)
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
        self.session_id = self.app.store.create_session(self.system_prompt)
        self.turns = []
        self.job = None
        self.query_one("#conversation", VerticalScroll).remove_children()
        for panel in self.panels:
            panel.reset("")
        self._update_counter()
        self._back_to_input()
        self.notify(f"New session {self.session_id}.")
