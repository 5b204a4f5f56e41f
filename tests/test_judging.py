"""The judging workflow without Textual, on the real default model and a real SQLite file: one prompt →
N candidates with known seeds → every kind of verdict → what the store holds and how the conversation
goes on."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from store.errors import StoreBusyError
from store.studio_store import Store
from studio.inference.engine import ChatEngine, EngineBusy, EngineConfig, EngineError, SamplingSettings
from studio.judging import Judgement, JudgingSession
from trainers.prompt_format import ChatTurn

SHORT = SamplingSettings(max_tokens=6)


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


def session_on(store: Store, engine: ChatEngine, n: int = 2, seed: int | None = 100) -> JudgingSession:
    return JudgingSession(store, "Answer briefly.", engine.identity.model_id, sampling=SHORT, n_candidates=n,
                          base_seed=seed, engine=engine)


def answered(session: JudgingSession, text: str):
    round_ = session.prepare(text)
    assert session.generate(round_) is not None
    session.store_candidates(round_)
    return round_


def test_n_candidates_with_base_seeds_are_stored_with_their_prompt(store, engine):
    session = session_on(store, engine, n=3)
    streamed: dict[int, str] = {}
    first = session.prepare("Name a colour.")
    assert first.seeds == [100, 101, 102]
    generations = session.generate(first, on_token=lambda slot, text: streamed.__setitem__(slot, text))
    assert [g.seed for g in generations] == [100, 101, 102]
    assert streamed == {slot: g.text for slot, g in enumerate(generations) if g.text}
    session.store_candidates(first)
    stored = store.candidates(first.prompt_id)
    assert [(c.slot, c.seed, c.text, c.adapter) for c in stored] == [
        (slot, g.seed, g.text, None) for slot, g in enumerate(generations)
    ]
    assert {c.rendered_prompt for c in stored} == {first.fitted.text}
    assert [c.id for c in stored] == first.candidate_ids
    # The next round continues the sequence; the same seed gives the same reply.
    second = session.prepare("Name a colour.")
    assert second.seeds == [103, 104, 105]
    again = session.generate(session.prepare("Name a colour."))
    assert again is not None
    random_seeds = session_on(store, engine, seed=None).prepare("Hi.").seeds
    assert len(set(random_seeds)) == 2 and random_seeds != [100, 101]


def test_a_prompt_is_never_stored_without_its_candidates(store, engine):
    session = session_on(store, engine)
    good = {"text": " yes", "rendered_prompt": "p", "model_id": "m", "model_sha256": "s", "sampling": {}, "seed": 1}
    with pytest.raises(ValueError, match="slot"):
        store.add_prompt_with_candidates(session.session_id, "refused", [], [good, {**good, "slot": -1}])
    assert store.session_questions(session.session_id) == []  # the first candidate went with the prompt
    prompt_id, ids = store.add_prompt_with_candidates(session.session_id, "kept", [], [good, good])
    assert [c.slot for c in store.candidates(prompt_id)] == [0, 1] and len(ids) == 2


def test_every_verdict_is_stored_with_its_turns_and_the_chosen_reply_continues(store, engine):
    session = session_on(store, engine)
    a = answered(session, "Say yes.")
    session.record(a, Judgement.prefer(0, 1))
    b = answered(session, "Say no.")
    session.record(b, Judgement.prefer(1, 0))
    tie = answered(session, "Say maybe.")
    session.record(tie, Judgement.tie(continue_with=1))
    bad = answered(session, "Say something.")
    session.record(bad, Judgement.both_bad())
    assert session.current is bad  # both bad: the conversation waits (regenerate, edit or move on)
    edited = answered(session, "Say hello.")
    session.record(edited, session.edited(edited, "Hello there!", base=1))

    verdicts = [(j.verdict, j.chosen_candidate_id, j.rejected_candidate_id, j.edited_text)
                for j in store.judgements(session_id=session.session_id)]
    assert verdicts == [
        ("a", a.candidate_ids[0], a.candidate_ids[1], None),
        ("b", b.candidate_ids[1], b.candidate_ids[0], None),
        ("tie", None, None, None),
        ("both_bad", None, None, None),
        ("edited", edited.candidate_ids[1], edited.candidate_ids[0], " Hello there!"),
    ]
    expected = [
        ("user", "Say yes."), ("assistant", a.reply(0).strip()),
        ("user", "Say no."), ("assistant", b.reply(1).strip()),
        ("user", "Say maybe."), ("assistant", tie.reply(1).strip()),  # the tie goes on with B
        ("user", "Say hello."), ("assistant", "Hello there!"),
    ]
    assert [(t.role, t.content) for t in store.turns(session.session_id)] == expected
    assert [(t.role, t.content) for t in session.turns] == expected
    # a, b, and the edit against each candidate; no pair from the tie or both bad
    assert store.count_pairs(session_id=session.session_id) == session.pair_count() == 4
    # What the model sees next is the conversation the judgements kept.
    assert "Hello there!" in session.prepare("And then?").fitted.text


def test_regenerate_gives_new_seeds_and_the_old_candidates_stay_unjudged(store, engine):
    session = session_on(store, engine)
    first = answered(session, "Tell me a word.")
    again = session.regenerate(first)
    assert again.user_text == first.user_text and again.history == first.history
    assert again.seeds == [102, 103] and session.current is again
    session.generate(again)
    session.store_candidates(again)
    session.record(again, Judgement.prefer(0, 1))
    assert [j.prompt_id for j in store.judgements()] == [again.prompt_id]
    assert len(store.candidates(first.prompt_id)) == 2


def test_a_full_context_drops_the_oldest_turns(store, default_model):
    small = ChatEngine(EngineConfig(model_path=default_model, n_ctx=128))
    try:
        session = JudgingSession(store, "", small.identity.model_id, sampling=SamplingSettings(max_tokens=16),
                                 engine=small)
        session.turns = [ChatTurn("user", "word " * 60), ChatTurn("assistant", "reply " * 60)]
        fitted = session.prepare("Short question?").fitted
        assert fitted.dropped_turns == 2 and fitted.n_tokens + 16 <= small.n_ctx
        assert "word" not in fitted.text and "Short question?" in fitted.text
        with pytest.raises(EngineError, match="does not fit"):
            session.prepare("long " * 200)
    finally:
        small.close()


def test_stopping_generation_returns_nothing_to_store(store, engine):
    session = session_on(store, engine)
    round_ = session.prepare("Count to twenty.")
    assert session.generate(round_, should_stop=lambda: True) is None
    assert store.session_questions(session.session_id) == []


def test_no_adapter_switch_lands_between_candidates(store, engine):
    session = session_on(store, engine)
    round_ = session.prepare("Name a fruit.")
    refused: list[str] = []

    def switch_during(slot: int, _text: str) -> None:
        if slot == 0 and not refused:
            def attempt() -> None:
                try:
                    engine.activate_adapter(None)
                except EngineBusy as exc:
                    refused.append(str(exc))
            other = threading.Thread(target=attempt)
            other.start()
            other.join(10)

    session.generate(round_, on_token=switch_during)
    assert refused and "generating candidates" in refused[0]
    assert engine.owner is None


def test_a_busy_database_keeps_the_judgement_for_a_retry(store, engine, tmp_path):
    session = session_on(store, engine)
    round_ = answered(session, "Say hi.")
    blocker = sqlite3.connect(tmp_path / "studio.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusyError):
            session.record(round_, Judgement.prefer(0, 1), wait_at_most_s=0.1)
        assert not round_.judged and session.turns == [] and session.current is round_
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    session.record(round_, Judgement.prefer(0, 1), wait_at_most_s=0.1)  # the same call, once free
    assert [j.verdict for j in store.judgements()] == ["a"]
    assert [t.content for t in store.turns(session.session_id)] == ["Say hi.", round_.reply(0).strip()]


def test_every_session_records_its_model_the_new_one_too(store, engine):
    session = session_on(store, engine)
    first = session.session_id
    answered(session, "Hello.")
    second = session.new_session()
    assert second != first and session.turns == [] and session.current is None
    for session_id in (first, second):
        record = store.get_session(session_id)
        assert record.model_id == engine.identity.model_id and record.system_prompt == "Answer briefly."


# --- the verdict kinds beyond two candidates: rankings, all bad, thumbs, edits as demonstrations, ratings ---


def test_a_partial_ranking_of_four_stores_places_and_its_best_reply_continues(store, engine):
    session = session_on(store, engine, n=4)
    round_ = answered(session, "Name an animal.")
    judgement_id = session.record(round_, Judgement.ranking([2, 0]))  # C best, then A; B and D tie last
    ids = round_.candidate_ids
    (ranking,) = store.rankings(prompt_id=round_.prompt_id)
    assert ranking.judgement_id == judgement_id and not ranking.all_bad
    assert dict(ranking.places) == {ids[2]: 0, ids[0]: 1, ids[1]: 2, ids[3]: 2}
    assert [(j.verdict, j.chosen_candidate_id) for j in store.judgements()] == [("ranked", ids[2])]
    # C over A, B, D; A over B, D; nothing between the two tied last (when the texts differ at all)
    assert {(p.chosen, p.rejected) for p in store.pairs()} <= {
        (round_.reply(better), round_.reply(worse)) for better, worse in ((2, 0), (2, 1), (2, 3), (0, 1), (0, 3))}
    assert len(store.pairs()) == 5
    assert [(t.role, t.content) for t in store.turns(session.session_id)] == [
        ("user", "Name an animal."), ("assistant", round_.reply(2).strip())]
    assert session.current is None and round_.judgement_id == judgement_id


def test_all_bad_records_a_ranking_of_nothing_and_the_round_waits(store, engine):
    session = session_on(store, engine, n=3)
    round_ = answered(session, "Say something odd.")
    session.record(round_, Judgement.all_bad())
    (ranking,) = store.rankings()
    assert ranking.all_bad and ranking.places == ()
    assert store.turns(session.session_id) == [] and session.current is round_  # r, e or i next
    with pytest.raises(ValueError, match="at least the best"):
        Judgement.ranking([])
    with pytest.raises(ValueError, match="once"):
        Judgement.ranking([1, 1])
    with pytest.raises(ValueError, match=r"slot\(s\) \[3\] are not in this round of 3"):
        session.record(round_, Judgement.ranking([3, 0]))
    assert len(store.judgements()) == 1  # the refused ranking wrote nothing


def test_thumbs_up_and_down_on_one_reply_are_labels_and_the_chat_goes_on(store, engine):
    session = session_on(store, engine, n=1)
    liked = answered(session, "Say yes.")
    assert len(liked.candidate_ids) == 1
    session.record(liked, Judgement.label(0, good=True))
    disliked = answered(session, "Say no.")
    session.record(disliked, Judgement.label(0, good=False))
    assert [(j.verdict, j.chosen_candidate_id, j.rejected_candidate_id) for j in store.judgements()] == [
        ("good", liked.candidate_ids[0], None), ("bad", None, disliked.candidate_ids[0])]
    labels = [(label.completion, label.label) for label in store_labels(store)]
    assert labels == [(liked.reply(0), True), (disliked.reply(0), False)]
    # In a plain chat the reply stays the assistant's turn, liked or not; no pair comes of a thumb.
    assert [t.content for t in session.turns] == ["Say yes.", liked.reply(0).strip(), "Say no.",
                                                 disliked.reply(0).strip()]
    assert store.count_pairs() == 0 and session.label_count() == 2


def store_labels(store: Store):
    from store.feedback_yield import unpaired_labels

    return unpaired_labels(store.db)


def test_an_edit_is_stored_as_an_edited_judgement_and_a_demonstration_of_its_prompt(store, engine):
    session = session_on(store, engine, n=1)
    round_ = answered(session, "What colour is grass?")
    session.record(round_, session.edited(round_, "Green.", base=0))
    (judgement,) = store.judgements()
    assert (judgement.verdict, judgement.chosen_candidate_id, judgement.rejected_candidate_id) == (
        "edited", round_.candidate_ids[0], None)
    (demo,) = store.demonstrations(prompt_id=round_.prompt_id)
    assert (demo.text, demo.based_on_candidate_id, demo.source) == (" Green.", round_.candidate_ids[0], "tui")
    assert [t.content for t in session.turns] == ["What colour is grass?", "Green."]
    # With three candidates the edit is preferred to each that differs, and stored as a demonstration too.
    three = session_on(store, engine, n=3)
    ranked = answered(three, "What colour is snow?")
    three.record(ranked, three.edited(ranked, "White.", base=1))
    assert [d.based_on_candidate_id for d in store.demonstrations(prompt_id=ranked.prompt_id)] == [
        ranked.candidate_ids[1]]
    assert {p.rejected for p in store.pairs(session_id=three.session_id)} == {
        ranked.reply(slot) for slot in range(3) if ranked.reply(slot).strip() != "White."}


def test_a_busy_database_between_the_edit_and_its_demonstration_writes_each_once(store, engine, tmp_path):
    session = session_on(store, engine)
    round_ = answered(session, "Say hi.")
    real = store.add_demonstration
    blocker = sqlite3.connect(tmp_path / "studio.db", isolation_level=None)

    def busy_once(*args, **kwargs):  # another program takes the database between the two writes
        store.add_demonstration = real
        blocker.execute("BEGIN IMMEDIATE")
        return real(*args, **kwargs)

    store.add_demonstration = busy_once
    judgement = session.edited(round_, "Hi there.", base=0)
    try:
        with pytest.raises(StoreBusyError):
            session.record(round_, judgement, wait_at_most_s=0.1)
        assert [j.verdict for j in store.judgements()] == ["edited"] and store.demonstrations() == []
        assert not round_.judged and session.turns == []
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    session.record(round_, judgement, wait_at_most_s=0.1)  # the same call: only the demonstration is left
    assert [j.verdict for j in store.judgements()] == ["edited"]
    assert [d.text for d in store.demonstrations()] == [" Hi there."]
    assert [t.content for t in store.turns(session.session_id)] == ["Say hi.", "Hi there."]


def test_ratings_stand_alone_before_a_verdict_and_go_with_the_judgement_after_one(store, engine):
    session = session_on(store, engine, n=3)
    round_ = answered(session, "Tell me a joke.")
    session.rate(round_, 1, {"quality": 3, "humor": 4})
    session.record(round_, Judgement.all_bad())
    session.rate(round_, 2, {"quality": 0})
    session.rate(round_, 1, {"humor": 1})  # a later rating of the same attribute supersedes the first
    ids = round_.candidate_ids
    got = sorted((r.candidate_id, r.attribute, r.value, r.judgement_id) for r in store.ratings())
    assert got == [(ids[1], "humor", 1, round_.judgement_id), (ids[1], "quality", 3, None),
                   (ids[2], "quality", 0, round_.judgement_id)]
    with pytest.raises(ValueError, match="'humor' must be a whole number from 0 to 4"):
        session.rate(round_, 0, {"humor": 5})
    with pytest.raises(ValueError, match="slot 3"):
        session.rate(round_, 3, {"humor": 1})
