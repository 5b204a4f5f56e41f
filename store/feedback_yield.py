"""What each kind of feedback yields for training: the one place these rules live.

Nothing here is stored: every yield is read out of the judgements, ranks, ratings and demonstrations on
demand, so a changed rule applies to every past judgement (and to a file upgraded from an older schema).

| feedback (verdict)         | pairs (DPO, `prefstudio pairs`)                     | unpaired labels (KTO)              | demonstrations (SFT) | ratings (SteerLM)   |
|----------------------------|-----------------------------------------------------|------------------------------------|----------------------|---------------------|
| a / b                      | the picked candidate over the other (`j<j>`)        | option: chosen good, rejected bad  | –                    | –                   |
| edited                     | the edit over each candidate whose text differs     | option: the edit good, those bad   | the edit             | –                   |
|                            | (`j<j>c<cand>`)                                     |                                    |                      |                     |
| ranked (K candidates)      | every ordered pair, a better place over a worse     | option: the best good, the last    | –                    | –                   |
|                            | (`r<j>:<better>><worse>`): K(K-1)/2 for a full      | place bad                          |                      |                     |
|                            | order; ties (a partial ranking's last place) none   |                                    |                      |                     |
| tie                        | none                                                | none                               | –                    | –                   |
| both_bad / all_bad         | none                                                | option: every candidate bad        | –                    | –                   |
| good / bad (thumbs)        | none                                                | the candidate, good or bad         | –                    | –                   |
| ratings (0–4 / attribute)  | none                                                | none                               | –                    | latest per attribute|
| demonstration (written)    | none                                                | none                               | the text             | –                   |

"option" is `unpaired_labels(..., from_judgements=True)`: off by default, because a reply that lost a
comparison is not necessarily a bad reply. Pairs and labels carry the rendered prompt the candidates were
generated from; demonstrations and ratings carry it too (None only for a prompt stored without candidates),
with the conversation as messages (system, earlier turns, the user's prompt) for conversational formats.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlite_utils

from store.pair_ids import judged_pair_id, ranked_pair_id
from store.records import PreferencePair, Verdict

PAIR_VERDICTS = (Verdict.A.value, Verdict.B.value, Verdict.EDITED.value, Verdict.RANKED.value)
_LABEL_VERDICTS = (Verdict.GOOD.value, Verdict.BAD.value)
_OPTIONAL_LABEL_VERDICTS = (Verdict.A.value, Verdict.B.value, Verdict.EDITED.value, Verdict.RANKED.value,
                            Verdict.BOTH_BAD.value, Verdict.ALL_BAD.value)

Message = dict[str, str]
T = TypeVar("T")


@dataclass(frozen=True)
class PromptContext:
    """A stored prompt as the formats need it: the rendered text the candidates saw and the conversation."""

    prompt_id: int
    session_id: int
    text: str  # the user's raw prompt
    rendered: str | None  # the exact prompt the engine evaluated (None: stored without candidates)
    messages: tuple[Message, ...]  # system (when set), the earlier turns, the user's prompt

    @property
    def prompt(self) -> str:
        """The rendered prompt, or the raw text when there is none."""
        return self.rendered if self.rendered is not None else self.text


@dataclass(frozen=True)
class UnpairedLabel:
    """One reply marked good or bad: a row of TRL's unpaired preference format (KTO)."""

    label_id: str  # "l<judgement>c<candidate>", or "l<judgement>e" for an edit; unique per label
    context: PromptContext
    completion: str
    label: bool
    verdict: str  # the judgement it came from: good / bad, or a / b / edited / ranked / both_bad / all_bad
    judgement_id: int


@dataclass(frozen=True)
class Demonstration:
    """A reply the user wrote for a prompt: a row of TRL's prompt-completion or messages format (SFT)."""

    demo_id: str  # "m<demonstration>" written, "e<judgement>" an edited judgement's edit
    context: PromptContext
    text: str
    origin: str  # "written", "corrected" (based on a candidate) or "edited" (an edited judgement)


@dataclass(frozen=True)
class RatedResponse:
    """A candidate with its latest value for each attribute it was rated on (HelpSteer-style)."""

    candidate_id: int
    context: PromptContext
    response: str
    ratings: dict[str, int]


@dataclass(frozen=True)
class RankedResponses:
    """A ranking as a raw record: the prompt's candidates in slot order and the ranking over them."""

    judgement_id: int
    context: PromptContext
    responses: tuple[str, ...]
    ranking: tuple[int, ...]  # indices into responses, best first; those left out tie last
    all_bad: bool


# The prompts and candidates behind every yield

_PROMPTS_SQL = """
SELECT p.id, p.session_id, p.text, p.history_json, s.system_prompt,
       (SELECT c.rendered_prompt FROM candidates c WHERE c.prompt_id = p.id ORDER BY c.slot, c.id LIMIT 1) AS rendered
FROM prompts p JOIN sessions s ON s.id = p.session_id
WHERE (? IS NULL OR p.session_id = ?)
"""

_CANDIDATES_SQL = """
SELECT c.id, c.prompt_id, c.slot, c.text, c.rendered_prompt
FROM candidates c JOIN prompts p ON p.id = c.prompt_id
WHERE (? IS NULL OR p.session_id = ?)
ORDER BY c.prompt_id, c.slot, c.id
"""


def _judgements_sql(n_verdicts: int) -> str:
    # One placeholder per verdict: the verdicts are parameters, never text put into the SQL.
    marks = ", ".join("?" * n_verdicts)
    return ("SELECT j.id, j.prompt_id, j.verdict, j.chosen_candidate_id, j.rejected_candidate_id, j.edited_text, "
            "j.created_at, p.session_id, p.text AS prompt_text FROM judgements j JOIN prompts p ON p.id = j.prompt_id "
            f"WHERE j.verdict IN ({marks}) AND (? IS NULL OR p.session_id = ?) ORDER BY j.id")


def _ranks_sql() -> str:
    return ("SELECT r.judgement_id, r.candidate_id, r.rank FROM judgement_ranks r JOIN judgements j "
            "ON j.id = r.judgement_id JOIN prompts p ON p.id = j.prompt_id WHERE (? IS NULL OR p.session_id = ?)")


class _Rows:
    """One session's (or the whole store's) candidates, contexts and ranks, read once per yield."""

    def __init__(self, db: sqlite_utils.Database, session_id: int | None, contexts: bool = True) -> None:
        self.db = db
        self.session_id = session_id
        self.by_id: dict[int, dict[str, Any]] = {}
        self.by_prompt: dict[int, list[dict[str, Any]]] = {}
        for row in db.query(_CANDIDATES_SQL, [session_id, session_id]):
            self.by_id[row["id"]] = row
            self.by_prompt.setdefault(row["prompt_id"], []).append(row)
        self.contexts: dict[int, PromptContext] = {}
        if contexts:
            for row in db.query(_PROMPTS_SQL, [session_id, session_id]):
                self.contexts[row["id"]] = _context(row)
        self.places: dict[int, dict[int, int]] = {}
        for judgement_id, candidate_id, place in db.execute(_ranks_sql(), [session_id, session_id]):
            self.places.setdefault(judgement_id, {})[candidate_id] = place

    def judgements(self, verdicts: tuple[str, ...]) -> list[dict[str, Any]]:
        return list(self.db.query(_judgements_sql(len(verdicts)), [*verdicts, self.session_id, self.session_id]))

    def ranked(self, judgement_id: int) -> list[tuple[dict[str, Any], int]]:
        """A ranking's candidates with their places, best first (ties in slot order)."""
        places = self.places.get(judgement_id, {})
        found = [(self.by_id[cid], place) for cid, place in places.items() if cid in self.by_id]
        return sorted(found, key=lambda item: (item[1], item[0]["slot"], item[0]["id"]))


def _context(row: dict[str, Any]) -> PromptContext:
    messages: list[Message] = [{"role": "system", "content": row["system_prompt"]}] if row["system_prompt"] else []
    messages += [{"role": m["role"], "content": m["content"]} for m in json.loads(row["history_json"] or "[]")]
    messages.append({"role": "user", "content": row["text"]})
    return PromptContext(row["id"], row["session_id"], row["text"], row["rendered"], tuple(messages))


def prompt_contexts(db: sqlite_utils.Database, session_id: int | None = None) -> list[PromptContext]:
    """Every stored prompt (one session's, or the whole store's) with its conversation, oldest first: what an
    RLOO run samples replies for (``trainers/rl_prompts.py``)."""
    rows = sorted(db.query(_PROMPTS_SQL, [session_id, session_id]), key=lambda row: row["id"])
    return [_context(row) for row in rows]


# Pairs


def ordered_pairs(ranked: list[tuple[T, int]]) -> Iterator[tuple[T, T]]:
    """Every (better, worse) of a ranking given best first as (thing, place): the InstructGPT rule, K(K-1)/2
    pairs for a full order of K; things sharing a place (a partial ranking's tied last) make none."""
    for i, (better, better_place) in enumerate(ranked):
        for worse, worse_place in ranked[i + 1:]:
            if worse_place > better_place:
                yield better, worse


def ranking_index_pairs(ranking: list[int], n_responses: int) -> list[tuple[int, int]]:
    """The (better, worse) response indices of a raw ranking (indices best first; the rest tie last)."""
    places = [(index, place) for place, index in enumerate(ranking)]
    places += [(index, len(ranking)) for index in range(n_responses) if index not in set(ranking)]
    return list(ordered_pairs(places))


def read_pairs(db: sqlite_utils.Database, session_id: int | None = None) -> list[PreferencePair]:
    """Every preference pair in the store (or in one session), in judgement order (the table above)."""
    rows = _Rows(db, session_id, contexts=False)
    pairs: list[PreferencePair] = []
    for judgement in rows.judgements(PAIR_VERDICTS):
        pairs.extend(_pairs_for(judgement, rows))
    return pairs


def _pairs_for(judgement: dict[str, Any], rows: _Rows) -> Iterator[PreferencePair]:
    common = {
        "prompt_text": judgement["prompt_text"],
        "session_id": judgement["session_id"],
        "judgement_id": judgement["id"],
        "verdict": judgement["verdict"],
        "created_at": judgement["created_at"],
    }
    verdict = judgement["verdict"]
    if verdict == Verdict.RANKED:
        for better, worse in ordered_pairs(rows.ranked(judgement["id"])):
            yield PreferencePair(pair_id=ranked_pair_id(judgement["id"], better["id"], worse["id"]),
                                 prompt=better["rendered_prompt"], chosen=better["text"], rejected=worse["text"],
                                 **common)
        return
    if verdict == Verdict.EDITED:
        edited = judgement["edited_text"] or ""
        if not edited.strip():
            return
        for candidate in _differing(rows.by_prompt.get(judgement["prompt_id"], []), edited):
            yield PreferencePair(pair_id=judged_pair_id(judgement["id"], candidate["id"]),
                                 prompt=candidate["rendered_prompt"], chosen=edited, rejected=candidate["text"], **common)
        return
    chosen = rows.by_id.get(judgement["chosen_candidate_id"])
    rejected = rows.by_id.get(judgement["rejected_candidate_id"])
    # record_judgement guarantees both; a row that lacks them (an old import) simply yields nothing.
    if chosen is None or rejected is None:
        return
    yield PreferencePair(pair_id=judged_pair_id(judgement["id"]), prompt=chosen["rendered_prompt"],
                         chosen=chosen["text"], rejected=rejected["text"], **common)


def _differing(candidates: list[dict[str, Any]], edited: str) -> list[dict[str, Any]]:
    # Candidates keep the model's own whitespace; surrounding whitespace is not a preference.
    return [candidate for candidate in candidates if candidate["text"].strip() != edited.strip()]


# Unpaired labels


def unpaired_labels(db: sqlite_utils.Database, session_id: int | None = None,
                    from_judgements: bool = False) -> list[UnpairedLabel]:
    """Replies marked good or bad, in judgement order: thumbs always, and with `from_judgements` the labels the
    comparisons imply (the table above)."""
    rows = _Rows(db, session_id)
    verdicts = _LABEL_VERDICTS + (_OPTIONAL_LABEL_VERDICTS if from_judgements else ())
    labels: list[UnpairedLabel] = []
    for judgement in rows.judgements(verdicts):
        context = rows.contexts.get(judgement["prompt_id"])
        if context is None:
            continue
        for candidate, text, good in _labels_for(judgement, rows):
            label_id = f"l{judgement['id']}" + (f"c{candidate['id']}" if candidate is not None else "e")
            labels.append(UnpairedLabel(label_id, _rendered(context, candidate), text, good, judgement["verdict"],
                                        judgement["id"]))
    return labels


def _rendered(context: PromptContext, candidate: dict[str, Any] | None) -> PromptContext:
    # A label's prompt is the one its own candidate was generated from (they agree within a prompt).
    if candidate is None or candidate["rendered_prompt"] == context.rendered:
        return context
    return PromptContext(context.prompt_id, context.session_id, context.text, candidate["rendered_prompt"],
                         context.messages)


def _labels_for(judgement: dict[str, Any], rows: _Rows) -> Iterator[tuple[dict[str, Any] | None, str, bool]]:
    verdict = judgement["verdict"]
    own = rows.by_prompt.get(judgement["prompt_id"], [])
    if verdict in (Verdict.GOOD, Verdict.A, Verdict.B):
        chosen = rows.by_id.get(judgement["chosen_candidate_id"])
        if chosen is not None:
            yield chosen, chosen["text"], True
    if verdict in (Verdict.BAD, Verdict.A, Verdict.B):
        rejected = rows.by_id.get(judgement["rejected_candidate_id"])
        if rejected is not None:
            yield rejected, rejected["text"], False
    if verdict in (Verdict.BOTH_BAD, Verdict.ALL_BAD):
        for candidate in own:
            yield candidate, candidate["text"], False
    if verdict == Verdict.EDITED and (judgement["edited_text"] or "").strip():
        yield None, judgement["edited_text"], True
        for candidate in _differing(own, judgement["edited_text"]):
            yield candidate, candidate["text"], False
    if verdict == Verdict.RANKED:
        ranked = rows.ranked(judgement["id"])
        if ranked and ranked[0][1] != ranked[-1][1]:  # all tied: neither best nor worst
            yield ranked[0][0], ranked[0][0]["text"], True
            for candidate, place in ranked:
                if place == ranked[-1][1]:
                    yield candidate, candidate["text"], False


# Demonstrations, ratings and raw rankings


def demonstrations(db: sqlite_utils.Database, session_id: int | None = None) -> list[Demonstration]:
    """Written and corrected replies, then the edits of edited judgements not already stored as one of those,
    each in the order made."""
    rows = _Rows(db, session_id)
    found: list[Demonstration] = []
    stored: set[tuple[int, str]] = set()
    for demo_id, prompt_id, text, based_on in db.execute(
            "SELECT d.id, d.prompt_id, d.text, d.based_on_candidate_id FROM demonstrations d "
            "JOIN prompts p ON p.id = d.prompt_id WHERE (? IS NULL OR p.session_id = ?) ORDER BY d.id",
            [session_id, session_id]):
        context = rows.contexts.get(prompt_id)
        if context is not None:
            stored.add((prompt_id, text.strip()))
            found.append(Demonstration(f"m{demo_id}", _rendered(context, rows.by_id.get(based_on)), text,
                                       "corrected" if based_on is not None else "written"))
    for judgement in rows.judgements((Verdict.EDITED.value,)):
        context = rows.contexts.get(judgement["prompt_id"])
        edited = (judgement["edited_text"] or "").strip()
        # A client that also stored the edit as a demonstration (the judging session does) yields it once.
        if context is not None and edited and (judgement["prompt_id"], edited) not in stored:
            found.append(Demonstration(f"e{judgement['id']}", context, judgement["edited_text"], "edited"))
    return found


def rated_responses(db: sqlite_utils.Database, session_id: int | None = None) -> list[RatedResponse]:
    """Every rated candidate with its latest value per attribute, in the order first rated."""
    rows = _Rows(db, session_id)
    ratings: dict[int, dict[str, int]] = {}
    for candidate_id, attribute, value in db.execute(
            "SELECT candidate_id, attribute, value FROM candidate_ratings ORDER BY id"):
        if candidate_id in rows.by_id:
            ratings.setdefault(candidate_id, {})[attribute] = value  # later rows overwrite: the latest wins
    found = []
    for candidate_id, values in ratings.items():
        candidate = rows.by_id[candidate_id]
        context = rows.contexts.get(candidate["prompt_id"])
        if context is not None:
            found.append(RatedResponse(candidate_id, _rendered(context, candidate), candidate["text"], values))
    return found


def ranked_responses(db: sqlite_utils.Database, session_id: int | None = None) -> list[RankedResponses]:
    """Every ranking (all-bad ones included) as a raw record over its prompt's candidates, in the order made."""
    rows = _Rows(db, session_id)
    found = []
    for judgement in rows.judgements((Verdict.RANKED.value, Verdict.ALL_BAD.value)):
        context = rows.contexts.get(judgement["prompt_id"])
        own = rows.by_prompt.get(judgement["prompt_id"], [])
        if context is None or len(own) < 2:
            continue
        index = {candidate["id"]: i for i, candidate in enumerate(own)}
        ranked = rows.ranked(judgement["id"])
        last = ranked[-1][1] if ranked else 0
        # The ranking lists the candidates before the shared last place; a full order lists them all.
        order = [index[c["id"]] for c, place in ranked if place < last or sum(p == last for _, p in ranked) == 1]
        found.append(RankedResponses(judgement["id"], context, tuple(c["text"] for c in own), tuple(order),
                                     judgement["verdict"] == Verdict.ALL_BAD))
    return found
