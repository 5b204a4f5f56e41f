"""Every feedback kind in the store (issue 13): the v6 migration, rankings, labels, ratings and
demonstrations, what each yields (store/feedback_yield.py), and their formats."""

import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from store import RecordNotFoundError, Store, Verdict, feedback_yield
from store.datasets.export import judged_export_pairs
from store.pair_ids import PairId, pair_kind, parse_pair_id
from store.schema import MIGRATIONS, SCHEMA_VERSION

SHA = "0" * 64


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "studio.db"


@pytest.fixture
def store(db_path: Path):
    with Store.open(db_path) as opened:
        yield opened


def prompt_with(store: Store, texts: tuple[str, ...] = ("one", "two", "three", "four"), session_id=None,
                question: str = "Name a colour.") -> tuple[int, int, list[int]]:
    """A session (unless given), a prompt and one candidate per text: (session, prompt, candidate ids)."""
    session_id = session_id or store.create_session("Be brief.")
    prompt_id, ids = store.add_prompt_with_candidates(
        session_id, question, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        [{"text": text, "rendered_prompt": f"User: {question}\nAssistant:", "model_id": "gemma",
          "model_sha256": SHA, "sampling": {"temperature": 0.8}, "seed": slot} for slot, text in enumerate(texts)])
    return session_id, prompt_id, ids


def count(store: Store, table: str) -> int:
    return store.db[table].count


# The migration


def _version_5_file(path: Path) -> None:
    """A file exactly as version 5 wrote it (its migrations run, nothing of version 6), holding data."""
    db = sqlite_utils.Database(path)
    db["meta"].create({"key": str, "value": str}, pk="key")
    for migration in MIGRATIONS[:5]:
        migration(db)
    db["meta"].insert({"key": "schema_version", "value": "5"})
    now = "2026-01-01T00:00:00+00:00"
    db.execute("INSERT INTO sessions (id, created_at, system_prompt) VALUES (1, ?, 'kept')", [now])
    db.execute("INSERT INTO prompts (id, session_id, text, history_json, created_at) VALUES (1, 1, 'Q?', '[]', ?)",
               [now])
    for cid, text in ((1, "old A"), (2, "old B")):
        db.execute("INSERT INTO candidates (id, prompt_id, slot, text, rendered_prompt, model_id, model_sha256, "
                   "sampling_json, seed, created_at) VALUES (?, 1, ?, ?, 'User: Q?\nAssistant:', 'm', ?, '{}', 1, ?)",
                   [cid, cid - 1, text, SHA, now])
    db.execute("INSERT INTO judgements (id, prompt_id, verdict, chosen_candidate_id, rejected_candidate_id, source, "
               "created_at) VALUES (1, 1, 'a', 1, 2, 'tui', ?)", [now])
    db.execute("INSERT INTO judgements (id, prompt_id, verdict, edited_text, source, created_at) "
               "VALUES (2, 1, 'edited', ' my own', 'tui', ?)", [now])
    db.conn.commit()
    db.close()


def test_a_version_5_file_with_data_is_upgraded_to_the_current_schema(db_path: Path) -> None:
    _version_5_file(db_path)
    with sqlite3.connect(db_path) as conn:
        before = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert "judgement_ranks" not in before and "judgements" in before
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION == 7  # through v6 (feedback kinds) and v7 (checks, scores)
        assert {"judgement_ranks", "candidate_ratings", "demonstrations", "dataset_feedback_items"} <= set(
            store.db.table_names())
        # What version 5 stored reads back unchanged, and the edit now also yields a demonstration.
        assert [p.pair_id for p in store.pairs()] == ["j1", "j2c1", "j2c2"]
        assert [(d.text, d.origin) for d in feedback_yield.demonstrations(store.db)] == [(" my own", "edited")]
        # The new kinds work on the old rows.
        assert store.record_ranking(1, [2, 1]) == 3
        assert store.record_ratings(1, {"quality": 3})
        assert store.add_demonstration(1, "written", based_on_candidate_id=2)
    with Store.open(db_path) as again:  # reopening migrates nothing more
        assert again.schema_version == SCHEMA_VERSION and len(again.rankings()) == 1


# Rankings


def test_a_full_ranking_stores_every_place(store: Store) -> None:
    _, prompt_id, (a, b, c, d) = prompt_with(store)
    judgement_id = store.record_ranking(prompt_id, [c, a, d, b])
    [ranking] = store.rankings()
    assert ranking.judgement_id == judgement_id and ranking.prompt_id == prompt_id and not ranking.all_bad
    assert ranking.places == ((c, 0), (a, 1), (d, 2), (b, 3)) and ranking.order == [c, a, d, b]
    [judgement] = store.judgements()
    assert judgement.verdict == Verdict.RANKED and judgement.chosen_candidate_id == c


def test_a_partial_ranking_ties_the_rest_last(store: Store) -> None:
    _, prompt_id, (a, b, c, d) = prompt_with(store)
    store.record_ranking(prompt_id, [b])
    assert store.rankings()[0].places == ((b, 0), (a, 1), (c, 1), (d, 1))


def test_all_bad_stores_no_places(store: Store) -> None:
    _, prompt_id, _ = prompt_with(store, ("x", "y", "z"))
    judgement_id = store.record_ranking(prompt_id, [], all_bad=True)
    [ranking] = store.rankings(prompt_id=prompt_id)
    assert ranking.judgement_id == judgement_id and ranking.all_bad and ranking.places == ()
    assert store.judgements()[0].verdict == "all_bad"


def test_a_ranking_writes_its_turns_with_it(store: Store) -> None:
    session_id, prompt_id, (a, b, c, _) = prompt_with(store)
    judgement_id = store.record_ranking(prompt_id, [c, a], turns=[("user", "Name a colour."), ("assistant", "three")])
    assert [(t.role, t.content, t.judgement_id) for t in store.turns(session_id)] == [
        ("user", "Name a colour.", judgement_id), ("assistant", "three", judgement_id)]


@pytest.mark.parametrize(("order", "all_bad", "message"), [
    ("repeat", False, "repeated"),
    ("foreign", False, "not candidates of this prompt"),
    ("empty", False, "at least the best"),
    ("first", True, "orders nothing"),
])
def test_invalid_rankings_write_nothing(store: Store, order, all_bad: bool, message: str) -> None:
    _, prompt_id, ids = prompt_with(store)
    _, _, (foreign, *_) = prompt_with(store)
    order = {"repeat": [ids[0], ids[1], ids[0]], "foreign": [ids[0], foreign], "first": [ids[0]],
             "empty": []}[order]
    with pytest.raises(ValueError, match=message):
        store.record_ranking(prompt_id, order, all_bad=all_bad)
    assert count(store, "judgements") == 0 and count(store, "judgement_ranks") == 0
    assert not store.db.conn.in_transaction


def test_a_prompt_with_one_candidate_cannot_be_ranked(store: Store) -> None:
    _, prompt_id, (only,) = prompt_with(store, ("alone",))
    with pytest.raises(ValueError, match="needs 2 or more"):
        store.record_ranking(prompt_id, [only])
    with pytest.raises(RecordNotFoundError, match="prompt"):
        store.record_ranking(999, [only])
    assert count(store, "judgements") == 0


def test_record_judgement_sends_the_new_verdicts_to_their_methods(store: Store) -> None:
    _, prompt_id, (a, b, *_) = prompt_with(store)
    for verdict, method in (("ranked", "record_ranking"), ("good", "record_label"), ("all_bad", "all_bad=True")):
        with pytest.raises(ValueError, match=method):
            store.record_judgement(prompt_id, verdict, a, b)
    assert count(store, "judgements") == 0


# Labels


def test_labels_mark_one_candidate_good_or_bad(store: Store) -> None:
    session_id, prompt_id, (a, b) = prompt_with(store, ("fine", "awful"))
    good = store.record_label(a, True, turns=[("user", "Name a colour."), ("assistant", "fine")])
    bad = store.record_label(b, False)
    judgements = {j.id: j for j in store.judgements()}
    assert (judgements[good].verdict, judgements[good].chosen_candidate_id, judgements[good].prompt_id) == (
        "good", a, prompt_id)
    assert (judgements[bad].verdict, judgements[bad].rejected_candidate_id) == ("bad", b)
    assert [t.judgement_id for t in store.turns(session_id)] == [good, good]


def test_a_label_needs_a_known_candidate_and_a_bool(store: Store) -> None:
    _, _, (a, _) = prompt_with(store, ("x", "y"))
    with pytest.raises(RecordNotFoundError, match="candidate with id 999"):
        store.record_label(999, True)
    with pytest.raises(ValueError, match="good"):
        store.record_label(a, 1)  # type: ignore[arg-type]
    assert count(store, "judgements") == 0


# Ratings


def test_ratings_alone_or_with_a_judgement_and_the_latest_wins(store: Store) -> None:
    _, prompt_id, (a, b) = prompt_with(store, ("x", "y"))
    store.record_ratings(a, {"quality": 1, "humour": 4})
    judgement_id = store.record_judgement(prompt_id, "a", a, b)
    store.record_ratings(a, {"quality": 3}, judgement_id=judgement_id)
    store.record_ratings(b, {"toxicity": 0})
    latest = {(r.candidate_id, r.attribute): (r.value, r.judgement_id) for r in store.ratings()}
    assert latest == {(a, "humour"): (4, None), (a, "quality"): (3, judgement_id), (b, "toxicity"): (0, None)}
    assert len(store.ratings(latest=False)) == 4 and len(store.ratings(candidate_id=b)) == 1


@pytest.mark.parametrize(("ratings", "message"), [
    ({"quality": 5}, "'quality' must be a whole number from 0 to 4, got 5"),
    ({"quality": -1}, "got -1"),
    ({"quality": True}, "got True"),
    ({"quality": "3"}, "got '3'"),
    ({"quality": 2.5}, "got 2.5"),
    ({" ": 2}, "needs a name"),
    ({}, "no ratings"),
])
def test_invalid_ratings_write_nothing(store: Store, ratings: dict, message: str) -> None:
    _, _, (a, _) = prompt_with(store, ("x", "y"))
    with pytest.raises(ValueError, match=message):
        store.record_ratings(a, {"helpfulness": 2, **ratings} if ratings else ratings)
    assert count(store, "candidate_ratings") == 0


def test_ratings_with_another_prompts_judgement_are_refused(store: Store) -> None:
    _, prompt_id, (a, b) = prompt_with(store, ("x", "y"))
    _, _, (other, _) = prompt_with(store, ("p", "q"))
    judgement_id = store.record_judgement(prompt_id, "a", a, b)
    with pytest.raises(ValueError, match=f"not a judgement of candidate {other}"):
        store.record_ratings(other, {"quality": 2}, judgement_id=judgement_id)
    assert count(store, "candidate_ratings") == 0


# Demonstrations


def test_demonstrations_written_or_corrected(store: Store) -> None:
    _, prompt_id, (a, _) = prompt_with(store, ("x", "y"))
    written = store.add_demonstration(prompt_id, "Blue.")
    corrected = store.add_demonstration(prompt_id, "Red, not x.", based_on_candidate_id=a, source="cli")
    assert [(d.id, d.text, d.based_on_candidate_id, d.source) for d in store.demonstrations()] == [
        (written, "Blue.", None, "tui"), (corrected, "Red, not x.", a, "cli")]


def test_invalid_demonstrations_write_nothing(store: Store) -> None:
    _, prompt_id, _ = prompt_with(store, ("x", "y"))
    _, _, (foreign, _) = prompt_with(store, ("p", "q"))
    with pytest.raises(ValueError, match="empty"):
        store.add_demonstration(prompt_id, "  ")
    with pytest.raises(ValueError, match="does not belong"):
        store.add_demonstration(prompt_id, "text", based_on_candidate_id=foreign)
    with pytest.raises(RecordNotFoundError):
        store.add_demonstration(999, "text")
    assert count(store, "demonstrations") == 0


def test_each_kind_is_committed_before_the_call_returns(store: Store, db_path: Path) -> None:
    _, prompt_id, (a, b, c, _) = prompt_with(store)
    store.record_ranking(prompt_id, [b, a])
    store.record_label(c, False)
    store.record_ratings(a, {"quality": 2})
    store.add_demonstration(prompt_id, "mine")
    with sqlite3.connect(db_path) as reader:
        seen = [reader.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("judgement_ranks", "judgements", "candidate_ratings", "demonstrations")]
    reader.close()
    assert seen == [4, 2, 1, 1]


# What each kind yields (store/feedback_yield.py)


def test_a_full_ranking_of_k_yields_every_ordered_pair(store: Store) -> None:
    _, prompt_id, (a, b, c, d) = prompt_with(store)
    j = store.record_ranking(prompt_id, [c, a, d, b])
    pairs = store.pairs()
    assert len(pairs) == 4 * 3 // 2
    texts = {"one": a, "two": b, "three": c, "four": d}
    assert [(texts[p.chosen], texts[p.rejected]) for p in pairs] == [
        (c, a), (c, d), (c, b), (a, d), (a, b), (d, b)]
    assert [p.pair_id for p in pairs][:2] == [f"r{j}:{c}>{a}", f"r{j}:{c}>{d}"]
    assert all(p.verdict == "ranked" and p.judgement_id == j and p.prompt.startswith("User: ") for p in pairs)


def test_a_partial_ranking_yields_no_pairs_among_the_tied(store: Store) -> None:
    _, prompt_id, (a, b, c, d) = prompt_with(store)
    store.record_ranking(prompt_id, [b, c])  # b > c > {a, d}: 1 + 2 + 2 pairs, none between a and d
    assert sorted((p.chosen, p.rejected) for p in store.pairs()) == sorted([
        ("two", "three"), ("two", "one"), ("two", "four"), ("three", "one"), ("three", "four")])
    store.record_ranking(prompt_id, [], all_bad=True)
    assert store.count_pairs() == 5  # all bad adds none


def test_ranking_pair_ids_round_trip_through_the_codec(store: Store) -> None:
    _, prompt_id, (a, b, c, _) = prompt_with(store)
    j = store.record_ranking(prompt_id, [b, a, c])
    for pair in store.pairs():
        parsed = parse_pair_id(pair.pair_id)
        assert parsed.kind == "judged" and pair_kind(pair.pair_id) == "judged"
        assert parsed.judgement_id == j and str(parsed) == pair.pair_id
    assert parse_pair_id(f"r{j}:{b}>{c}") == PairId("judged", judgement_id=j, chosen_candidate_id=b, candidate_id=c)


def test_ranking_pairs_reach_the_pairs_export_and_the_training_selection(store: Store) -> None:
    from trainers.pair_selection import select_from_store

    _, prompt_id, (a, b, c) = prompt_with(store, ("one", "two", "three"))
    store.record_ranking(prompt_id, [b, a, c])
    _, other, (x, y) = prompt_with(store, ("x", "y"))
    store.record_judgement(other, "a", x, y)
    exported = judged_export_pairs(store, verdicts=["ranked"])
    assert [(p.chosen, p.rejected) for p in exported] == [("two", "one"), ("two", "three"), ("one", "three")]
    selection = select_from_store(store, session_id=None, seed=1, heldout_fraction=0.0)
    assert selection.report.total == 4 and len(selection.train) == 4
    assert sum(p.pair_id.startswith("r") for p in selection.train) == 3


@pytest.fixture
def every_kind(store: Store) -> dict[str, int]:
    """One prompt per judgement kind; returns the ids the tests below name."""
    ids: dict[str, int] = {}
    _, p, (ids["a_win"], ids["a_lose"]) = prompt_with(store, ("win", "lose"))
    ids["ab"] = store.record_judgement(p, "a", ids["a_win"], ids["a_lose"])
    _, p, (ids["t1"], _) = prompt_with(store, ("tie 1", "tie 2"))
    store.record_judgement(p, "tie")
    _, p, _ = prompt_with(store, ("bad 1", "bad 2"))
    store.record_judgement(p, "both_bad")
    _, p, (ids["e_same"], _) = prompt_with(store, ("the edit", "other"))
    ids["edited"] = store.record_judgement(p, "edited", edited_text=" the edit")
    _, p, (r1, r2, r3) = prompt_with(store, ("r1", "r2", "r3"))
    ids["ranked"] = store.record_ranking(p, [r2])
    _, p, _ = prompt_with(store, ("x1", "x2", "x3"))
    ids["all_bad"] = store.record_ranking(p, [], all_bad=True)
    _, p, (ids["up"], ids["down"]) = prompt_with(store, ("thumbs up", "thumbs down"))
    store.record_label(ids["up"], True)
    store.record_label(ids["down"], False)
    ids["demo_prompt"] = p
    return ids


def test_labels_are_thumbs_by_default(store: Store, every_kind: dict[str, int]) -> None:
    labels = feedback_yield.unpaired_labels(store.db)
    assert [(lab.completion, lab.label, lab.verdict) for lab in labels] == [
        ("thumbs up", True, "good"), ("thumbs down", False, "bad")]
    assert labels[0].context.prompt == "User: Name a colour.\nAssistant:"


def test_labels_implied_by_judgements_with_the_option(store: Store, every_kind: dict[str, int]) -> None:
    labels = feedback_yield.unpaired_labels(store.db, from_judgements=True)
    assert [(lab.verdict, lab.completion, lab.label) for lab in labels] == [
        ("a", "win", True), ("a", "lose", False),
        ("both_bad", "bad 1", False), ("both_bad", "bad 2", False),
        ("edited", " the edit", True), ("edited", "other", False),
        ("ranked", "r2", True), ("ranked", "r1", False), ("ranked", "r3", False),
        ("all_bad", "x1", False), ("all_bad", "x2", False), ("all_bad", "x3", False),
        ("good", "thumbs up", True), ("bad", "thumbs down", False),
    ]
    assert len({lab.label_id for lab in labels}) == len(labels)


def test_demonstrations_are_written_replies_and_edits(store: Store, every_kind: dict[str, int]) -> None:
    prompt_id = every_kind["demo_prompt"]
    store.add_demonstration(prompt_id, "Green.", based_on_candidate_id=every_kind["up"])
    store.add_demonstration(prompt_id, "Teal.")
    demos = feedback_yield.demonstrations(store.db)
    assert [(d.text, d.origin) for d in demos] == [("Green.", "corrected"), ("Teal.", "written"),
                                                   (" the edit", "edited")]
    assert demos[0].context.messages == (
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "Name a colour."})


def test_ratings_yield_the_latest_value_per_attribute(store: Store) -> None:
    _, _, (a, b) = prompt_with(store, ("x", "y"))
    store.record_ratings(b, {"quality": 4})
    store.record_ratings(a, {"quality": 1, "humour": 2})
    store.record_ratings(a, {"quality": 3})
    rated = feedback_yield.rated_responses(store.db)
    assert [(r.response, r.ratings) for r in rated] == [("y", {"quality": 4}), ("x", {"quality": 3, "humour": 2})]


def test_rankings_as_raw_records(store: Store) -> None:
    _, p, (a, b, c, d) = prompt_with(store)
    store.record_ranking(p, [c, a, d, b])
    store.record_ranking(p, [b])
    store.record_ranking(p, [], all_bad=True)
    raw = feedback_yield.ranked_responses(store.db)
    assert [(r.responses, r.ranking, r.all_bad) for r in raw] == [
        (("one", "two", "three", "four"), (2, 0, 3, 1), False),
        (("one", "two", "three", "four"), (1,), False),
        (("one", "two", "three", "four"), (), True)]


def test_yields_filter_by_session(store: Store) -> None:
    one, p1, (a1, b1) = prompt_with(store, ("x", "y"))
    two, p2, (a2, b2, c2) = prompt_with(store, ("p", "q", "r"))
    store.record_label(a1, True)
    store.record_ranking(p2, [c2, a2])
    store.add_demonstration(p1, "mine")
    assert [lab.completion for lab in feedback_yield.unpaired_labels(store.db, session_id=two)] == []
    assert [lab.completion for lab in feedback_yield.unpaired_labels(store.db, session_id=one)] == ["x"]
    assert len(store.pairs(session_id=two)) == 3 and store.pairs(session_id=one) == []
    assert [d.text for d in feedback_yield.demonstrations(store.db, session_id=two)] == []


def test_an_edit_also_stored_as_a_demonstration_yields_one(store: Store) -> None:
    _, prompt_id, (a, b) = prompt_with(store, ("x", "y"))
    store.record_judgement(prompt_id, "edited", edited_text=" Mine.")
    store.add_demonstration(prompt_id, " Mine.", based_on_candidate_id=a)  # as the judging session does
    store.record_judgement(prompt_id, "edited", edited_text=" Another.")
    assert [(d.text, d.origin) for d in feedback_yield.demonstrations(store.db)] == [
        (" Mine.", "corrected"), (" Another.", "edited")]


def test_a_runs_held_out_ranking_pairs_are_found_again(store: Store) -> None:
    from trainers.recorded_pairs import heldout_export_pairs, recorded_sessions

    session_id, prompt_id, (a, b, c) = prompt_with(store, ("one", "two", "three"))
    j = store.record_ranking(prompt_id, [c, b, a])
    ids = [p.pair_id for p in store.pairs()]
    run = store.create_run({"epochs": 1}, "m", "/tmp/none", pair_ids=ids[:2], heldout_ids=ids[2:], dataset_hash="x")
    found, missing = heldout_export_pairs(store, run)
    assert missing == [] and [(p.pair_id, p.chosen, p.rejected) for p in found] == [(f"r{j}:{b}>{a}", "two", "one")]
    assert recorded_sessions(store, store.get_run(run)) == [session_id]
