"""Importing datasets from real fixture files into real SQLite: every format, detection, dedupe, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import pytest
import sqlite_utils
from conftest import prefstudio_bin, run_cli
from typer.testing import CliRunner

from store import SCHEMA_VERSION, RecordNotFoundError, Store
from store.datasets.files import DatasetImportError, _json_array_records
from store.datasets.importing import import_dataset
from store.datasets.store_mixin import StanceItem, TestPrompt
from studio.cli.datasets import make_datasets_app

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
DATASET_TABLES = ("datasets", "dataset_stance_items", "dataset_test_prompts", "dataset_pair_batches")


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


def fixture(name: str) -> Path:
    return FIXTURES / name


def triples(store: Store, dataset: str) -> list[tuple[str, str, str]]:
    return [(p.prompt, p.chosen, p.rejected) for p in store.dataset_pairs(dataset)]


def row_counts(store: Store) -> dict[str, int]:
    counts = {table: store.db[table].count for table in DATASET_TABLES}
    counts["pairs"] = store.db.execute("SELECT COALESCE(SUM(n_pairs), 0) FROM dataset_pair_batches").fetchone()[0]
    return counts


def jsonl_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def import_error(store: Store, path: Path, **kwargs) -> str:
    before = row_counts(store)
    with pytest.raises(DatasetImportError) as raised:
        import_dataset(store, path, **kwargs)
    assert row_counts(store) == before, "a failed import must write nothing"
    return str(raised.value)


# Each format


def test_stance_json_with_test_prompts(store: Store) -> None:
    report = import_dataset(store, fixture("stance_train.json"), name="chores",
                            test_prompts_path=fixture("stance_test.json"))
    assert (report.kind, report.format, report.n_read, report.n_added, report.n_test_prompts) == (
        "stance", "stance-json", 12, 12, 4)
    assert report.describe() == ("stored 12 items (0 duplicates) in dataset 'chores' (stance), "
                                 "and 4 test prompts (0 duplicates)")
    items = store.stance_items("chores")
    source = json.loads(fixture("stance_train.json").read_text())
    assert [(i.item_key, i.prompt, i.support, i.oppose) for i in items] == [
        (str(r["id"]), r["prompt"], r["support"], r["oppose"]) for r in source]
    assert isinstance(items[0], StanceItem) and items[0].id < items[-1].id
    tests = store.test_prompts("chores")
    assert tests[0] == TestPrompt("1", "Should libraries open on Sundays?") and len(tests) == 4
    record = store.get_dataset("chores")
    assert (record.kind, record.n_items, record.n_test_prompts) == ("stance", 12, 4)
    assert record.source_path == str(fixture("stance_train.json").resolve())
    assert store.get_dataset(record.id) == record == store.get_dataset(str(record.id))


def test_a_folder_with_a_test_file_imports_both(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "homework"
    folder.mkdir()
    shutil.copy(fixture("stance_train.json"), folder / "train.json")
    shutil.copy(fixture("stance_test.json"), folder / "test.json")
    report = import_dataset(store, folder)
    assert (report.name, report.n_added, report.n_test_prompts) == ("homework", 12, 4)


def test_trl_standard_explicit_jsonl(store: Store) -> None:
    report = import_dataset(store, fixture("trl_standard.jsonl"))
    assert (report.name, report.kind, report.format, report.n_added) == ("trl_standard", "preference",
                                                                         "trl-standard", 5)
    assert report.describe() == "stored 5 pairs (0 duplicates) in dataset 'trl_standard' (preference)"
    expected = [(r["prompt"], r["chosen"], r["rejected"]) for r in jsonl_records(fixture("trl_standard.jsonl"))]
    assert triples(store, "trl_standard") == expected
    pair = store.dataset_pairs("trl_standard")[0]
    assert pair.pair_id.startswith("d") and (pair.verdict, pair.session_id, pair.judgement_id) == ("dataset", -1, -1)
    assert store.dataset_pair_messages("trl_standard") == []


def test_trl_standard_implicit_prompt_follows_trl(store: Store) -> None:
    import_dataset(store, fixture("trl_standard_implicit.json"))
    # TRL's extract_prompt: the shared prefix, with the space before the split left to the replies.
    assert triples(store, "trl_standard_implicit") == [
        ("The sky is", " blue.", " green."),
        ("Two plus two is", " 4.", " 5."),
        ("Ice is", " cold.", " hot."),
    ]


def test_an_implicit_prompt_is_never_split_inside_a_word(store: Store, tmp_path) -> None:
    path = tmp_path / "word.json"
    path.write_text(json.dumps([{"chosen": "I like cats.", "rejected": "I like cars."},
                                {"chosen": "Say\nhello there", "rejected": "Say\nhelp me"}]))
    import_dataset(store, path)
    assert triples(store, "word") == [("I like", " cats.", " cars."), ("Say\n", "hello there", "help me")]


def test_trl_conversational_explicit(store: Store) -> None:
    report = import_dataset(store, fixture("trl_conversational.jsonl"))
    assert (report.format, report.n_added) == ("trl-conversational", 3)
    source = jsonl_records(fixture("trl_conversational.jsonl"))
    messages = store.dataset_pair_messages("trl_conversational")
    assert [m["prompt_messages"] for m in messages] == [r["prompt"] for r in source]
    assert [(m["chosen"], m["rejected"]) for m in messages] == [("Blue.", "Green."), ("Apple.", "Carrot."),
                                                                ("Rome.", "Milan.")]
    assert triples(store, "trl_conversational")[0][0] == (
        "System: Answer in one word.\n\nUser: What color is the sky?")
    assert triples(store, "trl_conversational")[2][0] == "Capital of Italy?"  # a lone user turn is its text


def test_trl_conversational_implicit(store: Store) -> None:
    import_dataset(store, fixture("trl_conversational_implicit.json"))
    messages = store.dataset_pair_messages("trl_conversational_implicit")
    assert messages[0]["prompt_messages"] == [{"role": "user", "content": "What is 2+2?"}]
    assert (messages[0]["chosen"], messages[0]["rejected"]) == ("4", "5")
    assert [m["role"] for m in messages[1]["prompt_messages"]] == ["user", "assistant", "user"]
    assert (messages[1]["chosen"], messages[1]["rejected"]) == ("Goodbye!", "No.")


def test_hh_transcripts_keep_every_turn(store: Store) -> None:
    report = import_dataset(store, fixture("hh.jsonl"))
    assert (report.format, report.n_added) == ("hh", 3)
    messages = store.dataset_pair_messages("hh")
    assert messages[1]["prompt_messages"] == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! What can I do for you?"},
        {"role": "user", "content": "Suggest a book."},
    ]
    assert (messages[1]["chosen"], messages[1]["rejected"]) == ("Try Moby-Dick.", "No.")
    assert triples(store, "hh")[0] == ("What is a good name for a cat?", "Whiskers is a classic.",
                                      "Cats do not need names.")


def test_parquet(store: Store, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = jsonl_records(fixture("trl_conversational.jsonl"))
    path = tmp_path / "conv.parquet"
    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=2)  # two row groups
    report = import_dataset(store, path)
    assert (report.format, report.n_added) == ("trl-conversational", 3)
    assert [m["prompt_messages"] for m in store.dataset_pair_messages("conv")] == [r["prompt"] for r in records]


def test_save_to_disk_folder_and_dataset_dict(store: Store, tmp_path: Path) -> None:
    import datasets

    records = jsonl_records(fixture("trl_standard.jsonl"))
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    report = import_dataset(store, tmp_path / "saved")
    assert (report.name, report.format, report.n_added) == ("saved", "trl-standard", 5)
    assert triples(store, "saved") == [(r["prompt"], r["chosen"], r["rejected"]) for r in records]
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:3]),
                                   "test": datasets.Dataset.from_list(records[3:])})
    splits.save_to_disk(str(tmp_path / "splits"))
    assert import_dataset(store, tmp_path / "splits").n_added == 3  # the train split


def test_json_lines_in_a_json_file_as_datasets_writes_them(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "to_json.json"
    shutil.copy(fixture("hh.jsonl"), path)
    assert import_dataset(store, path).n_added == 3


# Detection and override


def test_format_override_reads_hh_text_as_plain_strings(store: Store) -> None:
    report = import_dataset(store, fixture("hh.jsonl"), name="plain", fmt="trl-standard")
    assert report.format == "trl-standard"
    prompt, chosen, _ = triples(store, "plain")[0]
    assert prompt == "\n\nHuman: What is a good name for a cat?\n\nAssistant:" and chosen == " Whiskers is a classic."
    assert store.dataset_pair_messages("plain") == []


def test_format_override_of_schema_and_file_type(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    shutil.copy(fixture("trl_standard.jsonl"), path)
    assert import_dataset(store, path, fmt="trl-standard,jsonl").n_added == 5
    message = import_error(store, fixture("stance_train.json"), fmt="trl-standard")
    assert "stance_train.json: --format trl-standard does not fit: record 1 looks like stance-json" in message
    with pytest.raises(DatasetImportError, match="unknown or repeated format 'csv'"):
        import_dataset(store, path, fmt="csv")


# Duplicates and re-import


def test_importing_twice_adds_nothing(store: Store) -> None:
    import_dataset(store, fixture("stance_train.json"), test_prompts_path=fixture("stance_test.json"))
    before = row_counts(store)
    again = import_dataset(store, fixture("stance_train.json"), test_prompts_path=fixture("stance_test.json"))
    assert row_counts(store) == before
    assert (again.n_read, again.n_added, again.n_duplicates, again.n_test_prompts) == (12, 0, 12, 0)
    assert again.describe() == ("stored 0 items (12 duplicates) in dataset 'stance_train' (stance), "
                                "and 0 test prompts (4 duplicates)")


def test_reimport_adds_only_new_records(store: Store, tmp_path: Path) -> None:
    records = json.loads(fixture("stance_train.json").read_text())
    path = tmp_path / "grown.json"
    path.write_text(json.dumps(records[:10]))
    import_dataset(store, path, name="grown")
    path.write_text(json.dumps(records))  # the same ten and two new ones
    report = import_dataset(store, path, name="grown")
    assert (report.n_added, report.n_duplicates) == (2, 10)
    assert [i.item_key for i in store.stance_items("grown")] == [str(r["id"]) for r in records]


def test_same_content_under_another_id_is_a_duplicate(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "twice.json"
    path.write_text(json.dumps([{"id": 1, "prompt": "A?", "support": "Y", "oppose": "N"},
                                {"id": 2, "prompt": "A?", "support": "Y", "oppose": "N"}]))
    assert (import_dataset(store, path).n_added, store.get_dataset("twice").n_items) == (1, 1)


def test_duplicate_pairs_in_one_file_and_the_same_pair_in_another_dataset(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "P?", "chosen": "yes", "rejected": "no"}, {"prompt": "P?", "chosen": "no", "rejected": "yes"},
            {"prompt": "P?", "chosen": "yes", "rejected": "no"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = import_dataset(store, path, name="one")
    assert (first.n_read, first.n_added, first.n_duplicates) == (3, 2, 1)
    assert [(p.chosen, p.rejected) for p in store.dataset_pairs("one")] == [("yes", "no"), ("no", "yes")]
    # Content is unique within a dataset, not across datasets: another name stores its own copy.
    assert import_dataset(store, path, name="two").n_added == 2


def _version_3_file(path: Path, pairs: list[dict], first_id: int) -> None:
    """A studio file as schema 3 wrote it: one preference dataset of `pairs`, rows from `first_id`."""
    from store.datasets.store_mixin import content_hash
    from store.schema import MIGRATIONS

    db = sqlite_utils.Database(path)
    db["meta"].create({"key": str, "value": str}, pk="key")
    for migration in MIGRATIONS[:3]:
        migration(db)
    db["meta"].insert({"key": "schema_version", "value": "3"})
    db["datasets"].insert({"id": 1, "name": "kept", "kind": "preference", "format": "trl-standard",
                           "source_path": None, "created_at": "2026-11-01T00:00:00+00:00"})
    for offset, pair in enumerate(pairs):
        db["dataset_pairs"].insert({
            "id": first_id + offset, "dataset_id": 1, "prompt": pair["prompt"], "chosen": pair["chosen"],
            "rejected": pair["rejected"], "prompt_messages_json": None,
            "content_hash": content_hash(["pair", pair["prompt"], pair["chosen"], pair["rejected"]])})
    db.conn.commit()
    db.close()


def test_a_version_3_file_keeps_its_pairs_and_their_ids(tmp_path: Path) -> None:
    db_path = tmp_path / "v3.db"
    pairs = jsonl_records(fixture("trl_standard.jsonl"))
    _version_3_file(db_path, pairs, first_id=40)
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION and "dataset_pairs" not in store.db.table_names()
        kept = store.dataset_pairs("kept")
        assert [(p.prompt, p.chosen, p.rejected) for p in kept] == [(r["prompt"], r["chosen"], r["rejected"]) for r in pairs]
        assert [p.pair_id for p in kept] == [f"d{40 + i}" for i in range(len(pairs))]  # held-out ids still resolve
        assert [p.pair_id for p in store.dataset_pairs_by_row_ids([41, 40])] == ["d40", "d41"]
        again = import_dataset(store, fixture("trl_standard.jsonl"), name="kept")
        assert (again.n_added, again.n_duplicates) == (0, len(pairs))
        # New pairs get ids after every id the file already used.
        path = tmp_path / "more.jsonl"
        path.write_text(json.dumps({"prompt": "New?", "chosen": "Yes.", "rejected": "No."}) + "\n")
        import_dataset(store, path, name="kept")
        assert store.dataset_pairs("kept")[-1].pair_id == f"d{40 + len(pairs)}"


def test_a_name_keeps_its_kind(store: Store) -> None:
    import_dataset(store, fixture("stance_train.json"), name="mine")
    message = import_error(store, fixture("trl_standard.jsonl"), name="mine")
    assert message == ("dataset 'mine' holds stance data and this import is preference data: choose "
                       "another --name.")


def test_pairs_with_equal_replies_are_skipped_and_named(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "same.jsonl"
    path.write_text('{"prompt": "P", "chosen": "x", "rejected": "y"}\n{"prompt": "Q", "chosen": "z", "rejected": "z"}\n')
    report = import_dataset(store, path)
    assert (report.n_added, report.n_skipped) == (1, 1)
    assert report.describe().endswith("; skipped 1 with chosen equal to rejected (line 2)")


def test_unknown_dataset_lists_known_names(store: Store) -> None:
    with pytest.raises(RecordNotFoundError, match="none imported yet"):
        store.get_dataset("missing")
    import_dataset(store, fixture("hh.jsonl"))
    with pytest.raises(RecordNotFoundError, match=r"No dataset 'missing' in .*\(known: hh\)"):
        store.stance_items("missing")
    with pytest.raises(ValueError, match="dataset 'hh' is a preference dataset, not stance"):
        store.stance_items("hh")


# Bad input: a clear message, nothing written


def test_malformed_json_names_line_and_column(store: Store) -> None:
    message = import_error(store, fixture("malformed.json"))
    assert message == f"{fixture('malformed.json')}: malformed JSON at line 3, column 47: Expecting ',' delimiter."


def test_malformed_json_lines_names_line_and_column(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "P", "chosen": "a", "rejected": "b"}\n\n{"prompt": "Q", "chosen": "a",}\n')
    assert import_error(store, path) == (
        f"{path}: malformed JSON at line 3, column 31: Expecting property name enclosed in double quotes.")


def test_missing_fields_name_records_and_fields(store: Store) -> None:
    message = import_error(store, fixture("missing_fields.json"))
    assert message == (
        f"{fixture('missing_fields.json')}: 3 record(s) with missing fields: id 2: oppose; id 3: support, oppose; "
        "record 4: id. 1 record(s) with fields that are not text: id 5: support (int). Nothing was imported. "
        "Fix them, or pass --skip-bad to import the rest."
    )


def test_many_problems_are_capped_at_ten(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": "P", "support": "S"}) + "\n" for i in range(1, 26)))
    message = import_error(store, path)
    assert "25 record(s) with missing fields: id 1: oppose;" in message
    assert "id 10: oppose; and 15 more. Nothing was imported." in message and "--skip-bad" in message


def test_mixed_schemas(store: Store) -> None:
    assert import_error(store, fixture("mixed.jsonl")) == (
        f"{fixture('mixed.jsonl')}: mixed schemas: line 1 is stance-json but line 3 is trl-standard (fields: "
        "prompt, chosen, rejected). Split the file, or pass --format to read every record as one.")


def test_unknown_schema(store: Store) -> None:
    message = import_error(store, fixture("unknown.json"))
    assert message.startswith(f"{fixture('unknown.json')}: unknown schema: record 1 has fields question, answer; "
                              "expected one of: stance-json {id, prompt, support, oppose}")


def test_test_prompt_file_alone_is_explained(store: Store) -> None:
    assert "looks like a test-prompt file (record 1 has only id and prompt): import the labelled items and " \
           "pass this file with --test-prompts" in import_error(store, fixture("stance_test.json"))


def test_non_utf8_names_the_byte_offset(store: Store) -> None:
    path = fixture("not_utf8.jsonl")
    offset = path.read_bytes().index(b"\xe9")
    assert import_error(store, path) == (
        f"{path}: not UTF-8 text: byte 0xe9 at byte offset {offset} (line 2). Convert the file to UTF-8 and "
        "import it again.")


def test_non_utf8_in_a_json_array(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[{"id": 1, "prompt": "Caf\xe9?", "support": "Oui", "oppose": "Non"}]')
    offset = path.read_bytes().index(b"\xe9")
    assert f"not UTF-8 text: byte 0xe9 at byte offset {offset} (line 1)" in import_error(store, path)


@pytest.mark.parametrize("content, detail", [
    ("", "is empty: no records to import."),
    ("  \n\n", "is empty: no records to import."),
    ("[]", "holds an empty array: no records to import."),
])
def test_empty_files(store: Store, tmp_path: Path, content: str, detail: str) -> None:
    path = tmp_path / "empty.json"
    path.write_text(content)
    assert import_error(store, path) == f"{path} {detail}"
    assert import_error(store, fixture("empty.json")) == f"{fixture('empty.json')} is empty: no records to import."


def test_support_equal_to_oppose(store: Store) -> None:
    assert import_error(store, fixture("support_equals_oppose.json")) == (
        f"{fixture('support_equals_oppose.json')}: 2 record(s) with support equal to oppose: id 2; id 4. "
        "Nothing was imported. Fix them, or pass --skip-bad to import the rest.")


def test_a_late_bad_record_rolls_back_batches_already_inserted(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    good = "".join(json.dumps({"prompt": f"P{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(2500))
    path.write_text(good + '{"prompt": "last", "chosen": "a"\n')
    message = import_error(store, path)
    assert message.startswith(f"{path}: malformed JSON at line 2501, column")
    path.write_text(good + '{"prompt": "last", "chosen": "a"}\n')
    assert "1 record(s) with missing fields: line 2501: rejected" in import_error(store, path)
    assert store.list_datasets() == []


# Large files: Arrow reads clean chunks, the record path the rest; both must give the same result


def _exact_pairs(path: Path) -> tuple[list[tuple], int, list[str]]:
    """What the record-by-record path makes of a standard file: its rows, skips and skipped places."""
    from store.datasets.files import iter_records, sniff_container
    from store.datasets.formats import SchemaReader

    reader = SchemaReader(path, "trl-standard", auto=True)
    rows = [row[:3] for row in reader.rows(iter_records(path, sniff_container(path)))]
    return rows, reader.n_skipped, reader.skipped


def _big_standard_lines(n: int) -> list[str]:
    return [json.dumps({"prompt": f"Q{i} \u00e9t\u00e9 \U0001f600?", "chosen": f"Yes {i}. " * 30,
                        "rejected": f"No {i}.", "source": "gen"}, ensure_ascii=i % 2 == 0) for i in range(n)]


def test_a_many_chunk_file_imports_as_the_record_path_reads_it(store: Store, tmp_path: Path) -> None:
    lines = _big_standard_lines(9000)  # about 3 MB: several Arrow chunks
    lines[10] = ""  # a blank line
    lines[5000] = json.dumps({"prompt": "Same?", "chosen": "same", "rejected": "same"})  # skipped, named
    lines[7000] = lines[6999]  # a duplicate
    lines[8000] = json.dumps({"prompt": "Only text?", "chosen": 1.5, "rejected": "x"}).replace("1.5", '"1.5"')
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size > 3 * (1 << 20)
    rows, n_skipped, skipped = _exact_pairs(path)
    report = import_dataset(store, path)
    assert triples(store, "big") == list(dict.fromkeys(rows))
    assert (report.n_read, report.n_added, report.n_duplicates) == (len(rows), len(rows) - 1, 1)
    assert (report.n_skipped, report.skipped) == (n_skipped, tuple(skipped)) == (1, ("line 5001",))


@pytest.mark.parametrize(("line", "expected"), [
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}{"prompt": "d", "chosen": "e", "rejected": "f"}',
     "malformed JSON at line 8001, column 48: Extra data"),
    ('{"prompt": "a", "chosen": null, "rejected": "c"}', "1 record(s) with missing fields: line 8001: chosen"),
    ('{"prompt": "a", "chosen": ["b"], "rejected": "c"}', "mixed schemas: line 1 is trl-standard but line 8001 is "
                                                          "trl-conversational"),
    ('{"id": 3, "prompt": "a", "support": "b", "oppose": "c"}', "mixed schemas: line 1 is trl-standard but line "
                                                                 "8001 is stance-json"),
])
def test_a_bad_record_in_a_late_chunk_is_named_by_its_line(store: Store, tmp_path: Path, line: str,
                                                           expected: str) -> None:
    lines = _big_standard_lines(9000)
    lines[8000] = line
    path = tmp_path / "late.jsonl"
    path.write_text("\n".join(lines) + "\n")
    message = import_error(store, path)
    assert expected in message, message
    assert store.list_datasets() == []


def test_only_plain_standard_chunks_skip_the_record_path(tmp_path: Path) -> None:
    import pyarrow as pa

    from store.datasets.formats import SchemaReader

    reader = SchemaReader(tmp_path / "x.jsonl", "trl-standard", auto=True)
    reader.begin("line 1", {"prompt": "p", "chosen": "a", "rejected": "b"})
    plain = {"prompt": ["p", "q"], "chosen": ["a", "c"], "rejected": ["b", "d"]}
    batch = reader.arrow_pairs(pa.table({**plain, "extra": [1, 2]}))
    assert batch is not None and batch.to_pydict() == {**plain, "prompt_messages_json": [None, None]}
    for unusual in ({**plain, "chosen": ["a", None]}, {**plain, "rejected": ["b", "c"][:1] + ["c"]},
                    {**plain, "chosen": ["a", "d"]}, {**plain, "support": ["s", "t"]},
                    {"chosen": plain["chosen"], "rejected": plain["rejected"]}, {**plain, "prompt": [1, 2]}):
        assert reader.arrow_pairs(pa.table(unusual)) is None, unusual
    invalid = pa.array([b"ok", b"caf\xe9"], pa.binary()).view(pa.string())  # not UTF-8, as Arrow's JSON reader leaves it
    assert reader.arrow_pairs(pa.table({**plain, "prompt": invalid})) is None
    assert SchemaReader(tmp_path / "x.jsonl", "hh", auto=True).arrow_pairs(pa.table(plain)) is None


def test_parquet_batches_with_a_null_are_read_record_by_record(store: Store, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"P{i}", "chosen": f"c{i}", "rejected": "r"} for i in range(10000)]
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3000)
    report = import_dataset(store, path)
    assert report.n_added == 10000 and triples(store, "pairs") == [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    rows[9500]["rejected"] = None
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3000)
    assert "1 record(s) with missing fields: row 9501: rejected" in import_error(store, path, name="again")


def test_lone_surrogate_escapes_are_named(store: Store, tmp_path: Path) -> None:
    # Valid JSON, but "\ud800" alone is no Unicode character: UTF-8, SQLite and Arrow cannot hold it.
    path = tmp_path / "surrogate.jsonl"
    path.write_text('{"prompt": "P", "chosen": "x", "rejected": "y"}\n'
                    '{"prompt": "Q\\ud800", "chosen": "x", "rejected": "y\\udfff"}\n')
    assert ("1 record(s) with text with an unpaired surrogate escape such as \\ud800 (not Unicode): "
            "line 2: prompt, rejected") in import_error(store, path)
    paired = tmp_path / "emoji.jsonl"
    paired.write_text('{"prompt": "\\ud83d\\ude00", "chosen": "x", "rejected": "y"}\n')  # a pair: fine
    assert import_dataset(store, paired).n_added == 1 and triples(store, "emoji")[0][0] == "\U0001f600"


def test_a_json_object_is_not_a_record_list(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "object.json"
    path.write_text('{\n  "prompt": ["A?"],\n  "chosen": ["Y"]\n}\n')
    assert "holds one JSON object (keys: prompt, chosen); expected a JSON array of records or JSON Lines" in \
        import_error(store, path)


def test_missing_path(store: Store, tmp_path: Path) -> None:
    assert import_error(store, tmp_path / "nope.json") == f"{tmp_path / 'nope.json'}: no such file or folder."


# The incremental JSON array reader


def test_json_array_reader_matches_json_loads_across_chunk_boundaries(tmp_path: Path) -> None:
    records = [{"id": i, "text": "é" * (i % 7) + "\n" * (i % 2), "n": [i, 1.5e3, None, True]} for i in range(60)]
    path = tmp_path / "array.json"
    path.write_text("\ufeff \n[\n" + ",\n ".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n] \n",
                    encoding="utf-8")
    for chunk in (1, 3, 7, 64, 1 << 18):
        read = list(_json_array_records(path, chunk=chunk))
        assert [r for _, r in read] == records
        assert read[5][0] == "record 6"


@pytest.mark.parametrize("text, position, what", [
    ('[{"a": 1},\n {"a": 2},]', "line 2, column 11", "a trailing ',' before ']'"),
    ('[{"a": 1}\n {"a": 2}]', "line 2, column 2", "expected ',' or ']' after a record"),
    ('[{"a": 1},\n {"a": 2}', "line 2, column 10", "the file ends inside the array (missing ']')"),
    ('[{"a": 1}] x', "line 1, column 12", "extra data after the array"),
    ('[{"a": 1},\n\n   {"a": tru}]', "line 3, column 10", "Expecting value"),
])
def test_json_array_reader_errors_point_at_the_place(tmp_path: Path, text: str, position: str, what: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    for chunk in (2, 1 << 18):
        with pytest.raises(DatasetImportError) as raised:
            list(_json_array_records(path, chunk=chunk))
        assert str(raised.value) == f"{path}: malformed JSON at {position}: {what}."


def _import_peak(tmp_path: Path, suffix: str, n: int) -> tuple[int, int]:
    """(file size, peak Python memory) of importing `n` long records into a fresh store."""
    records = ({"prompt": f"Question {i}: " + "why? " * 40, "chosen": f"Because {i}. " * 16, "rejected": "No. " * 20}
               for i in range(n))
    path = tmp_path / f"big{n}{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(list(records)))
    with Store.open(tmp_path / f"big{n}.db") as store:
        tracemalloc.start()
        try:
            report = import_dataset(store, path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert report.n_added == n
    return path.stat().st_size, peak


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_import_streams_with_bounded_memory(tmp_path: Path, suffix: str) -> None:
    # Four times the records: the import's memory grows only by the set of content digests it keeps to
    # skip duplicates (about 100 bytes a record), far less than the file grows; reading the file whole
    # would grow it by at least the file's growth.
    small_size, small_peak = _import_peak(tmp_path, suffix, 10000)
    big_size, big_peak = _import_peak(tmp_path, suffix, 40000)
    assert big_size - small_size > 15_000_000
    assert big_peak - small_peak < 0.3 * (big_size - small_size), (small_peak, big_peak, small_size, big_size)
    assert big_peak < 0.6 * big_size


# The CLI


def test_cli_import_list_show(tmp_path: Path) -> None:
    app = make_datasets_app(lambda: tmp_path / "cli.db")
    runner = CliRunner()
    result = runner.invoke(app, ["import", str(fixture("stance_train.json")), "--name", "ex",
                                 "--test-prompts", str(fixture("stance_test.json"))])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == ("stored 12 items (0 duplicates) in dataset 'ex' (stance), and 4 test prompts "
                                     "(0 duplicates)")
    again = runner.invoke(app, ["import", str(fixture("stance_train.json")), "--name", "ex"])
    assert again.output.strip() == "stored 0 items (12 duplicates) in dataset 'ex' (stance)"
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0 and "\tex\tstance\tstance-json\t12 items\t4 test prompts\t" in listed.output
    shown = runner.invoke(app, ["show", "ex", "--limit", "2"])
    assert shown.exit_code == 0
    assert shown.output.splitlines()[0] == "dataset 'ex' (id 1): stance, stance-json, 12 items, 4 test prompts"
    assert "1\tShould homework be optional?\tsupport: Yes, optional.\toppose: No, required." in shown.output
    assert runner.invoke(app, ["import", str(fixture("trl_standard.jsonl"))]).exit_code == 0
    pairs = runner.invoke(app, ["show", "trl_standard", "--limit", "2"])
    assert pairs.exit_code == 0
    assert pairs.output.splitlines()[2:] == ["d1\tWhat color is the sky?\tchosen: Blue.\trejected: Green.",
                                             "d2\tName a prime number.\tchosen: Seven.\trejected: Nine."]


def test_cli_bad_input_is_one_error_line(tmp_path: Path) -> None:
    app = make_datasets_app(lambda: tmp_path / "cli.db")
    result = CliRunner().invoke(app, ["import", str(fixture("malformed.json"))])
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: {fixture('malformed.json')}: malformed JSON at line 3, column 47: "
                                     "Expecting ',' delimiter.")
    shown = CliRunner().invoke(app, ["show", "nothing"])
    assert shown.exit_code == 1 and "error: No dataset 'nothing'" in shown.output


def _prefstudio_has_datasets() -> bool:
    try:
        return subprocess.run([prefstudio_bin(), "datasets", "--help"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_installed_prefstudio_imports_a_dataset(tmp_path: Path) -> None:
    if not _prefstudio_has_datasets():
        pytest.skip("`prefstudio datasets` is not wired into studio/cli/app.py yet")
    home = tmp_path / "home"
    proc = run_cli("datasets", "import", str(fixture("hh.jsonl")), home=home, check=True)
    assert proc.stdout.strip() == "stored 3 pairs (0 duplicates) in dataset 'hh' (preference)"
    listed = run_cli("datasets", "list", home=home, check=True)
    assert "\thh\tpreference\thh\t3 pairs\t" in listed.stdout
    bad = run_cli("datasets", "import", str(fixture("empty.json")), home=home)
    assert bad.returncode == 1 and bad.stderr.strip() == f"error: {fixture('empty.json')} is empty: no records to import."


def test_the_fast_hash_is_the_canonical_json_hash() -> None:
    from store.datasets.store_mixin import _text_digest, content_hash

    texts = ("Caf\u00e9 \"quoted\"\n\t\\", "\u2028 line sep", "")
    assert _text_digest("pair", *texts).hex() == content_hash(["pair", *texts])


def test_batch_digests_are_the_pair_digest_of_each_row() -> None:
    import pyarrow as pa

    from store.datasets.pair_batches import INPUT_SCHEMA, batch_digests, pair_digest

    messages = json.dumps([{"role": "user", "content": "Hi"}])
    rows = {"prompt": ["P", "User: Hi", "P", "caf\u00e9\x1f"], "chosen": ["a", "b", "a\xffb"[:1], "\U0001f600"],
            "rejected": ["b", "c", "", "x"], "prompt_messages_json": [None, messages, None, None]}
    digests = batch_digests(pa.RecordBatch.from_pydict(rows, schema=INPUT_SCHEMA))
    expected = [pair_digest(m or p, c, r, m is not None) for p, c, r, m in zip(*rows.values(), strict=True)]
    assert digests == expected and len(set(digests)) == 4
    # Texts that only differ in where one ends and the next begins do not collide.
    assert pair_digest("ab", "c", "d", False) != pair_digest("a", "bc", "d", False)
    assert pair_digest("P", "a", "b", False) != pair_digest("P", "a", "b", True)


# Public data as it really is (issue 13): Anthropic HH's test file has 2,312 transcripts, 5 of whose chosen and
# rejected differ before the final reply.

HH_RECORDS = 2312
HH_DIVERGENT_LINES = (17, 402, 1100, 1789, 2311)


def _hh_transcript(turns: list[tuple[str, str]]) -> str:
    return "".join(f"\n\nHuman: {human}\n\nAssistant: {assistant}" for human, assistant in turns)


def _hh_record(i: int, divergent: bool) -> dict[str, str]:
    # Multi-turn, like the real file: one to three earlier exchanges, then the final reply that differs.
    earlier = [(f"Question {i}.{t}: what about topic {i * 7 + t}?", f"Some earlier answer {i}.{t}.")
               for t in range(i % 3)]
    last = f"Final question {i}: can you help with item {i}?"
    chosen = _hh_transcript([*earlier, (last, f"Yes, here is a careful answer about item {i}.")])
    if divergent:  # the rejected side's conversation went differently before the final reply
        earlier = [(f"Question {i}.0: something else entirely {i}?", "A different earlier answer.")]
    rejected = _hh_transcript([*earlier, (last, f"No. Item {i} is not my problem.")])
    return {"chosen": chosen, "rejected": rejected}


@pytest.fixture(scope="module")
def hh_public_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hh") / "harmless-base-test.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for line in range(1, HH_RECORDS + 1):
            out.write(json.dumps(_hh_record(line, line in HH_DIVERGENT_LINES)) + "\n")
    return path


def test_well_formed_records_that_cannot_be_pairs_are_skipped_and_the_rest_imports(
        store: Store, hh_public_file: Path) -> None:
    report = import_dataset(store, hh_public_file)
    assert (report.format, report.n_read, report.n_added) == ("hh", HH_RECORDS - 5, HH_RECORDS - 5)
    assert report.n_skipped == 5 and report.skipped == tuple(f"line {n}" for n in HH_DIVERGENT_LINES)
    [group] = report.skips
    assert (group.reason, group.count, group.malformed) == (
        "chosen and rejected differing before the final Assistant reply", 5, False)
    assert report.describe().endswith(
        "; skipped 5 with chosen and rejected differing before the final Assistant reply "
        "(line 17, line 402, line 1100, line 1789, line 2311)")
    assert store.get_dataset("harmless-base-test").n_items == HH_RECORDS - 5
    pair = store.dataset_pairs("harmless-base-test")[0]
    assert pair.chosen == "Yes, here is a careful answer about item 1." and "Human: Final question 1" not in pair.chosen


def _with_malformed(source: Path, target: Path) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[99] = '{"chosen": "\\n\\nHuman: Hi\\n\\nAssistant: Hello", "rejected": 42}\n'  # wrong type
    lines[199] = '{"chosen": "\\n\\nHuman: Hi\\n\\nAssistant: Hello"}\n'  # a missing field
    lines[299] = '{"chosen": "\\n\\nHuman: Hi\\n\\nAssistant: Hello", "rejected": \n'  # not JSON
    target.write_text("".join(lines), encoding="utf-8")
    return target


def test_malformed_records_still_refuse_the_whole_file(store: Store, hh_public_file: Path, tmp_path: Path) -> None:
    path = _with_malformed(hh_public_file, tmp_path / "hh-bad.jsonl")
    message = import_error(store, path)
    assert message.startswith(f"{path}: malformed JSON at line 300")
    path.write_text("".join(line for n, line in enumerate(path.read_text().splitlines(keepends=True), 1) if n != 300))
    message = import_error(store, path)
    assert "1 record(s) with missing fields: line 200: rejected" in message
    assert "1 record(s) with fields that are not text: line 100: rejected (int)" in message
    assert message.endswith("Nothing was imported. Fix them, or pass --skip-bad to import the rest.")
    assert store.list_datasets() == []


def test_skip_bad_leaves_malformed_records_out_and_reports_them(
        store: Store, hh_public_file: Path, tmp_path: Path) -> None:
    path = _with_malformed(hh_public_file, tmp_path / "hh-bad.jsonl")
    report = import_dataset(store, path, skip_bad=True)
    assert report.n_added == HH_RECORDS - 5 - 3 and report.n_skipped == 8
    by_reason = {group.reason: (group.count, group.places, group.malformed) for group in report.skips}
    assert by_reason == {
        "fields that are not text": (1, ("line 100: rejected (int)",), True),
        "missing fields": (1, ("line 200: rejected",), True),
        "malformed JSON": (1, ("line 300",), True),
        "chosen and rejected differing before the final Assistant reply": (
            5, tuple(f"line {n}" for n in HH_DIVERGENT_LINES), False),
    }
    assert report.describe().startswith(f"stored {HH_RECORDS - 8} pairs (0 duplicates) in dataset 'hh-bad' "
                                        "(preference); skipped 8: ")


def test_cli_skip_bad(tmp_path: Path, hh_public_file: Path) -> None:
    path = _with_malformed(hh_public_file, tmp_path / "hh-bad.jsonl")
    app = make_datasets_app(lambda: tmp_path / "cli.db")
    refused = CliRunner().invoke(app, ["import", str(path)])
    assert refused.exit_code == 1 and "malformed JSON at line 300" in refused.output
    done = CliRunner().invoke(app, ["import", str(path), "--skip-bad"])
    assert done.exit_code == 0, done.output
    assert f"stored {HH_RECORDS - 8} pairs" in done.output and "1 with malformed JSON (line 300)" in done.output


def test_skip_bad_on_the_chunked_path_names_lines_across_chunks(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    lines = [json.dumps({"prompt": f"Prompt {i} " + "x" * 40, "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
             for i in range(30_000)]  # about 2.3 MB: several Arrow chunks
    lines[24_999] = '{"prompt": "P", "chosen": "a", "rejected": \n'
    lines[29_999] = json.dumps({"prompt": "P", "chosen": 7, "rejected": "b"}) + "\n"
    path.write_text("".join(lines))
    assert path.stat().st_size > 2 << 20
    assert "malformed JSON at line 25000" in import_error(store, path)
    report = import_dataset(store, path, skip_bad=True)
    assert (report.n_added, report.n_skipped) == (29_998, 2)
    assert {group.reason: group.places for group in report.skips} == {
        "malformed JSON": ("line 25000",), "fields that are not text": ("line 30000: chosen (int)",)}
