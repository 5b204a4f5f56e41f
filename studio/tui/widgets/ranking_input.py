"""A ranking being typed: candidates' numbers pressed best first, shown as "1st", "2nd", … as they come.

Headless state (no Textual), so every screen that ranks (the chat screen, the labelling queue) keeps the same
rules: a number names a candidate once, backspace takes back the last one, and a partial ranking is complete
enough to commit (the candidates left out share the last place, as the store keeps them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

_ORDINALS = ("1st", "2nd", "3rd")


def ordinal(place: int) -> str:
    """A place counted from 0 in words: 0 → "1st", 1 → "2nd", 3 → "4th"."""
    return _ORDINALS[place] if place < len(_ORDINALS) else f"{place + 1}th"


def letter(slot: int) -> str:
    """The candidate's name on its panel: slot 0 → "A"."""
    return chr(ord("A") + slot)


@dataclass
class RankingOrder:
    """The slots ranked so far, best first, out of ``size`` candidates."""

    size: int
    slots: list[int] = field(default_factory=list)

    def press(self, slot: int) -> bool:
        """Rank ``slot`` next; False (nothing changes) for a slot already ranked or not on screen."""
        if not 0 <= slot < self.size or slot in self.slots:
            return False
        self.slots.append(slot)
        return True

    def undo(self) -> int | None:
        """Take back the last slot ranked (None when nothing is ranked)."""
        return self.slots.pop() if self.slots else None

    def clear(self, size: int | None = None) -> None:
        self.slots.clear()
        if size is not None:
            self.size = size

    def place(self, slot: int) -> int | None:
        """``slot``'s place so far (0 = best), or None while unranked."""
        return self.slots.index(slot) if slot in self.slots else None

    @property
    def unranked(self) -> list[int]:
        return [slot for slot in range(self.size) if slot not in self.slots]

    def describe(self) -> str:
        """The ranking in words, as the judge bar shows it: "C > A > (B, D tie last)"."""
        if not self.slots:
            return "nothing ranked yet"
        ranked = " > ".join(letter(slot) for slot in self.slots)
        rest = self.unranked
        if len(rest) == 1:
            return f"{ranked} > {letter(rest[0])}"
        if rest:
            return f"{ranked} > ({', '.join(letter(slot) for slot in rest)} tie last)"
        return ranked
