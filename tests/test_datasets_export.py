"""Exporting pairs in TRL's formats from real SQLite: round trips, sources, filters, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from store import Store
from store.datasets.export import (
    dataset_export_pairs,
    judged_export_pairs,
    sibling_path,
    write_dataset_pairs,
    write_pairs,
)
from store.datasets.importing import import_dataset
from store.datasets.store_mixin import ExportPair
from studio.cli.datasets import make_datasets_app
from trainers.recorded_pairs import heldout_export_pairs

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
SHA = "0" * 64


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "studio.db"


@pytest.fixture
def store(db_path: Path):
    with Store.open(db_path) as opened:
        yield opened


def triples(store: Store, dataset: str) -> list[tuple[str, str, str]]:
    return [(p.prompt, p.chosen, p.rejected) for p in store.dataset_pairs(dataset)]


def judge(store: Store, session_id: int, verdict: str, texts=("reply A", "reply B"), edited=None) -> int:
    prompt_id = store.add_prompt(session_id, f"question {verdict}", [])
    ids = [store.add_candidate(prompt_id, slot, text, f"rendered {prompt_id}", "gemma", SHA, {}, slot)
           for slot, text in enumerate(texts)]
    if verdict in ("a", "b"):
        chosen, rejected = (ids[0], ids[1]) if verdict == "a" else (ids[1], ids[0])
        return store.record_judgement(prompt_id, verdict, chosen, rejected)
    return store.record_judgement(prompt_id, verdict, edited_text=edited)


def set_judged_at(store: Store, judgement_id: int, when: str) -> None:
    with store.db.conn:
        store.db.execute("UPDATE judgements SET created_at = ? WHERE id = ?", [when, judgement_id])


# Round trips


@pytest.mark.parametrize("fmt, out_name", [("jsonl", "pairs.jsonl"), ("parquet", "pairs.parquet"), ("hf", "pairs")])
def test_standard_round_trip(store: Store, tmp_path: Path, fmt: str, out_name: str) -> None:
    import_dataset(store, FIXTURES / "trl_standard.jsonl", name="original")
    out = tmp_path / out_name
    assert write_pairs(dataset_export_pairs(store, "original"), out, fmt) == 5
    report = import_dataset(store, out, name="back")
    assert report.format == "trl-standard"
    assert triples(store, "back") == triples(store, "original")


@pytest.mark.parametrize("fmt, out_name", [("jsonl", "all.jsonl"), ("parquet", "all.parquet"), ("hf", "all")])
def test_datasets_streamed_from_their_batches_write_what_the_pair_path_writes(store: Store, tmp_path: Path, fmt: str,
                                                                              out_name: str) -> None:
    import datasets

    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"prompt": f"P{i} \u00e9\"", "chosen": f"c{i}\n", "rejected": "r\t"}) + "\n"
                           for i in range(10000)))  # several stored batches
    import_dataset(store, big, name="big")
    import_dataset(store, FIXTURES / "hh.jsonl", name="hh")  # conversations: written with their flattened prompt
    chosen = [store.get_dataset("big"), store.get_dataset("hh")]
    fast, slow = tmp_path / "fast" / out_name, tmp_path / "slow" / out_name
    assert write_dataset_pairs(store, chosen, fast, fmt) == 10003
    assert write_pairs([p for record in chosen for p in dataset_export_pairs(store, record)], slow, fmt) == 10003
    if fmt == "jsonl":
        assert fast.read_bytes() == slow.read_bytes()
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        assert pq.read_table(fast).equals(pq.read_table(slow))
    else:
        assert datasets.load_from_disk(str(fast)).to_list() == datasets.load_from_disk(str(slow)).to_list()
    import_dataset(store, fast, name="back")
    assert triples(store, "back") == triples(store, "big") + triples(store, "hh")


@pytest.mark.parametrize("fmt, out_name", [("jsonl", "conv.jsonl"), ("parquet", "conv.parquet"), ("hf", "conv")])
def test_conversational_round_trip(store: Store, tmp_path: Path, fmt: str, out_name: str) -> None:
    import_dataset(store, FIXTURES / "hh.jsonl", name="original")
    import_dataset(store, FIXTURES / "trl_conversational.jsonl", name="original2")
    out = tmp_path / out_name
    pairs = [*dataset_export_pairs(store, "original"), *dataset_export_pairs(store, "original2")]
    assert write_pairs(pairs, out, fmt, conversational=True) == 6
    report = import_dataset(store, out, name="back")
    assert report.format == "trl-conversational"

    def raw(name: str) -> list[tuple]:
        return [(m["prompt_messages"], m["chosen"], m["rejected"]) for m in store.dataset_pair_messages(name)]

    assert raw("back") == raw("original") + raw("original2")
    assert triples(store, "back") == triples(store, "original") + triples(store, "original2")


def test_exporting_again_and_reimporting_adds_nothing(store: Store, tmp_path: Path) -> None:
    import_dataset(store, FIXTURES / "trl_standard.jsonl", name="original")
    out = tmp_path / "again.jsonl"
    write_pairs(dataset_export_pairs(store, "original"), out)
    assert import_dataset(store, out, name="original").n_added == 0


def test_conversational_rows_are_trl_message_lists(store: Store, tmp_path: Path) -> None:
    import_dataset(store, FIXTURES / "trl_standard.jsonl", name="plain")
    out = tmp_path / "conv.jsonl"
    write_pairs(dataset_export_pairs(store, "plain"), out, conversational=True)
    first = json.loads(out.read_text().splitlines()[0])
    assert first == {"prompt": [{"role": "user", "content": "What color is the sky?"}],
                     "chosen": [{"role": "assistant", "content": "Blue."}],
                     "rejected": [{"role": "assistant", "content": "Green."}]}


# Sources


def test_stance_items_become_pairs_preferring_a_side(store: Store) -> None:
    import_dataset(store, FIXTURES / "stance_train.json", name="ex")
    support = list(dataset_export_pairs(store, "ex"))
    oppose = list(dataset_export_pairs(store, "ex", prefer="oppose"))
    assert (support[0].prompt, support[0].chosen, support[0].rejected) == (
        "Should homework be optional?", "Yes, optional.", "No, required.")
    assert (oppose[0].chosen, oppose[0].rejected) == ("No, required.", "Yes, optional.")
    assert len(support) == 12 and support[0].pair_id.startswith("s")


def test_judged_pairs_filter_by_session_verdict_and_date(store: Store) -> None:
    first, second = store.create_session("sys"), store.create_session("sys")
    a = judge(store, first, "a")
    b = judge(store, first, "b")
    edited = judge(store, second, "edited", edited="my own reply")
    judge(store, second, "tie")
    set_judged_at(store, a, "2025-01-10T09:00:00.000000+00:00")
    set_judged_at(store, b, "2025-01-11T23:59:00.000000+00:00")
    set_judged_at(store, edited, "2025-01-12T00:00:00.000000+00:00")

    def ids(**kwargs) -> list[str]:
        return [p.pair_id for p in judged_export_pairs(store, **kwargs)]

    assert ids() == [f"j{a}", f"j{b}", *(f"j{edited}c{c.id}" for c in store.candidates(3))]
    assert ids(session=first) == [f"j{a}", f"j{b}"]
    assert ids(verdicts=["b", "edited"])[0] == f"j{b}" and f"j{a}" not in ids(verdicts=["b", "edited"])
    assert ids(since="2025-01-11", until="2025-01-11") == [f"j{b}"]
    assert ids(until="2025-01-10") == [f"j{a}"]
    assert ids(since="2025-01-12T00:00:00") == [p for p in ids() if p.startswith(f"j{edited}c")]
    with pytest.raises(ValueError, match="verdicts tie give no pairs"):
        judged_export_pairs(store, verdicts=["tie"])
    with pytest.raises(ValueError, match="cannot read the date 'yesterday'"):
        judged_export_pairs(store, since="yesterday")


def test_heldout_pairs_of_a_run(store: Store) -> None:
    session = store.create_session("sys")
    kept = judge(store, session, "a")
    import_dataset(store, FIXTURES / "trl_standard.jsonl", name="d")
    dataset_pair = store.dataset_pairs("d")[2]
    run_id = store.create_run({}, "gemma", "/tmp/out", [f"j{kept}"], [dataset_pair.pair_id, f"j{kept}", "j999"])
    found, missing = heldout_export_pairs(store, run_id)
    assert [p.pair_id for p in found] == [dataset_pair.pair_id, f"j{kept}"]
    assert (found[0].prompt, found[0].chosen) == (dataset_pair.prompt, dataset_pair.chosen)
    assert missing == ["j999"]


def test_heldout_items_of_an_exercise_run_are_support_preferred_pairs(store: Store) -> None:
    import_dataset(store, FIXTURES / "stance_train.json", name="ex")
    items = store.stance_items("ex")
    heldout = [f"stance:{items[-1].item_key}", f"stance:{items[-2].item_key}", "stance:no-such-item"]
    run_id = store.create_run({"dataset": "ex", "support_ratio": 0.1}, "gemma", "/tmp/out", [], heldout)
    found, missing = heldout_export_pairs(store, run_id)
    assert [(p.pair_id, p.prompt, p.chosen, p.rejected) for p in found] == [
        (heldout[0], items[-1].prompt, items[-1].support, items[-1].oppose),
        (heldout[1], items[-2].prompt, items[-2].support, items[-2].oppose)]
    assert missing == ["stance:no-such-item"]
    other = store.create_run({"dataset": "gone"}, "gemma", "/tmp/out", [], heldout[:1])
    assert heldout_export_pairs(store, other) == ([], heldout[:1])


# Writing


def test_a_failed_export_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "pairs.jsonl"
    out.write_text("old\n")

    def failing():
        yield ExportPair("x1", "p", "c", "r")
        raise RuntimeError("source broke")

    for fmt, path in (("jsonl", out), ("parquet", tmp_path / "p.parquet"), ("hf", tmp_path / "hfdir")):
        with pytest.raises(RuntimeError, match="source broke"):
            write_pairs(failing(), path, fmt)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


def test_hf_export_replaces_an_older_folder(store: Store, tmp_path: Path) -> None:
    import_dataset(store, FIXTURES / "trl_standard.jsonl", name="d")
    out = tmp_path / "hf"
    write_pairs(list(dataset_export_pairs(store, "d"))[:2], out, "hf")
    write_pairs(dataset_export_pairs(store, "d"), out, "hf")
    assert import_dataset(store, out, name="back").n_added == 5
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "studio.db" and "studio.db" not in p.name) == ["hf"]


def test_sibling_paths() -> None:
    assert sibling_path(Path("/x/pairs.jsonl"), "test_prompts") == Path("/x/pairs_test_prompts.jsonl")
    assert sibling_path(Path("/x/hfdir"), "test_prompts") == Path("/x/hfdir_test_prompts")


# The CLI


def test_cli_export_with_test_prompts_round_trips(store: Store, db_path: Path, tmp_path: Path) -> None:
    import_dataset(store, FIXTURES / "stance_train.json", name="ex", test_prompts_path=FIXTURES / "stance_test.json")
    app = make_datasets_app(lambda: db_path)
    runner = CliRunner()
    out = tmp_path / "export" / "ex.parquet"
    result = runner.invoke(app, ["export", "ex", "--out", str(out), "--prefer", "oppose", "--test-prompts"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"wrote 12 pair(s) to {out} (parquet, TRL standard)",
        f"wrote 4 test prompt(s) to {out.parent / 'ex_test_prompts.parquet'}",
    ]
    back = runner.invoke(app, ["import", str(out), "--name", "back", "--test-prompts",
                               str(out.parent / "ex_test_prompts.parquet")])
    assert back.output.strip() == ("stored 12 pairs (0 duplicates) in dataset 'back' (preference), and 4 test "
                                   "prompts (0 duplicates)")
    assert triples(store, "back")[0] == ("Should homework be optional?", "No, required.", "Yes, optional.")
    assert store.test_prompts("back") == store.test_prompts("ex")


def test_cli_export_all_judged_and_errors(store: Store, db_path: Path, tmp_path: Path) -> None:
    import_dataset(store, FIXTURES / "stance_train.json", name="ex")
    import_dataset(store, FIXTURES / "hh.jsonl", name="hh")
    judge(store, store.create_session("sys"), "a")
    app = make_datasets_app(lambda: db_path)
    runner = CliRunner()
    out = tmp_path / "all.jsonl"
    result = runner.invoke(app, ["export", "--all", "--judged", "--out", str(out), "--conversational"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote 16 pair(s) to {out} (jsonl, TRL conversational)"
    nothing = runner.invoke(app, ["export", "--out", str(tmp_path / "none.jsonl")])
    assert nothing.exit_code == 1 and "error: nothing to export" in nothing.output
    empty = runner.invoke(app, ["export", "--verdict", "edited", "--out", str(tmp_path / "none.jsonl")])
    assert empty.exit_code == 1 and "error: no pairs matched: nothing written" in empty.output
    assert not (tmp_path / "none.jsonl").exists()
    unknown = runner.invoke(app, ["export", "nope", "--out", str(tmp_path / "none.jsonl")])
    assert unknown.exit_code == 1 and "error: No dataset 'nope'" in unknown.output


def test_pairs_export_and_datasets_export_judged_write_the_same_file(db_path: Path, store: Store, tmp_path: Path,
                                                                      studio_home: Path) -> None:
    from studio.cli.app import app as prefstudio

    session = store.create_session("sys")
    judge(store, session, "a", texts=("naïve «reply»", 'quoted "reply"\nline two'))
    judge(store, session, "edited", texts=("one", "two"), edited="a better reply 🙂")
    runner = CliRunner()
    by_pairs = runner.invoke(prefstudio, ["--db", str(db_path), "pairs", "export", "--out", str(tmp_path / "p.jsonl")])
    by_datasets = runner.invoke(make_datasets_app(lambda: db_path),
                                ["export", "--judged", "--out", str(tmp_path / "d.jsonl")])
    assert by_pairs.exit_code == 0 and by_datasets.exit_code == 0, (by_pairs.output, by_datasets.output)
    written = (tmp_path / "p.jsonl").read_bytes()
    assert written == (tmp_path / "d.jsonl").read_bytes()
    assert [json.loads(line) for line in written.splitlines()] == [pair.to_trl() for pair in store.pairs()]


# Every feedback kind (issue 13): export from the studio, import the file, export the import: the same rows.

from store.datasets.feedback_export import dataset_feedback, studio_feedback, write_feedback  # noqa: E402
from store.datasets.files import DatasetImportError, iter_records, sniff_container  # noqa: E402


def _feedback_store(store: Store) -> None:
    """A session holding every feedback kind, with text that tests the formats (quotes, newlines, emoji)."""
    session = store.create_session("Be brief.")
    prompt, ids = store.add_prompt_with_candidates(
        session, 'Say "hi"\nnicely 🙂', [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"}],
        [{"text": text, "rendered_prompt": "User: Say hi\nAssistant:", "model_id": "m", "model_sha256": SHA,
          "sampling": {}, "seed": i} for i, text in enumerate([" Hi!", " Hello 🙂", " Go away.", ' "Hey"'])])
    store.record_ranking(prompt, [ids[1], ids[0], ids[3]])
    store.record_ranking(prompt, [], all_bad=True)
    store.record_label(ids[0], True)
    store.record_label(ids[2], False)
    store.record_ratings(ids[0], {"quality": 3, "helpfulness": 4})
    store.record_ratings(ids[2], {"toxicity": 4, "quality": 0})
    store.add_demonstration(prompt, " Hi there,\nfriend.", based_on_candidate_id=ids[0])
    store.record_judgement(prompt, "edited", edited_text=" Hello, friend.")


def _rows(path: Path) -> list[dict]:
    return [record for _, record in iter_records(path, sniff_container(path))]


FEEDBACK_VARIANTS = [("labels", False), ("labels", True), ("demonstrations", False), ("demonstrations", True),
                     ("ratings", False), ("rankings", False)]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
@pytest.mark.parametrize(("kind", "conversational"), FEEDBACK_VARIANTS)
def test_every_feedback_kind_round_trips(store: Store, tmp_path: Path, kind: str, conversational: bool,
                                         fmt: str) -> None:
    _feedback_store(store)
    suffix = {"jsonl": ".jsonl", "parquet": ".parquet", "hf": ""}[fmt]
    first, second = tmp_path / f"first{suffix}", tmp_path / f"second{suffix}"
    items = studio_feedback(store, kind, from_judgements=kind == "labels")
    assert write_feedback(items, kind, first, fmt, conversational) == len(items) > 0
    report = import_dataset(store, first, name="back")
    # An import keeps one of equal items (a candidate both ranked last and all-bad gives one bad label twice).
    distinct = list({json.dumps(row, sort_keys=True): row for row in _rows(first)}.values())
    assert (report.kind, report.n_read, report.n_added, report.n_skipped) == (kind, len(items), len(distinct), 0)
    assert write_feedback(dataset_feedback(store, [store.get_dataset("back")], kind), kind, second, fmt,
                          conversational) == len(distinct)
    assert _rows(second) == distinct
    assert import_dataset(store, second, name="back").n_added == 0  # the same items: all duplicates


def test_feedback_rows_are_the_trainers_formats(store: Store, tmp_path: Path) -> None:
    _feedback_store(store)
    out = tmp_path / "x.jsonl"
    write_feedback(studio_feedback(store, "labels"), "labels", out)
    assert _rows(out) == [{"prompt": "User: Say hi\nAssistant:", "completion": " Hi!", "label": True},
                          {"prompt": "User: Say hi\nAssistant:", "completion": " Go away.", "label": False}]
    write_feedback(studio_feedback(store, "demonstrations"), "demonstrations", out, conversational=True)
    assert _rows(out)[0] == {"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "ok"}, {"role": "user", "content": 'Say "hi"\nnicely 🙂'},
        {"role": "assistant", "content": " Hi there,\nfriend."}]}
    write_feedback(studio_feedback(store, "demonstrations"), "demonstrations", out)
    assert [row["completion"] for row in _rows(out)] == [" Hi there,\nfriend.", " Hello, friend."]
    write_feedback(studio_feedback(store, "ratings"), "ratings", out)
    assert [(row["response"], row["quality"], row["helpfulness"], row["toxicity"]) for row in _rows(out)] == [
        (" Hi!", 3, 4, None), (" Go away.", 0, None, 4)]
    write_feedback(studio_feedback(store, "rankings"), "rankings", out)
    assert [(row["responses"][0], row["ranking"], row["all_bad"]) for row in _rows(out)] == [
        (" Hi!", [1, 0, 3, 2], False), (" Hi!", [], True)]  # 3 of 4 ranked: the 4th is last alone


def test_rankings_export_as_pairs_and_import_back(store: Store, tmp_path: Path) -> None:
    _feedback_store(store)
    pairs = judged_export_pairs(store, verdicts=["ranked"])
    assert len(pairs) == 3 + 3  # b > a > d > c: every ordered pair of a full order of 4
    out = tmp_path / "ranked.jsonl"
    write_pairs(pairs, out)
    import_dataset(store, out, name="ranked")
    assert triples(store, "ranked") == [(p.prompt, p.chosen, p.rejected) for p in pairs]


def test_bad_feedback_records_are_named_by_line_or_skipped(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "ratings.jsonl"
    rows = [{"prompt": "P", "response": "R", "quality": 3}, {"prompt": "P", "response": "S", "quality": 5},
            {"prompt": "P", "response": "T", "quality": "high"}, {"prompt": "Q", "response": "U", "quality": 1},
            {"prompt": "Q", "response": "V", "Quality Score": 2}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DatasetImportError) as raised:
        import_dataset(store, path)
    assert str(raised.value) == (
        f"{path}: 1 record(s) with ratings outside 0–4: line 2: quality (5). 1 record(s) with attribute values that "
        "are not numbers: line 3: quality ('high'). 1 record(s) with unknown attributes (an attribute is a lower-case "
        "word: letters, digits, _): line 5: 'Quality Score'. Nothing was imported. Fix them, or pass --skip-bad to "
        "import the rest.")
    assert store.list_datasets() == []
    report = import_dataset(store, path, skip_bad=True)
    assert (report.kind, report.n_added, report.n_skipped) == ("ratings", 2, 3)
    assert [item.response for item in store.feedback_items("ratings")] == ["R", "U"]
    ranking = tmp_path / "rankings.jsonl"
    ranking.write_text(json.dumps({"prompt": "P", "responses": ["a", "b"], "ranking": [1, 1]}) + "\n")
    with pytest.raises(DatasetImportError, match="line 1: ranking \\[1, 1\\] over 2 responses"):
        import_dataset(store, ranking)


def test_cli_exports_each_kind_and_infers_it_from_the_dataset(db_path: Path, tmp_path: Path) -> None:
    with Store.open(db_path) as store:
        _feedback_store(store)
    app = make_datasets_app(lambda: db_path)
    runner = CliRunner()
    first = tmp_path / "labels.jsonl"
    implied = runner.invoke(app, ["export", "--kind", "labels", "--judged", "--from-judgements", "--out",
                                  str(tmp_path / "implied.jsonl")])
    assert implied.exit_code == 0 and implied.output.startswith("wrote 13 labels")
    done = runner.invoke(app, ["export", "--kind", "labels", "--judged", "--out", str(first)])
    assert done.exit_code == 0, done.output
    assert done.output.strip() == f"wrote 2 labels to {first} (jsonl, TRL unpaired preference)"
    imported = runner.invoke(app, ["import", str(first), "--name", "thumbs"])
    assert imported.output.strip() == "stored 2 labels (0 duplicates) in dataset 'thumbs' (labels)"
    assert "\tthumbs\tlabels\ttrl-unpaired\t2 labels\t" in runner.invoke(app, ["list"]).output
    second = tmp_path / "again.jsonl"
    assert runner.invoke(app, ["export", "thumbs", "--out", str(second)]).exit_code == 0
    assert second.read_bytes() == first.read_bytes()
    refused = runner.invoke(app, ["export", "--kind", "ratings", "--judged", "--verdict", "a", "--out",
                                  str(tmp_path / "r.jsonl")])
    assert refused.exit_code == 1 and "--verdict select pairs, not ratings" in refused.output


def test_an_imported_ranking_dataset_exports_as_pairs(db_path: Path, tmp_path: Path) -> None:
    raw = tmp_path / "rankings.jsonl"
    raw.write_text("".join(json.dumps(row) + "\n" for row in [
        {"prompt": "P", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]},  # full: c > a > b
        {"prompt": "Q", "responses": ["x", "y", "z", "w"], "ranking": [3]},  # partial: w > the rest, tied
        {"prompt": "R", "responses": ["m", "n"], "ranking": [], "all_bad": True}]))
    app = make_datasets_app(lambda: db_path)
    assert CliRunner().invoke(app, ["import", str(raw), "--name", "ranked"]).exit_code == 0
    out = tmp_path / "pairs.jsonl"
    done = CliRunner().invoke(app, ["export", "ranked", "--kind", "pairs", "--out", str(out)])
    assert done.exit_code == 0, done.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [
        ("P", "c", "a"), ("P", "c", "b"), ("P", "a", "b"), ("Q", "w", "x"), ("Q", "w", "y"), ("Q", "w", "z")]
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"prompt": "P", "completion": "c", "label": True}) + "\n")
    assert CliRunner().invoke(app, ["import", str(labels), "--name", "thumbs"]).exit_code == 0
    refused = CliRunner().invoke(app, ["export", "thumbs", "--kind", "pairs", "--out", str(tmp_path / "no.jsonl")])
    assert refused.exit_code == 1 and "holds labels, which make no pairs: export it with --kind labels" in refused.output
