"""Records an import leaves out and reports, grouped by why, with where the first of each group were.

Two reasons to leave a record out: it is well-formed but cannot become a pair (chosen equal to rejected; an
HH transcript whose chosen and rejected differ before the final reply, as 5 of the 2,312 in Anthropic HH's
test file do), which an import always skips and reports; or it is malformed (bad JSON, missing fields, wrong
types), which refuses the whole file unless the user asked to skip bad records (`--skip-bad`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SHOWN = 10  # places named per group; the count says how many more


@dataclass(frozen=True)
class SkipGroup:
    """Records left out for one reason: how many, and where the first `SHOWN` were."""

    reason: str
    count: int
    places: tuple[str, ...]
    malformed: bool  # skipped only because the user asked (--skip-bad)

    def describe(self) -> str:
        more = ", …" if self.count > len(self.places) else ""
        return f"{self.count} with {self.reason} ({', '.join(self.places)}{more})"


@dataclass
class SkippedRecords:
    """Collects skipped records while a file is read."""

    counts: dict[str, int] = field(default_factory=dict)
    places: dict[str, list[str]] = field(default_factory=dict)
    malformed: set[str] = field(default_factory=set)
    order: list[str] = field(default_factory=list)  # every place, in file order, up to SHOWN
    # A record read twice (the first record is read once to detect the schema, then again with its chunk)
    # is left out once.
    seen: set[str] = field(default_factory=set)

    def add(self, reason: str, where: str, malformed: bool = False) -> None:
        if where in self.seen:
            return
        self.seen.add(where)
        self.counts[reason] = self.counts.get(reason, 0) + 1
        shown = self.places.setdefault(reason, [])
        if len(shown) < SHOWN:
            shown.append(where)
        if len(self.order) < SHOWN:
            self.order.append(where)
        if malformed:
            self.malformed.add(reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def groups(self) -> tuple[SkipGroup, ...]:
        return tuple(SkipGroup(reason, count, tuple(self.places[reason]), reason in self.malformed)
                     for reason, count in self.counts.items())


def describe_skips(groups: tuple[SkipGroup, ...]) -> str:
    """"skipped 5 with … (line 3, …)", "skipped 6: 1 with … (line 2); 5 with … (line 3, …)", or "" for none."""
    total = sum(group.count for group in groups)
    if not total:
        return ""
    if len(groups) == 1:
        return f"skipped {groups[0].describe()}"
    return f"skipped {total}: " + "; ".join(group.describe() for group in groups)
