"""The judging panel: focused once the candidates are in; its keys record the verdict.

One bar for every number of candidates, in the mode that number calls for (``verdict_mode``):

- ``label`` (one candidate, a plain chat): ``+`` good, ``-`` bad;
- ``pair`` (two): ``1`` / ``2`` the better one, ``t`` tie, ``x`` both bad;
- ``rank`` (three or four): the candidates' numbers best first, backspace undoes, enter commits (those left
  out tie last), ``x`` all bad.

In every mode ``r`` regenerates, ``e`` edits the highlighted reply (◀ ▶ pick it), ``a`` rates it on attributes
and ``i`` goes back to the input. Keys a mode does not use are off (and out of the footer). The bar posts
messages; what they mean for the store is the screen's business (the chat screen, the labelling queue).
"""

from __future__ import annotations

from typing import Literal

from textual.binding import Binding
from textual.content import Content
from textual.message import Message
from textual.widgets import Static

from studio.tui.widgets.ranking_input import RankingOrder, letter

VerdictMode = Literal["label", "pair", "rank"]

MAX_RANKED = 4  # the studio shows at most four candidates (number keys 1–4)

# The verdict keys each mode takes; the rest of ``judge(...)``'s actions work in every mode.
_MODE_ACTIONS: dict[VerdictMode, frozenset[str]] = {
    "label": frozenset({"good", "bad"}),
    "pair": frozenset({"a", "b", "tie", "both_bad"}),
    "rank": frozenset({"all_bad"}),
}
_EVERY_MODE = frozenset({"regenerate", "edit", "rate", "highlight_prev", "highlight_next", "input"})
_VERDICT_ACTIONS = frozenset().union(*_MODE_ACTIONS.values())


def verdict_mode(n_candidates: int) -> VerdictMode:
    """How ``n_candidates`` candidates are judged: thumbs on one, a preference of two, a ranking of more."""
    if n_candidates <= 1:
        return "label"
    return "pair" if n_candidates == 2 else "rank"


def judge_hint(mode: VerdictMode, n_candidates: int = 2) -> str:
    """The keys of a mode, as the bar shows them while a round is judged."""
    if mode == "label":
        return "+ good · - bad · e correct it · r regenerate · a rate · i input"
    if mode == "pair":
        return "1 A better · 2 B better · t tie · x both bad · r regenerate · e edit (◀ ▶ pick) · a rate · i input"
    return (f"rank: press 1–{n_candidates} best first (backspace undoes, enter commits; the rest tie last) · "
            "x all bad · r regenerate · e edit (◀ ▶ pick) · a rate · i input")


class JudgeBar(Static, can_focus=True):
    """Key presses here become messages for the screen: ``Action`` for a verdict or a command,
    ``RankingChanged`` as a ranking is typed and ``RankingCommitted`` when enter commits it."""

    BINDINGS = [
        # two candidates
        Binding("1", "judge('a')", "A better"),
        Binding("2", "judge('b')", "B better"),
        Binding("t", "judge('tie')", "Tie"),
        Binding("x", "judge('both_bad')", "Both bad"),
        # one candidate
        Binding("plus", "judge('good')", "Good"),
        Binding("minus", "judge('bad')", "Bad"),
        # three or four: a ranking
        *(Binding(str(slot + 1), f"rank({slot})", f"Rank {letter(slot)}", show=False) for slot in range(MAX_RANKED)),
        Binding("backspace", "unrank", "Undo"),
        Binding("enter", "commit_ranking", "Commit"),
        Binding("x", "judge('all_bad')", "All bad"),
        # every mode
        Binding("r", "judge('regenerate')", "Regenerate"),
        Binding("e", "judge('edit')", "Edit"),
        Binding("a", "judge('rate')", "Rate"),
        Binding("left", "judge('highlight_prev')", "◀", show=False),
        Binding("right", "judge('highlight_next')", "▶", show=False),
        Binding("i", "judge('input')", "Input"),
    ]

    def __init__(self, content: str = "", **kwargs) -> None:
        # The bar quotes the user's prompt ("generating for: …"): never parse it as markup.
        kwargs.setdefault("markup", False)
        super().__init__(content, **kwargs)
        self.mode: VerdictMode = "pair"
        self.ranking = RankingOrder(2)

    class Action(Message):
        def __init__(self, action: str) -> None:
            super().__init__()
            self.action = action

    class RankingChanged(Message):
        """The ranking typed so far changed (a number pressed, or backspace): slots best first."""

        def __init__(self, order: tuple[int, ...]) -> None:
            super().__init__()
            self.order = order

    class RankingCommitted(Message):
        """Enter: the ranking typed (slots best first; empty when nothing was pressed yet)."""

        def __init__(self, order: tuple[int, ...]) -> None:
            super().__init__()
            self.order = order

    def set_candidates(self, n_candidates: int) -> None:
        """Judge ``n_candidates`` from now on (the mode follows); any ranking typed is dropped."""
        self.mode = verdict_mode(n_candidates)
        self.ranking.clear(n_candidates)
        self.refresh_bindings()

    def clear_ranking(self) -> None:
        if self.ranking.slots:
            self.ranking.clear()
            self.post_message(self.RankingChanged(()))

    @property
    def hint(self) -> str:
        return judge_hint(self.mode, self.ranking.size)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "judge" and parameters and parameters[0] in _VERDICT_ACTIONS:
            return parameters[0] in _MODE_ACTIONS[self.mode]
        if action == "rank":
            return self.mode == "rank" and isinstance(parameters[0], int) and parameters[0] < self.ranking.size
        if action in ("unrank", "commit_ranking"):
            return self.mode == "rank"
        return True

    def action_judge(self, action: str) -> None:
        if action not in _VERDICT_ACTIONS and action not in _EVERY_MODE:
            return
        self.post_message(self.Action(action))

    def action_rank(self, slot: int) -> None:
        if self.ranking.press(slot):
            self._show_ranking()

    def action_unrank(self) -> None:
        if self.ranking.undo() is not None:
            self._show_ranking()

    def action_commit_ranking(self) -> None:
        self.post_message(self.RankingCommitted(tuple(self.ranking.slots)))

    def _show_ranking(self) -> None:
        order = tuple(self.ranking.slots)
        self.update(Content(f"ranking: {self.ranking.describe()} · enter commits · backspace undoes") if order else self.hint)
        self.post_message(self.RankingChanged(order))
