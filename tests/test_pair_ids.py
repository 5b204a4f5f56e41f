"""The one codec for pair ids (store/pair_ids.py): every kind round-trips, bad ids are named, and the ids the
store, the trainers and an import really build are the codec's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from store import Store
from store.datasets.importing import import_dataset
from store.pair_ids import (
    PairId,
    PairIdError,
    dataset_pair_id,
    file_pair_id,
    judged_pair_id,
    pair_kind,
    parse_pair_id,
    stance_item_key,
    stance_pair_id,
)
from trainers.exercise import build_exercise_pairs
from trainers.pair_selection import read_dataset_file

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


@pytest.mark.parametrize(("text", "parsed"), [
    ("j12", PairId("judged", judgement_id=12)),
    ("j12c7", PairId("judged", judgement_id=12, candidate_id=7)),
    ("d40", PairId("dataset", row_id=40)),
    ("stance:q6", PairId("stance", item_key="q6")),
    ("stance:a:b c", PairId("stance", item_key="a:b c")),  # an item's own key, whatever it holds
    ("my data:3:0123456789ab", PairId("file", file_stem="my data", line=3, digest="0123456789ab")),
])
def test_every_kind_round_trips(text: str, parsed: PairId) -> None:
    assert parse_pair_id(text) == parsed
    assert str(parsed) == text
    assert pair_kind(text) == parsed.kind


def test_builders_and_parser_agree() -> None:
    assert judged_pair_id(3) == "j3" and judged_pair_id(3, 9) == "j3c9"
    assert dataset_pair_id(5) == "d5"
    assert stance_pair_id("k") == "stance:k" and stance_item_key("stance:k") == "k"
    assert stance_item_key("j3") is None
    assert file_pair_id("x", 1, "ab" * 6) == "x:1:abababababab"


@pytest.mark.parametrize("bad", ["", "j", "jx", "j3c", "d", "d-1", "x12", "stance:", "file:1:short", "j3 "])
def test_a_bad_id_is_named(bad: str) -> None:
    with pytest.raises(PairIdError, match=f"unknown pair id {bad!r}.*j<judgement>"):
        parse_pair_id(bad)
    assert pair_kind(bad) is None


def test_not_text_is_named() -> None:
    with pytest.raises(PairIdError, match="pair id 12 is not text"):
        parse_pair_id(12)  # type: ignore[arg-type]


def test_the_ids_the_studio_builds_are_the_codecs(tmp_path: Path) -> None:
    with Store.open(tmp_path / "studio.db") as store:
        session = store.create_session("sys")
        prompt_id = store.add_prompt(session, "q", [])
        a, b = (store.add_candidate(prompt_id, slot, text, "rendered", "gemma", "0" * 64, {}, slot)
                for slot, text in enumerate(("one", "two")))
        picked = store.record_judgement(prompt_id, "a", a, b)
        edited = store.record_judgement(prompt_id, "edited", edited_text="three")
        import_dataset(store, FIXTURES / "trl_standard.jsonl", name="d")
        judged = [parse_pair_id(p.pair_id) for p in store.pairs()]
        dataset = [parse_pair_id(p.pair_id) for p in store.dataset_pairs("d")]
    assert judged == [PairId("judged", judgement_id=picked), PairId("judged", judgement_id=edited, candidate_id=a),
                      PairId("judged", judgement_id=edited, candidate_id=b)]
    assert all(p.kind == "dataset" for p in dataset)
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "P", "chosen": " c", "rejected": " r"}) + "\n", encoding="utf-8")
    (row,) = read_dataset_file(data)
    assert parse_pair_id(row.pair_id).kind == "file" and parse_pair_id(row.pair_id).file_stem == "rows"
    (pair,) = build_exercise_pairs([{"id": "q1", "prompt": "Q?", "support": "Yes.", "oppose": "No."}], 1, 1.0)
    assert parse_pair_id(pair.pair_id) == PairId("stance", item_key="q1")
