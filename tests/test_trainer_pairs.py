"""Which pairs a run trains on: filtering with counts, sampling, the seeded split, the dataset hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_model import fill_separable, judge, rendered

from store.studio_store import Store
from trainers.pair_selection import (
    PairSelectionError,
    TrainingPair,
    completion_like,
    read_dataset_file,
    select_from_store,
    select_pairs,
)
from trainers.run.lifecycle import prepare_run
from trainers.run_config import RunConfig, RunConfigError


@pytest.fixture
def store(tmp_path: Path, studio_home: Path):
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


def pair(i: int, chosen: str = " good", rejected: str = " bad", prompt: str | None = None) -> TrainingPair:
    return TrainingPair(f"p{i}", prompt or rendered(f"question {i}"), chosen, rejected)


def test_duplicates_and_identical_pairs_are_dropped_and_counted() -> None:
    pairs = [pair(1), pair(2), pair(3, chosen=" same", rejected=" same"), pair(4, prompt=rendered("question 1")),
             pair(5, chosen=" same ", rejected=" same")]
    selection = select_pairs(pairs, seed=1, heldout_fraction=0.0)
    assert selection.train_ids == ["p1", "p2"]
    report = selection.report
    assert (report.total, report.duplicates, report.chosen_equals_rejected, report.used) == (5, 1, 2, 2)
    assert "1 duplicate(s) dropped" in report.describe() and "2 with chosen = rejected dropped" in report.describe()


def test_ties_and_both_bad_make_no_pairs_and_are_counted(store: Store) -> None:
    session = store.create_session("")
    judge(store, session, "q1", "yes", "no", verdict="a")
    judge(store, session, "q2", "yes", "no", verdict="b")
    judge(store, session, "q3", "yes", "no", verdict="tie")
    judge(store, session, "q4", "yes", "no", verdict="both_bad")
    judge(store, session, "q5", "yes", "no", verdict="edited", edited="Yes, certainly.")
    selection = select_from_store(store, session_id=session, seed=0, heldout_fraction=0.0)
    report = selection.report
    assert report.excluded_judgements == 2
    assert report.total == 4  # a, b, and the edit against each of the two candidates
    chosen = {p.chosen for p in selection.train}
    assert chosen == {" yes", " no", " Yes, certainly."}  # the stored-stripped edit gets the model's space


def test_only_ties_is_a_clear_error(store: Store) -> None:
    session = store.create_session("")
    judge(store, session, "q1", "yes", "no", verdict="tie")
    judge(store, session, "q2", "yes", "no", verdict="both_bad")
    with pytest.raises(PairSelectionError, match="ties or both-bad"):
        select_from_store(store, session_id=session, seed=0, heldout_fraction=0.0)


def test_empty_store_and_all_filtered_are_clear_errors(store: Store) -> None:
    with pytest.raises(PairSelectionError, match="no preference pairs in the store: judge some"):
        select_from_store(store, session_id=None, seed=0, heldout_fraction=0.1)
    with pytest.raises(PairSelectionError, match="all 2 pair.*filtered out.*2 with chosen = rejected"):
        select_pairs([pair(1, " x", " x"), pair(2, " y", "y")], seed=0, heldout_fraction=0.0)


def test_session_filter(store: Store) -> None:
    first = fill_separable(store)
    second = store.create_session("")
    judge(store, second, "other", "fine", "bad")
    assert len(select_from_store(store, session_id=first, seed=0, heldout_fraction=0.0).train) == 6
    only = select_from_store(store, session_id=second, seed=0, heldout_fraction=0.0)
    assert [p.chosen for p in only.train] == [" fine"] and only.report.source == f"session {second}"


def test_split_and_sample_are_seeded_and_hashed() -> None:
    pairs = [pair(i) for i in range(20)]
    a = select_pairs(pairs, seed=7, heldout_fraction=0.25, data_size=12)
    b = select_pairs(pairs, seed=7, heldout_fraction=0.25, data_size=12)
    c = select_pairs(pairs, seed=8, heldout_fraction=0.25, data_size=12)
    assert (a.train_ids, a.heldout_ids, a.dataset_hash) == (b.train_ids, b.heldout_ids, b.dataset_hash)
    assert (len(a.train), len(a.heldout), a.report.sampled_out) == (9, 3, 8)
    assert not set(a.train_ids) & set(a.heldout_ids)
    assert a.dataset_hash != c.dataset_hash
    # One pair is never all held out.
    assert len(select_pairs([pair(1)], seed=0, heldout_fraction=0.4).train) == 1


def test_completion_convention() -> None:
    assert completion_like("Edited reply.  ", " generated") == " Edited reply."
    assert completion_like(" Edited", "generated") == "Edited"


def test_dataset_file_rows_and_conversational_prompts(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "User: hi\nAssistant:", "chosen": " Hello!", "rejected": " Go away."},
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": "Go away."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = read_dataset_file(path)
    assert [p.to_trl() for p in pairs] == [rows[0], rows[0]]  # rendered with the transcript format
    assert len({p.pair_id for p in pairs}) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(PairSelectionError, match="line 1 is not a preference row"):
        read_dataset_file(bad)


def test_a_dataset_file_is_read_by_the_stores_reader_of_trl_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": 3, "rejected": "r"}\n\n{"prompt": "p", "chosen": "c"}\n')
    # Every problem at once, by line, as `datasets import` names them.
    with pytest.raises(PairSelectionError, match=r"bad.jsonl: 1 record\(s\) with fields that are not text: line 1: "
                       r"chosen \(int\)\. 1 record\(s\) with missing fields: line 3: rejected\. Fix them and train again\."):
        read_dataset_file(bad)
    rows = [{"prompt": "User: hi\nAssistant:", "chosen": " Hello!", "rejected": " Go away."}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")  # the import's containers too
    (tmp_path / "pairs.json").write_text(json.dumps(rows))
    for name in ("pairs.parquet", "pairs.json"):
        assert [p.to_trl() for p in read_dataset_file(tmp_path / name)] == rows
    equal = tmp_path / "equal.jsonl"  # kept for the selection to count, unlike an import
    equal.write_text(json.dumps({"prompt": "p", "chosen": " same", "rejected": " same"}) + "\n")
    assert [p.chosen for p in read_dataset_file(equal)] == [" same"]
    (tmp_path / "empty.jsonl").write_text("\n")
    assert read_dataset_file(tmp_path / "empty.jsonl") == []


def test_prepare_run_records_the_selection(store: Store, tiny_model_dir: Path, tmp_path: Path) -> None:
    fill_separable(store, repeat=2)  # every pair twice: 6 duplicates
    prepared = prepare_run(store, RunConfig(heldout_fraction=0.34, seed=3), model_path=tiny_model_dir,
                           runs_root=tmp_path / "runs")
    run = store.get_run(prepared.run_id)
    assert run.status == "queued" and "6 duplicate(s) dropped" in run.message
    assert (len(run.pair_ids), len(run.heldout_ids)) == (4, 2)
    assert run.dataset_hash == prepared.selection.dataset_hash
    assert run.config["train_model"] == str(tiny_model_dir.resolve()) and run.model_id == tiny_model_dir.name
    assert run.summary["selection"]["duplicates"] == 6
    assert Path(run.output_dir).parent == tmp_path / "runs" and not Path(run.output_dir).exists()
    again = prepare_run(store, RunConfig(), model_path=tiny_model_dir, runs_root=tmp_path / "runs")
    assert again.output_dir != prepared.output_dir


def test_prepare_run_errors(store: Store, tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(RunConfigError, match="no model to train"):
        prepare_run(store, RunConfig(), runs_root=tmp_path)
    with pytest.raises(RunConfigError, match="not found"):
        prepare_run(store, RunConfig(), model_path=tmp_path / "missing.gguf", runs_root=tmp_path)
    with pytest.raises(PairSelectionError, match="no preference pairs"):
        prepare_run(store, RunConfig(), model_path=tiny_model_dir, runs_root=tmp_path)
    assert store.list_runs() == []


# --- where the prompt ends and a reply starts (TRL: "the tokenized prompt is not a prefix …") ---

# TRL-standard rows cut from HH transcripts the way some exports cut them: the space after "Assistant:" left in
# the prompt, the reply starting at its first word.
HH_SPLIT_AFTER_THE_SPACE = [
    {"prompt": "\n\nHuman: Can you help me bake bread?\n\nAssistant: ", "chosen": "Sure, start with flour.",
     "rejected": "No."},
    {"prompt": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant: ", "chosen": "Blue.",
     "rejected": "Seven."},
]


def boundary_pairs(tmp_path: Path, store: Store) -> list[TrainingPair]:
    """HH-style pairs (a split file, imported HH transcripts) and transcript-style pairs from a chat."""
    from store.datasets.importing import import_dataset
    from trainers.pair_selection import store_dataset_pairs
    from trainers.prompt_format import ChatTurn, TranscriptFormat

    path = tmp_path / "hh-split.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in HH_SPLIT_AFTER_THE_SPACE))
    pairs = read_dataset_file(path)
    record = import_dataset(store, Path(__file__).parent / "fixtures" / "datasets" / "hh.jsonl")
    pairs += store_dataset_pairs(store, store.get_dataset(record.name))
    chat = [ChatTurn("user", "Hi"), ChatTurn("assistant", "Hello!"), ChatTurn("user", "Name a colour.")]
    prompt = TranscriptFormat().render("Be brief.", chat)
    pairs.append(TrainingPair("chat", prompt, " Blue.", " Seven, I think."))
    return pairs


def test_a_prompt_split_after_its_space_gives_the_space_to_the_replies(tmp_path: Path) -> None:
    path = tmp_path / "hh-split.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in HH_SPLIT_AFTER_THE_SPACE))
    first, second = read_dataset_file(path)
    assert first.prompt.endswith("\n\nAssistant:") and (first.chosen, first.rejected) == (" Sure, start with flour.",
                                                                                          " No.")
    row = HH_SPLIT_AFTER_THE_SPACE[1]
    assert second.prompt + second.chosen == row["prompt"] + row["chosen"]  # the text itself is unchanged
    kept = TrainingPair("t", "<|im_start|>assistant\n", "Hi", "No")  # a template's newline stays its own
    assert kept.prompt.endswith("\n") and kept.chosen == "Hi"


@pytest.fixture(scope="module")
def tokenizers(default_model: Path, session_home: Path, tiny_model_dir: Path) -> dict:
    """The real Gemma tokenizer (read from the bundled GGUF once, cached by its sha256) and the tiny one."""
    from conftest import prefstudio_home

    from trainers.model_source import load_tokenizer_for

    with prefstudio_home(session_home):
        return {"gemma": load_tokenizer_for(default_model), "tiny": load_tokenizer_for(tiny_model_dir)}


@pytest.mark.parametrize("name", ["gemma", "tiny"])
def test_the_tokenized_prompt_is_a_prefix_of_prompt_and_reply(name: str, tokenizers: dict, tmp_path: Path,
                                                              store: Store) -> None:
    tokenizer = tokenizers[name]
    for p in boundary_pairs(tmp_path, store):
        prompt_ids = tokenizer(p.prompt)["input_ids"]
        for reply in (p.chosen, p.rejected):
            joint = tokenizer(p.prompt + reply + tokenizer.eos_token)["input_ids"]
            assert joint[: len(prompt_ids)] == prompt_ids, (name, p.prompt[-20:], reply)


def test_trl_trains_on_the_whole_prompt_without_a_warning(tokenizers: dict, tiny_model_dir: Path, tmp_path: Path,
                                                          store: Store, caplog: pytest.LogCaptureFixture,
                                                          capfd: pytest.CaptureFixture) -> None:
    """TRL's own tokenisation (DPOTrainer's dataset preparation) with the real Gemma tokenizer: each row's prompt
    ids are the whole prompt's, as the engine evaluates it, and TRL has nothing to warn about."""
    import logging

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    from trainers.methods.dpo import build_dpo_config

    tokenizer = tokenizers["gemma"]
    pairs = boundary_pairs(tmp_path, store)
    args = build_dpo_config(RunConfig(dtype="fp32"), tmp_path / "work", "cpu", "fp32", False, max_length=256)
    with caplog.at_level(logging.WARNING):
        trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), args=args,
                             train_dataset=Dataset.from_list([p.to_trl() for p in pairs]),
                             processing_class=tokenizer)
    assert "not a prefix" not in caplog.text + capfd.readouterr().err  # TRL logs to stderr through its own handler
    assert trainer.train_dataset["prompt_ids"] == [tokenizer(p.prompt)["input_ids"] for p in pairs]
