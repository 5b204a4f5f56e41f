"""The store against real SQLite files: opening, migrations, errors, conversation records and pairs."""

import json
import os
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from store import (
    PreferencePair,
    RecordNotFoundError,
    SchemaTooNewError,
    Store,
    StoreCorruptError,
    StoreUnwritableError,
    Verdict,
    locations,
    write_pairs_jsonl,
)
from store.database import integrity_ok, open_database
from store.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from store.transactions import ATTEMPT_BUSY_TIMEOUT_MS

SHA = "0" * 64


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "studio.db"


@pytest.fixture
def store(db_path: Path):
    with Store.open(db_path) as opened:
        yield opened


def prompt_with_candidates(store: Store, texts: tuple[str, ...] = ("reply A", "reply B"), session_id=None):
    """A session (unless given), one prompt and a candidate per text; returns (session, prompt, ids)."""
    session_id = session_id or store.create_session("Be brief.")
    prompt_id = store.add_prompt(session_id, "What is DPO?", [{"role": "user", "content": "hi"}])
    ids = [
        store.add_candidate(prompt_id, slot, text, f"rendered {prompt_id}", "gemma", SHA, {"temp": 0.8}, slot)
        for slot, text in enumerate(texts)
    ]
    return session_id, prompt_id, ids


def count(store: Store, table: str) -> int:
    return store.db[table].count


# Opening and migrations


def test_fresh_file_gets_current_schema(store: Store, db_path: Path) -> None:
    assert SCHEMA_VERSION == 7 and len(MIGRATIONS) == SCHEMA_VERSION
    assert store.schema_version == SCHEMA_VERSION
    assert store.path == db_path and db_path.is_file()
    expected = {"meta", "sessions", "turns", "prompts", "candidates", "judgements", "runs", "run_metrics",
                "comparison_votes", "run_evaluations", "datasets", "dataset_stance_items",
                "dataset_test_prompts", "dataset_pair_batches", "judgement_ranks", "candidate_ratings",
                "demonstrations", "dataset_feedback_items", "safety_checks", "candidate_safety", "reward_scores"}
    assert expected <= set(store.db.table_names())
    assert store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("7",)


def test_a_version_1_file_is_upgraded_keeping_its_data(db_path: Path) -> None:
    with Store.open(db_path) as store:
        session_id = store.create_session("kept")
    with sqlite3.connect(db_path) as conn:  # turn it back into what version 1 wrote
        conn.execute("DROP TABLE comparison_votes")
        conn.execute("DROP TABLE run_evaluations")
        for table in ("dataset_stance_items", "dataset_test_prompts", "dataset_pair_batches", "dataset_feedback_items",
                      "datasets", "judgement_ranks", "candidate_ratings", "demonstrations"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert {"comparison_votes", "run_evaluations", "datasets", "dataset_stance_items",
                "dataset_test_prompts", "dataset_pair_batches"} <= set(store.db.table_names())
        assert store.get_session(session_id).system_prompt == "kept"


def test_connection_settings(store: Store) -> None:
    assert store.db.journal_mode == "wal"
    assert store.db.execute("PRAGMA foreign_keys").fetchone() == (1,)
    assert store.db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    # Short per attempt: longer waits are retries that let other threads use the store in between.
    assert store.db.execute("PRAGMA busy_timeout").fetchone() == (ATTEMPT_BUSY_TIMEOUT_MS,)
    assert integrity_ok(store.db)


def test_reopening_is_a_no_op(db_path: Path) -> None:
    with Store.open(db_path) as first:
        session_id = first.create_session("sys")
        schema = first.db.schema
    with Store.open(db_path) as second:
        assert second.schema_version == SCHEMA_VERSION
        assert second.db.schema == schema
        assert second.get_session(session_id).system_prompt == "sys"
        assert migrate(second.db) == SCHEMA_VERSION


def test_file_from_a_newer_version_is_refused(db_path: Path) -> None:
    Store.open(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(SchemaTooNewError) as raised:
        Store.open(db_path)
    message = str(raised.value)
    assert str(db_path) in message and "schema 99" in message and f"this one knows {SCHEMA_VERSION}" in message


def test_parent_that_is_a_file_is_unwritable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    path = blocker / "studio.db"
    with pytest.raises(StoreUnwritableError) as raised:
        Store.open(path)
    assert str(path) in str(raised.value)


def test_directory_in_place_of_the_file_is_unwritable(tmp_path: Path) -> None:
    path = tmp_path / "studio.db"
    path.mkdir()
    with pytest.raises(StoreUnwritableError, match="studio.db"):
        open_database(path)


def test_random_bytes_are_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "studio.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreCorruptError) as raised:
        Store.open(path)
    assert str(path) in str(raised.value)


def test_someone_elses_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE recipes (id INTEGER PRIMARY KEY, name TEXT)")
    conn.close()
    with pytest.raises(StoreCorruptError, match="recipes"):
        Store.open(path)


# Locations


def test_home_override_moves_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFSTUDIO_HOME", str(tmp_path / "home"))
    assert locations.home_override() == tmp_path / "home"
    assert locations.data_dir() == tmp_path / "home" / "data"
    assert locations.cache_dir() == tmp_path / "home" / "cache"
    assert locations.config_dir() == tmp_path / "home" / "config"
    assert locations.default_db_path() == tmp_path / "home" / "data" / "studio.db"
    assert locations.runs_dir() == tmp_path / "home" / "data" / "runs"
    assert locations.models_cache_dir() == tmp_path / "home" / "cache" / "models"
    assert all((tmp_path / "home" / name).is_dir() for name in ("data", "cache", "config"))
    with Store.open() as opened:
        assert opened.path == tmp_path / "home" / "data" / "studio.db"


@pytest.mark.skipif(sys.platform != "linux", reason="XDG variables steer platformdirs on Linux only")
def test_platform_dirs_without_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFSTUDIO_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert locations.home_override() is None
    assert locations.data_dir() == tmp_path / "share" / "prefstudio"
    assert locations.models_cache_dir() == tmp_path / "cache" / "prefstudio" / "models"


# Sessions, turns, prompts, candidates


def test_sessions(store: Store) -> None:
    assert store.latest_session() is None
    first = store.create_session("You are terse.", title="first", model_id="gemma")
    second = store.create_session("You are kind.")
    assert store.get_session(first).title == "first"
    assert [s.id for s in store.list_sessions()] == [second, first]
    assert store.latest_session().id == second
    store.update_system_prompt(first, "You are very terse.")
    assert store.get_session(first).system_prompt == "You are very terse."
    with pytest.raises(RecordNotFoundError, match="session"):
        store.get_session(999)
    with pytest.raises(RecordNotFoundError):
        store.update_system_prompt(999, "x")


def test_turns_are_numbered_per_session(store: Store) -> None:
    session_id, _, (a, _b) = prompt_with_candidates(store)
    other = store.create_session("other")
    store.add_turn(session_id, "user", "What is DPO?")
    store.add_turn(other, "user", "unrelated")
    store.add_turn(session_id, "assistant", "reply A", candidate_id=a)
    turns = store.turns(session_id)
    assert [(t.idx, t.role, t.content, t.candidate_id) for t in turns] == [
        (0, "user", "What is DPO?", None),
        (1, "assistant", "reply A", a),
    ]
    assert [t.idx for t in store.turns(other)] == [0]
    with pytest.raises(ValueError, match="role"):
        store.add_turn(session_id, "narrator", "x")
    with pytest.raises(RecordNotFoundError):
        store.add_turn(999, "user", "x")


def test_candidates_come_back_in_slot_order(store: Store) -> None:
    session_id = store.create_session("sys")
    prompt_id = store.add_prompt(session_id, "q", [])
    later = store.add_candidate(prompt_id, 1, "second", "R", "m", SHA, {"top_p": 0.9}, 7, n_tokens=3)
    earlier = store.add_candidate(
        prompt_id,
        0,
        "first",
        "R",
        "m",
        SHA,
        {"temp": 1.0},
        3,
        adapter="run-1",
        finish_reason="stop",
        duration_s=0.5,
    )
    records = store.candidates(prompt_id)
    assert [c.id for c in records] == [earlier, later]
    assert records[0].sampling == {"temp": 1.0} and records[0].adapter == "run-1"
    assert records[0].finish_reason == "stop" and records[0].duration_s == 0.5
    assert records[1].seed == 7 and records[1].n_tokens == 3
    with pytest.raises(RecordNotFoundError):
        store.add_candidate(999, 0, "x", "R", "m", SHA, {}, 1)


def test_the_connection_works_from_another_thread(store: Store) -> None:
    session_id = store.create_session("sys")
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for n in range(20):
                store.add_turn(session_id, "user", f"from worker {n}")
        except BaseException as error:  # reported to the test thread below
            errors.append(error)

    worker = threading.Thread(target=write)
    worker.start()
    for n in range(20):
        store.add_turn(session_id, "user", f"from main {n}")
    worker.join()
    assert errors == []
    assert [t.idx for t in store.turns(session_id)] == list(range(40))


def test_two_connections_see_each_others_commits(store: Store, db_path: Path) -> None:
    with Store.open(db_path) as other:
        session_id = other.create_session("written elsewhere")
        assert store.get_session(session_id).system_prompt == "written elsewhere"


# Judgements and pairs


def test_a_and_b_make_one_pair_each(store: Store) -> None:
    session_id, prompt_id, (a, b) = prompt_with_candidates(store)
    picked_a = store.record_judgement(prompt_id, Verdict.A, a, b)
    picked_b = store.record_judgement(prompt_id, "b", b, a, source="cli")
    pairs = store.pairs()
    assert [(p.pair_id, p.chosen, p.rejected, p.verdict) for p in pairs] == [
        (f"j{picked_a}", "reply A", "reply B", "a"),
        (f"j{picked_b}", "reply B", "reply A", "b"),
    ]
    first = pairs[0]
    assert first.prompt == f"rendered {prompt_id}" and first.prompt_text == "What is DPO?"
    assert first.session_id == session_id and first.judgement_id == picked_a
    assert first.to_trl() == {"prompt": f"rendered {prompt_id}", "chosen": "reply A", "rejected": "reply B"}


def test_tie_and_both_bad_make_no_pairs(store: Store) -> None:
    _, prompt_id, (a, b) = prompt_with_candidates(store)
    store.record_judgement(prompt_id, "tie")
    store.record_judgement(prompt_id, Verdict.BOTH_BAD, a, b)
    assert store.pairs() == [] and store.count_pairs() == 0
    assert [j.verdict for j in store.judgements(prompt_id=prompt_id)] == ["tie", "both_bad"]


def test_edited_pairs_the_edit_against_each_differing_candidate(store: Store) -> None:
    _, prompt_id, (a, b, c) = prompt_with_candidates(store, ("the edit", "reply B", "reply C"))
    # The edit arrives in the model's whitespace convention and is kept as given; the candidate that
    # equals it up to surrounding whitespace is not a preference.
    judgement_id = store.record_judgement(prompt_id, "edited", edited_text=" the edit")
    pairs = store.pairs()
    assert [(p.pair_id, p.chosen, p.rejected) for p in pairs] == [
        (f"j{judgement_id}c{b}", " the edit", "reply B"),
        (f"j{judgement_id}c{c}", " the edit", "reply C"),
    ]
    assert all(p.verdict == "edited" and p.prompt == f"rendered {prompt_id}" for p in pairs)
    assert store.judgements()[0].edited_text == " the edit"
    assert a not in {int(p.pair_id.split("c")[1]) for p in pairs}


def test_every_judgement_of_a_prompt_yields_its_own_pairs(store: Store) -> None:
    _, prompt_id, (a, b) = prompt_with_candidates(store)
    first = store.record_judgement(prompt_id, "a", a, b)
    second = store.record_judgement(prompt_id, "edited", edited_text="better")
    assert [p.pair_id for p in store.pairs()] == [f"j{first}", f"j{second}c{a}", f"j{second}c{b}"]
    assert store.count_pairs() == 3


def test_pairs_filter_by_session(store: Store) -> None:
    one, prompt_one, (a1, b1) = prompt_with_candidates(store)
    two, prompt_two, (a2, b2) = prompt_with_candidates(store)
    j1 = store.record_judgement(prompt_one, "a", a1, b1)
    j2 = store.record_judgement(prompt_two, "b", b2, a2)
    assert [p.judgement_id for p in store.pairs(session_id=one)] == [j1]
    assert [p.judgement_id for p in store.pairs(session_id=two)] == [j2]
    assert store.count_pairs() == 2 and store.count_pairs(session_id=999) == 0
    assert [j.id for j in store.judgements(session_id=two)] == [j2]


def test_jsonl_export_round_trips(store: Store, tmp_path: Path) -> None:
    _, prompt_id, (a, b) = prompt_with_candidates(store, ("naïve «reply»", "line one\nline two"))
    store.record_judgement(prompt_id, "a", a, b)
    store.record_judgement(prompt_id, "edited", edited_text='quoted "edit" 🙂')
    pairs = store.pairs()
    out = tmp_path / "export" / "pairs.jsonl"
    assert write_pairs_jsonl(pairs, out) == 3
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [pair.to_trl() for pair in pairs]
    assert all(set(row) == {"prompt", "chosen", "rejected"} for row in rows)
    assert [p.name for p in out.parent.iterdir()] == ["pairs.jsonl"]  # no temp file left behind
    assert write_pairs_jsonl([], out) == 0 and out.read_text() == ""


def test_pair_is_frozen() -> None:
    pair = PreferencePair("j1", "p", "t", "c", "r", 1, 1, "a", "now")
    with pytest.raises(AttributeError):
        pair.chosen = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("verdict", "kwargs", "message"),
    [
        ("a", {"foreign": True}, "does not belong"),
        ("maybe", {}, "unknown verdict"),
        ("edited", {"edited_text": "   "}, "empty"),
        ("edited", {}, "edited text"),
        ("a", {"rejected": None}, "both"),
        ("b", {"same": True}, "differ"),
        ("tie", {"edited_text": "x"}, "only goes with"),
        ("a", {"source": ""}, "source"),
    ],
)
def test_invalid_judgements_write_nothing(store: Store, verdict: str, kwargs: dict, message: str) -> None:
    _, prompt_id, (a, b) = prompt_with_candidates(store)
    _, _, (foreign, _) = prompt_with_candidates(store)
    chosen = foreign if kwargs.get("foreign") else a
    rejected = a if kwargs.get("same") else kwargs.get("rejected", b)
    with pytest.raises(ValueError, match=message):
        store.record_judgement(
            prompt_id,
            verdict,
            chosen,
            rejected,
            edited_text=kwargs.get("edited_text"),
            source=kwargs.get("source", "tui"),
        )
    assert count(store, "judgements") == 0
    assert not store.db.conn.in_transaction


def test_judgement_of_a_missing_prompt(store: Store) -> None:
    with pytest.raises(RecordNotFoundError, match="prompt"):
        store.record_judgement(999, "tie")
    assert count(store, "judgements") == 0


def test_judgement_is_visible_to_another_connection_at_once(store: Store, db_path: Path) -> None:
    _, prompt_id, (a, b) = prompt_with_candidates(store)
    judgement_id = store.record_judgement(prompt_id, "a", a, b, adapter="run-3")
    with sqlite3.connect(db_path) as reader:
        row = reader.execute(
            "SELECT verdict, adapter FROM judgements WHERE id = ?", [judgement_id]
        ).fetchone()
    reader.close()
    assert row == ("a", "run-3")
