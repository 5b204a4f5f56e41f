"""One candidate reply, streaming in, with its seed and timing once finished; its place while a ranking is
typed, its safety badge once the checkers have read it, its reward-model score ("A · reward 1.23 · suggested" on
the model's pick), and the rating row when it is being rated."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.content import Content
from textual.reactive import reactive
from textual.widgets import Static

from studio.tui.widgets.ranking_input import letter, ordinal
from studio.tui.widgets.rating_row import RatingRow


class CandidatePanel(VerticalScroll):
    """Shows candidate ``A``, ``B``, … The highlighted panel is the one ``e`` edits and ``a`` rates."""

    DEFAULT_CLASSES = "candidate"
    highlighted: reactive[bool] = reactive(False)

    def __init__(self, slot: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.slot = slot
        self.letter = letter(slot)
        self.text = ""
        self.detail = ""  # seed, tokens and time once finished
        self.safety_badge = ""  # "safe", "flagged: offensive, S10", "checking…" (plain text), or "" before
        self.safety_flagged = False
        self.place: int | None = None  # its place in a ranking being typed
        self.reward: float | None = None  # the reward model's score, once scored
        self.suggested = False  # the reward model's pick
        self.border_title = f"{self.letter}"

    def compose(self) -> ComposeResult:
        yield Static("", id=f"candidate-text-{self.slot}", classes="candidate-text", markup=False)

    def reset(self, waiting: str = "…") -> None:
        self.text = ""
        self.detail, self.safety_badge, self.safety_flagged = "", "", False
        self.reward, self.suggested = None, False
        self.border_subtitle = ""
        self.show_place(None)
        self.close_rating()
        self.query_one(f"#candidate-text-{self.slot}", Static).update(waiting)

    def show_place(self, place: int | None) -> None:
        """The place a ranking being typed gives it ("A · 1st"), or just its letter."""
        self.place = place
        self._show_title()

    def show_reward(self, score: float | None, suggested: bool = False) -> None:
        """The reward model's score ("A · reward 1.23") and, on its pick, "suggested"."""
        self.reward, self.suggested = score, suggested
        self._show_title()

    def _show_title(self) -> None:
        parts = [self.letter]
        if self.place is not None:
            parts.append(ordinal(self.place))
        if self.reward is not None:
            parts.append(f"reward {round(self.reward, 2) + 0.0:.2f}")  # + 0.0: never "-0.00"
        if self.suggested:
            parts.append("suggested")
        self.border_title = " · ".join(parts)

    def show_safety(self, badge: str, flagged: bool = False) -> None:
        """The checkers' badge before the details ("flagged: offensive · seed 7 · 24 tok · 1.2 s"), flagged in red:
        first, so a narrow panel cuts the details, not the badge."""
        self.safety_badge, self.safety_flagged = badge, flagged
        self._show_subtitle()

    def _show_subtitle(self) -> None:
        if not self.safety_badge:
            self.border_subtitle = self.detail
            return
        # Content, not markup: a word list's category names are the user's text.
        badge = (self.safety_badge, "bold red" if self.safety_flagged else "")
        self.border_subtitle = Content.assemble(badge, *((" · ", self.detail) if self.detail else ()))

    @property
    def rating_row(self) -> RatingRow | None:
        rows = self.query(RatingRow)
        return rows.first() if rows else None

    def open_rating(self, attributes: tuple[str, ...]) -> RatingRow:
        """The rating row under this reply (one at a time), focused by the caller."""
        self.close_rating()
        row = RatingRow(self.slot, attributes, id=f"rating-{self.slot}")
        self.mount(row)
        return row

    def close_rating(self) -> None:
        for row in self.query(RatingRow):
            row.remove()

    def show_text(self, text: str) -> None:
        self.text = text
        self.query_one(f"#candidate-text-{self.slot}", Static).update(text.strip() or "…")
        self.scroll_end(animate=False)

    def finish(self, text: str, detail: str) -> None:
        self.show_text(text)
        if not text.strip():
            self.query_one(f"#candidate-text-{self.slot}", Static).update("(empty reply)")
        self.detail = detail
        self._show_subtitle()

    def watch_highlighted(self, value: bool) -> None:
        self.set_class(value, "highlighted")
