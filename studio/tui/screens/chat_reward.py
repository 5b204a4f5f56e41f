"""The chat's reward model: each candidate's score as it finishes, the model's pick marked "suggested", best-of-N,
and the model's live agreement with the user in the status line.

A mixin of ``ChatScreen`` (kept here so the chat screen stays one job): it opens the chosen reward run's scorer
in a worker (``reward_run`` in the config, ``--reward-run``, or the palette's "Use reward model…"), hands it each
candidate as the generating thread finishes it (``studio/reward/candidate_scoring.py`` scores on its own thread,
never delaying the next candidate) and shows the scores as they arrive. The user still decides: a suggestion
records nothing. A scorer that fails or cannot open is a notice, and the chat goes on unscored.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from textual import work

from store.errors import StoreError
from studio.inference.batched_generation import FinishedCallback
from studio.reward.candidate_scoring import CandidateScoring, RoundScores, finished_reward_runs
from studio.reward.scorer import RewardScorerError, open_reward_scorer
from studio.tui.messages import RewardModelFailed, RewardModelReady, RewardScored, RewardScoringFailed
from studio.tui.screens.reward_picker import RewardPickerScreen, RewardRunOption, reward_run_options

if TYPE_CHECKING:
    from studio.judging import Round
    from studio.tui.widgets.candidate_panel import CandidatePanel

BEST_FIRST_WAIT_S = 30.0  # best-of-N waits this long for the last scores, then shows the candidates unordered


class RewardChat:
    """The reward-model part of the chat screen (mixed into ``ChatScreen``)."""

    reward: CandidateScoring | None = None  # the scorer in use, once open
    reward_wanted: int | None = None  # the run chosen (open, opening, or failed to open)

    # --- choosing and opening ---

    def _reward_engine_ready(self) -> None:
        """The engine is (newly) serving: open the chosen reward run for it (a model switch reopens it, and a
        reward model of another base is refused there with a notice)."""
        if self.reward is not None:
            # Another model now serves: the scorer's context lives on the old one, which the app closes next.
            scoring, self.reward = self.reward, None
            scoring.close()
        if self.reward_wanted is None:
            self.reward_wanted = self.app.settings.reward_run
        if self.reward_wanted is not None:
            self.open_reward(self.reward_wanted)

    def choose_reward_model(self) -> None:
        """The palette's "Use reward model…": none, or one of the finished reward runs."""
        options = reward_run_options(finished_reward_runs(self.app.store), self.reward_wanted)
        if len(options) == 1:
            self.notify("No finished reward run yet: train one with `prefstudio train --method reward` (or F5).",
                        severity="warning", timeout=10)
            return
        self.app.push_screen(RewardPickerScreen(options), self._reward_chosen)

    def _reward_chosen(self, option: RewardRunOption | None) -> None:
        if option is None or option.run_id == self.reward_wanted:
            return
        if self.state == "generating":
            self.notify("Change the reward model between prompts: this round is being scored.", severity="warning")
            return
        self.use_reward_run(option.run_id)

    def use_reward_run(self, run_id: int | None) -> None:
        """Score with reward run ``run_id`` from the next round on (None: score nothing)."""
        self.reward_wanted = run_id
        self.app.settings = replace(self.app.settings, reward_run=run_id)
        if run_id is None:
            self._set_reward(None)
            self.notify("No reward model: candidates are not scored.")
        elif self.app.engine is not None:
            self.open_reward(run_id)

    @work(thread=True, exclusive=True, group="reward-open", exit_on_error=False)
    def open_reward(self, run_id: int) -> None:
        """Open the run's scorer (it may load a model: seconds) off the UI thread."""
        try:
            scorer = open_reward_scorer(self.app.store, run_id, self.app.engine,
                                        backend=self.app.settings.reward_scorer)
        except (RewardScorerError, StoreError, LookupError, ValueError, OSError) as exc:
            self.post_message(RewardModelFailed(run_id, str(exc)))
            return
        self.post_message(RewardModelReady(CandidateScoring(
            scorer, self.app.store, on_scored=lambda scores: self.post_message(RewardScored(scores)),
            on_failed=lambda error: self.post_message(RewardScoringFailed(error)),
        )))

    def on_reward_model_ready(self, message: RewardModelReady) -> None:
        scoring = message.scoring
        if scoring is not None and scoring.run_id != self.reward_wanted:
            self._close_reward(scoring)  # chosen and then replaced while it opened
            return
        self._set_reward(scoring)
        if scoring is not None:
            self.notify(f"Reward model: run {scoring.run_id} scores each candidate; its pick is marked suggested "
                        "(you still decide).")

    def on_reward_model_failed(self, message: RewardModelFailed) -> None:
        if message.run_id == self.reward_wanted:
            self._set_reward(None)
        self.notify(f"Reward model run {message.run_id} not used: {message.error}. The chat goes on without "
                    "scores.", severity="error", timeout=15)

    def _set_reward(self, scoring: CandidateScoring | None) -> None:
        old, self.reward = self.reward, scoring
        if old is not None and old is not scoring:
            self._close_reward(old)
        self._update_counter()

    @work(thread=True, group="reward-close", exit_on_error=False)
    def _close_reward(self, scoring: CandidateScoring) -> None:
        scoring.close()  # waits for a score in progress: never on the UI thread

    def on_unmount(self) -> None:
        """The chat is closing (the app quits): stop the scorer and its worker process before the store closes."""
        scoring, self.reward = self.reward, None
        if scoring is not None:
            scoring.close()

    # --- best-of-N ---

    def toggle_best_first(self) -> None:
        """Best-of-N on/off: with a reward model, the candidates in its order (best as A) once all are scored."""
        best_first = not self.app.settings.best_first
        self.app.settings = replace(self.app.settings, best_first=best_first)
        if not best_first:
            self.notify("Best-of-N off: candidates stay in the order they were generated.")
        elif self.reward_wanted is None:
            self.notify("Best-of-N on, but no reward model is chosen: ctrl+p → Use reward model… to order by score.",
                        severity="warning", timeout=10)
        else:
            self.notify(f"Best-of-N on: the {self.session.n_candidates} candidates are shown best first once the "
                        "reward model has scored them (F10 changes how many).")

    # --- a round (the generating worker calls the first three) ---

    def _reward_watch(self, round_: Round) -> CandidateScoring | None:
        """Before generating: the scorer for this round (None: none), told what the candidates answer."""
        scoring = self.reward
        if scoring is not None and scoring.failed is None:
            scoring.watch(round_, self.session.system_prompt)
            return scoring
        return None

    @staticmethod
    def _reward_on_finished(scoring: CandidateScoring | None, round_: Round) -> FinishedCallback | None:
        if scoring is None:
            return None
        return lambda slot, text: scoring.finished(round_.number, slot, text)

    def _reward_before_storing(self, scoring: CandidateScoring | None, round_: Round) -> None:
        """Best-of-N, in the generating worker: the candidates in score order before they are stored."""
        if scoring is not None and self.app.settings.best_first and len(round_.generations) > 1:
            if scoring.best_first(round_, BEST_FIRST_WAIT_S) is None and scoring.failed is None:
                self.app.call_from_thread(self.notify, "Best-of-N: the reward model did not score every candidate "
                                          "in time; they are shown as generated.", severity="warning")

    def on_reward_scored(self, message: RewardScored) -> None:
        if self.round is not None and message.scores.round_number == self.round.number:
            self._show_rewards(message.scores)

    def _show_rewards(self, scores: RoundScores | None = None) -> None:
        """Each panel's score and the pick, from the round's latest scores."""
        if scores is None:
            if self.reward is None or self.round is None:
                return
            scores = self.reward.scores(self.round.number)
            if scores is None:
                return
        panels: list[CandidatePanel] = self.panels
        pick = scores.pick
        for slot, score in enumerate(scores.scores[:len(panels)]):
            panels[slot].show_reward(score, suggested=slot == pick)

    def on_reward_scoring_failed(self, message: RewardScoringFailed) -> None:
        self.notify(f"{message.error}. The chat goes on without scores (ctrl+p → Use reward model… to try again).",
                    severity="error", timeout=15)
        if self.reward is not None and self.reward.failed is not None:
            self._set_reward(None)

    # --- the status line ---

    def _reward_status(self) -> str:
        """" · reward run 7 agrees 3/4 (75 %)" once judged rounds were scored; the run alone before."""
        if self.reward is None:
            return ""
        run_id = self.reward.run_id
        agreement = self.app.store.reward_agreement(run_id)
        if agreement.rate is None:
            return f" · reward run {run_id}"
        return f" · reward run {run_id} agrees {agreement.agreed}/{agreement.judged} ({agreement.rate:.0%})"
