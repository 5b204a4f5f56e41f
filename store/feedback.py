"""Every kind of feedback beyond A/B: rankings, good/bad labels, attribute ratings and demonstrations.

A mixin of `Store` (like `RunLog`). Each call is one committed transaction that checks everything first
(a known candidate of that prompt, a ranking's ids unique, ratings 0–4) and writes nothing when a check
fails, with a message that says which value is wrong. What each kind yields for training (pairs, unpaired
labels, demonstrations, ratings) is read out by store/feedback_yield.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import sqlite_utils

from store.judgement_rows import (
    candidate_prompt,
    check_role,
    check_source,
    insert_judgement,
    prompt_candidates,
)
from store.records import DemonstrationRecord, RankingRecord, RatingRecord, Verdict
from store.transactions import StoreLock, serialized, utc_now, write_transaction

RATING_MIN, RATING_MAX = 0, 4
MAX_CANDIDATES = 64  # far above the studio's 4; a bound so a stray list cannot make a huge ranking


def check_ratings(ratings: Mapping[str, int]) -> dict[str, int]:
    """The ratings as {attribute: value}, or ValueError naming the attribute whose name or value is wrong."""
    if not ratings:
        raise ValueError("no ratings given: pass at least one {attribute: value}")
    checked: dict[str, int] = {}
    for attribute, value in ratings.items():
        if not isinstance(attribute, str) or not attribute.strip():
            raise ValueError(f"a rating's attribute needs a name, got {attribute!r}")
        if isinstance(value, bool) or not isinstance(value, int) or not RATING_MIN <= value <= RATING_MAX:
            raise ValueError(f"rating {attribute!r} must be a whole number from {RATING_MIN} to {RATING_MAX}, "
                             f"got {value!r}")
        checked[attribute.strip()] = value
    return checked


def ranking_places(order: Sequence[int], candidates: Sequence[int]) -> dict[int, int]:
    """Each candidate's place in a ranking given best-first: 0, 1, … for the ranked ones, and one shared
    last place for those left out (a partial ranking). ValueError for repeated or foreign ids."""
    if len(set(order)) != len(order):
        repeated = sorted({c for c in order if list(order).count(c) > 1})
        raise ValueError(f"a ranking names each candidate once; repeated: {', '.join(map(str, repeated))}")
    foreign = [c for c in order if c not in set(candidates)]
    if foreign:
        raise ValueError(f"candidate(s) {', '.join(map(str, foreign))} are not candidates of this prompt "
                         f"(its candidates: {', '.join(map(str, candidates))})")
    places = {candidate_id: place for place, candidate_id in enumerate(order)}
    for candidate_id in candidates:
        places.setdefault(candidate_id, len(order))
    return places


class Feedback:
    """The feedback methods of `Store`: rankings, labels, ratings and demonstrations, and their records."""

    db: sqlite_utils.Database
    path: Path
    lock: StoreLock

    # Writing

    @serialized
    def record_ranking(self, prompt_id: int, order: Sequence[int], all_bad: bool = False, source: str = "tui",
                       adapter: str | None = None, turns: Sequence[tuple[str, str]] = ()) -> int:
        """Record a ranking of a prompt's candidates (K ≥ 2) and return its judgement id.

        `order` lists candidate ids best first; candidates it leaves out share the last place (a partial
        ranking needs at least one id). `all_bad=True` with an empty `order` says every candidate is bad.
        `turns` are written with it, as `record_judgement`'s are.
        """
        order = list(order)
        for role, _ in turns:
            check_role(role)
        check_source(source)
        if all_bad and order:
            raise ValueError("an all-bad ranking orders nothing: pass an empty order with all_bad=True")
        if not all_bad and not order:
            raise ValueError("a ranking needs at least the best candidate (or all_bad=True)")
        with write_transaction(self.db):
            candidates = prompt_candidates(self.db, prompt_id)
            if len(candidates) < 2:
                raise ValueError(f"prompt {prompt_id} has {len(candidates)} candidate(s); a ranking needs 2 or more")
            if len(candidates) > MAX_CANDIDATES:
                raise ValueError(f"prompt {prompt_id} has {len(candidates)} candidates; at most {MAX_CANDIDATES} "
                                 "are ranked")
            places = ranking_places(order, candidates)
            verdict = Verdict.ALL_BAD if all_bad else Verdict.RANKED
            judgement_id = insert_judgement(self.db, prompt_id, verdict, order[0] if order else None, None, None,
                                            source, adapter, turns)
            if not all_bad:
                self.db.conn.executemany(
                    "INSERT INTO judgement_ranks (judgement_id, candidate_id, rank) VALUES (?, ?, ?)",
                    [(judgement_id, candidate_id, place) for candidate_id, place in places.items()])
            return judgement_id

    @serialized
    def record_label(self, candidate_id: int, good: bool, source: str = "tui", adapter: str | None = None,
                     turns: Sequence[tuple[str, str]] = ()) -> int:
        """Mark one candidate good (thumbs up) or bad (thumbs down); return the judgement id.

        Stored as a judgement of the candidate's prompt, verdict 'good' naming it as the chosen candidate or
        'bad' naming it as the rejected one, with `turns` written alongside.
        """
        if not isinstance(good, bool):
            raise ValueError(f"a label is good (True) or bad (False), got {good!r}")
        for role, _ in turns:
            check_role(role)
        check_source(source)
        with write_transaction(self.db):
            prompt_id = candidate_prompt(self.db, candidate_id)
            if good:
                return insert_judgement(self.db, prompt_id, Verdict.GOOD, candidate_id, None, None, source, adapter,
                                        turns)
            return insert_judgement(self.db, prompt_id, Verdict.BAD, None, candidate_id, None, source, adapter, turns)

    @serialized
    def record_ratings(self, candidate_id: int, ratings: Mapping[str, int], judgement_id: int | None = None,
                       source: str = "tui") -> list[int]:
        """Rate one candidate on attributes (0–4 each), alone or with a judgement of its prompt; return the
        rating ids. A later rating of the same attribute supersedes an earlier one (see `ratings`)."""
        checked = check_ratings(ratings)
        check_source(source)
        with write_transaction(self.db):
            prompt_id = candidate_prompt(self.db, candidate_id)
            if judgement_id is not None:
                row = self.db.execute("SELECT prompt_id FROM judgements WHERE id = ?", [judgement_id]).fetchone()
                if row is None or row[0] != prompt_id:
                    raise ValueError(f"judgement {judgement_id} is not a judgement of candidate {candidate_id}'s "
                                     f"prompt {prompt_id}")
            now = utc_now()
            return [self.db.execute(
                "INSERT INTO candidate_ratings (candidate_id, judgement_id, attribute, value, source, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", [candidate_id, judgement_id, attribute, value, source, now]).lastrowid
                for attribute, value in checked.items()]

    @serialized
    def add_demonstration(self, prompt_id: int, text: str, based_on_candidate_id: int | None = None,
                          source: str = "tui") -> int:
        """Store a reply the user wrote for a prompt (in its context), or a correction of one of its
        candidates (`based_on_candidate_id`); return its id. Stored as given (see `record_judgement`)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a demonstration needs the reply's text, and it is empty")
        check_source(source)
        with write_transaction(self.db):
            candidates = prompt_candidates(self.db, prompt_id)
            if based_on_candidate_id is not None and based_on_candidate_id not in candidates:
                raise ValueError(f"candidate {based_on_candidate_id} does not belong to prompt {prompt_id}")
            return self.db.execute(
                "INSERT INTO demonstrations (prompt_id, text, based_on_candidate_id, source, created_at) "
                "VALUES (?, ?, ?, ?, ?)", [prompt_id, text, based_on_candidate_id, source, utc_now()]).lastrowid

    # Reading

    @serialized
    def rankings(self, prompt_id: int | None = None, session_id: int | None = None) -> list[RankingRecord]:
        """Ranking judgements (all-bad ones included) in the order made, optionally of one prompt / session."""
        rows = self.db.execute(
            "SELECT j.id, j.prompt_id, j.verdict, j.source, j.created_at FROM judgements j "
            "JOIN prompts p ON p.id = j.prompt_id WHERE j.verdict IN (?, ?) AND (? IS NULL OR j.prompt_id = ?) "
            "AND (? IS NULL OR p.session_id = ?) ORDER BY j.id",
            [Verdict.RANKED.value, Verdict.ALL_BAD.value, prompt_id, prompt_id, session_id, session_id]).fetchall()
        places: dict[int, list[tuple[int, int]]] = {}
        for judgement_id, candidate_id, place in self.db.execute(
                "SELECT r.judgement_id, r.candidate_id, r.rank FROM judgement_ranks r JOIN judgements j "
                "ON j.id = r.judgement_id WHERE (? IS NULL OR j.prompt_id = ?) ORDER BY r.judgement_id, r.rank, "
                "r.candidate_id", [prompt_id, prompt_id]):
            places.setdefault(judgement_id, []).append((candidate_id, place))
        return [RankingRecord(judgement_id=row[0], prompt_id=row[1], places=tuple(places.get(row[0], ())),
                              all_bad=row[2] == Verdict.ALL_BAD.value, source=row[3], created_at=row[4])
                for row in rows]

    @serialized
    def ratings(self, candidate_id: int | None = None, latest: bool = True) -> list[RatingRecord]:
        """Attribute ratings in the order given (of one candidate, when named); with `latest`, only the
        newest rating of each (candidate, attribute)."""
        newest = ("AND id IN (SELECT MAX(id) FROM candidate_ratings GROUP BY candidate_id, attribute)"
                  if latest else "")
        rows = self.db.execute(
            "SELECT id, candidate_id, judgement_id, attribute, value, source, created_at FROM candidate_ratings "
            f"WHERE (? IS NULL OR candidate_id = ?) {newest} ORDER BY id", [candidate_id, candidate_id])
        return [RatingRecord(*row) for row in rows]

    @serialized
    def demonstrations(self, prompt_id: int | None = None) -> list[DemonstrationRecord]:
        """Demonstrations stored with `add_demonstration`, in the order written (edited judgements yield
        more: see store/feedback_yield.py)."""
        rows = self.db.execute(
            "SELECT id, prompt_id, text, based_on_candidate_id, source, created_at FROM demonstrations "
            "WHERE (? IS NULL OR prompt_id = ?) ORDER BY id", [prompt_id, prompt_id])
        return [DemonstrationRecord(*row) for row in rows]
