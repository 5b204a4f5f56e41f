"""The attribute model (SteerLM step 1, ``--method attributes``): trained on 0–4 ratings per attribute, its
held-out error and rank correlation reported; annotate stores its predictions apart from human ratings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import prefstudio_home
from tiny_model import rendered

from store import feedback_yield
from store.datasets.importing import import_dataset
from store.studio_store import Store
from trainers.methods import training_method
from trainers.methods.attributes import HEAD_FILE, SPEC_FILE, AttributesMethod, masked_squared_error
from trainers.pair_selection import PairSelectionError
from trainers.prompt_format import ChatTurn, TranscriptFormat
from trainers.rating_selection import planned_rating_report, select_ratings
from trainers.run.lifecycle import prepare_run
from trainers.run.process import execute_run
from trainers.run_config import RunConfig

WORDS = ["apple", "river", "stone", "cloud", "green", "light", "table", "music", "bread", "window"]


def verbosity(n_words: int) -> int:
    """The attribute the tiny model learns: the reply's length in buckets of four words, 0–4."""
    return min(4, (n_words - 1) // 4)


def reply_of(n_words: int, i: int) -> str:
    return " " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n_words)) + "."


def rate_replies(store: Store, n: int, with_quality: bool = False) -> list[int]:
    """``n`` one-reply prompts of 1–20 words, each rated on verbosity (its length bucket); return the ids.
    With ``with_quality``, every other reply also carries a quality rating (the others leave it unrated)."""
    session_id = store.create_session("")
    ids = []
    for i in range(n):
        n_words = 1 + (i * 7) % 20
        prompt = f"Say something ({i})."
        prompt_id = store.add_prompt(session_id, prompt, [])
        candidate = store.add_candidate(prompt_id, 0, reply_of(n_words, i), rendered(prompt), "tiny", "0" * 64,
                                        {"temperature": 0.8}, seed=0)
        ratings = {"verbosity": verbosity(n_words)}
        if with_quality and i % 2 == 0:
            ratings["quality"] = 2
        store.record_ratings(candidate, ratings)
        ids.append(candidate)
    return ids


@pytest.fixture(scope="module")
def tiny_attribute_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """An attribute model on the tiny model: 30 rated replies to learn from, 10 held out."""
    root = tmp_path_factory.mktemp("tiny-attributes")
    with prefstudio_home(root / "home"), Store.open(root / "studio.db") as store:
        rate_replies(store, 40, with_quality=True)
        config = RunConfig(method="attributes", attributes="verbosity,quality,humor", learning_rate=5e-3, lora_r=8,
                           batch_size=4, dtype="fp32", heldout_fraction=0.25, epochs=12)
        prepared = prepare_run(store, config, model_path=tiny_model_dir, runs_root=root / "runs")
        outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
        yield store, store.get_run(prepared.run_id), outcome, root


def test_the_attributes_method_is_registered() -> None:
    assert isinstance(training_method("attributes"), AttributesMethod)
    assert RunConfig(method="attributes", attributes="quality").attributes == "quality"


def test_a_tiny_attribute_model_learns_verbosity_from_the_reply(tiny_attribute_run) -> None:
    store, run, outcome, _root = tiny_attribute_run
    assert outcome.status == "done", outcome.message
    heldout = run.summary["heldout"]
    assert heldout["examples"] == 10
    before, after = heldout["before"]["verbosity"], heldout["after"]["verbosity"]
    print("verbosity before", before, "after", after)
    # The new head predicts the middle of the scale for every reply: no ranking at all before ...
    assert before["spearman"] is None or before["spearman"] < 0.8
    # ... and after, held-out replies are ranked by length and the error has fallen clearly.
    assert after["spearman"] > 0.8
    assert after["mae"] < 0.6 * before["mae"]
    assert "held-out MAE" in outcome.message
    rows = store.run_metrics(run.id)
    assert {"loss", "mae", "tokens_per_s"} <= set(rows[-1])  # live metrics: the loss and the rated cells' MAE
    assert rows[-1]["num_tokens"] > rows[0]["num_tokens"] > 0
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_an_attribute_nobody_rated_is_dropped_with_a_note(tiny_attribute_run) -> None:
    _store, run, outcome, _root = tiny_attribute_run
    assert run.summary["attributes"] == ["verbosity", "quality"]
    assert run.summary["dropped_attributes"] == ["humor"]
    assert "humor dropped: no reply is rated on it" in planned_rating_report(run).describe()
    spec = json.loads((Path(outcome.output_dir) / SPEC_FILE).read_text())
    assert spec["attributes"] == ["verbosity", "quality"]
    from safetensors.numpy import load_file

    assert load_file(str(Path(outcome.output_dir) / HEAD_FILE))["score.weight"].shape == (2, 64)
    adapter = load_file(str(Path(outcome.output_dir) / "adapter_model.safetensors"))
    assert adapter and all(".lora_A." in key or ".lora_B." in key for key in adapter)


def test_unrated_attributes_are_masked_out_of_the_loss() -> None:
    import torch

    predicted = torch.tensor([[0.5, 9.0], [1.0, -7.0]])
    labels = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # Only the first column counts: (0 + 1) / 2; the wild second column was never rated.
    assert float(masked_squared_error(predicted, labels, mask)) == pytest.approx(0.5)


def test_no_ratings_says_to_rate_some_replies_first(tmp_path: Path) -> None:
    with Store.open(tmp_path / "studio.db") as store:
        with pytest.raises(PairSelectionError, match="rate some replies first"):
            select_ratings(store, RunConfig(method="attributes"))


def test_attributes_none_of_which_is_rated_are_refused(tmp_path: Path) -> None:
    with Store.open(tmp_path / "studio.db") as store:
        rate_replies(store, 3)
        with pytest.raises(PairSelectionError, match="none of the attributes humor"):
            select_ratings(store, RunConfig(method="attributes", attributes="humor"))


def test_attributes_flag_is_refused_for_other_methods() -> None:
    from trainers.run_config import RunConfigError

    with pytest.raises(RunConfigError, match="attributes"):
        RunConfig(method="sft", attributes="quality")


def test_human_ratings_are_what_rated_responses_returns(tiny_attribute_run) -> None:
    store, _run, _outcome, _root = tiny_attribute_run
    rated = feedback_yield.rated_responses(store.db)
    assert len(rated) == 40
    assert all(set(r.ratings) <= {"verbosity", "quality"} for r in rated)


# Annotate: predictions stored apart from human ratings


def add_unrated(store: Store, lengths: list[int]) -> list[int]:
    """One unrated candidate per length (words); return their ids."""
    session_id = store.create_session("")
    ids = []
    for i, n_words in enumerate(lengths):
        prompt = f"Say more ({i})."
        prompt_id = store.add_prompt(session_id, prompt, [])
        ids.append(store.add_candidate(prompt_id, 0, reply_of(n_words, i), rendered(prompt), "tiny", "0" * 64,
                                       {"temperature": 0.8}, seed=0))
    return ids


@pytest.fixture(scope="module")
def annotated(tiny_attribute_run):
    """Unrated replies added after training (20 candidates, a demonstration, a human-rated long reply), then
    annotated with a Ctrl-C after the first batch, then annotated again to finish."""
    from studio.attributes_model import AttributePredictor
    from studio.cli.attributes import BATCH, annotate_targets

    store, run, _outcome, root = tiny_attribute_run
    unrated = add_unrated(store, [1 + (i % 20) for i in range(20)])
    rated_long = add_unrated(store, [20])[0]
    store.record_ratings(rated_long, {"verbosity": 0})  # a human rating the model would disagree with
    prompt_id = store.add_prompt(store.create_session(""), "Write a long one.", [])
    demonstration = store.add_demonstration(prompt_id, reply_of(18, 3).strip())

    def interrupt_after_first_batch(kind: str, done: int, _total: int) -> None:
        if kind == "candidate" and done >= BATCH:
            raise KeyboardInterrupt

    demos_file = root / "demos.jsonl"
    demos_file.write_text("".join(json.dumps({"prompt": rendered(f"Tell me ({n})."), "completion": reply_of(n, n)})
                                  + "\n" for n in (2, 19)))
    import_dataset(store, demos_file, name="demos")
    dataset_id = store.get_dataset("demos").id

    with AttributePredictor(run, db_path=root / "studio.db") as predictor:
        stopped = annotate_targets(store, predictor, ["candidate", "demonstration"],
                                   progress=interrupt_after_first_batch)
        after_stop = store.predicted_ratings(run.id)
        finished = annotate_targets(store, predictor, ["candidate", "demonstration", "dataset_item"], dataset_id)
        again = annotate_targets(store, predictor, ["candidate", "demonstration", "dataset_item"], dataset_id)
    return store, run, unrated, rated_long, demonstration, stopped, after_stop, finished, again


def test_ctrl_c_keeps_whole_batches_and_a_second_annotate_continues(annotated) -> None:
    from studio.cli.attributes import BATCH

    _store, _run, unrated, _rated, _demo, stopped, after_stop, finished, again = annotated
    assert stopped.stopped and stopped.annotated == {"candidate": BATCH}
    # Every stored target has both attributes: no half-written reply.
    targets = {p.target_id for p in after_stop}
    assert len(targets) == BATCH and len(after_stop) == 2 * BATCH
    assert finished.annotated == {"candidate": len(unrated) - BATCH, "demonstration": 1, "dataset_item": 2}
    assert not finished.stopped
    assert again.total == 0  # nothing left that the run has not predicted


def test_annotate_stores_predictions_apart_from_human_ratings(annotated) -> None:
    store, run, unrated, rated_long, demonstration, *_ = annotated
    predicted = store.predicted_ratings(run.id, "candidate")
    by_target = {(p.target_id, p.attribute): p.value for p in predicted}
    assert {t for t, _ in by_target} == set(unrated)  # the 40 rated in training and the rated long reply: none
    assert all(0.0 <= v <= 4.0 for v in by_target.values())
    # The model learnt length: a 20-word reply predicted well above a 1-word one.
    assert by_target[(unrated[19], "verbosity")] > by_target[(unrated[0], "verbosity")] + 1.5
    demo = store.predicted_ratings(run.id, "demonstration")
    assert {(p.target_id, p.attribute) for p in demo} == {(demonstration, "verbosity"), (demonstration, "quality")}
    items = {p.target_id: p.value for p in store.predicted_ratings(run.id, "dataset_item") if p.attribute == "verbosity"}
    assert len(items) == 2 and items[max(items)] > items[min(items)]  # the 19-word item above the 2-word one
    # The human rating stays as given, and training still reads only human ratings.
    assert [(r.attribute, r.value) for r in store.ratings(rated_long)] == [("verbosity", 0)]
    rated = feedback_yield.rated_responses(store.db)
    assert {r.candidate_id for r in rated} & set(unrated) == set()
    assert next(r for r in rated if r.candidate_id == rated_long).ratings == {"verbosity": 0}


def test_predict_attributes_gives_each_text_its_values(tiny_attribute_run) -> None:
    from studio.attributes_model import predict_attributes

    _store, run, _outcome, root = tiny_attribute_run
    texts = [reply_of(1, 0), reply_of(20, 0)]
    values = predict_attributes(run, texts, prompts=[rendered("Say something (0).")] * 2, db_path=root / "studio.db")
    assert [set(v) for v in values] == [{"verbosity", "quality"}] * 2
    assert values[1]["verbosity"] > values[0]["verbosity"]


def test_an_attribute_model_for_another_base_model_is_refused_clearly(tiny_attribute_run) -> None:
    from dataclasses import replace

    from studio.attributes_model import AttributeModelError, checked_attribute_run

    _store, run, _outcome, root = tiny_attribute_run
    with pytest.raises(AttributeModelError, match=r"trained on .*but the studio serves gemma.gguf .*switch to that"):
        checked_attribute_run(run, db_path=root / "studio.db", expected_sha256="f" * 64, served_name="gemma.gguf")
    with pytest.raises(AttributeModelError, match="is a dpo run, not an attribute model"):
        checked_attribute_run(replace(run, config={**run.config, "method": "dpo"}), db_path=root / "studio.db")
    with pytest.raises(AttributeModelError, match="is failed"):
        checked_attribute_run(replace(run, status="failed"), db_path=root / "studio.db")


def test_the_annotate_command_refuses_a_model_trained_on_another_base(tiny_attribute_run, session_home: Path,
                                                                     default_model: Path) -> None:
    from conftest import run_cli

    store, run, _outcome, root = tiny_attribute_run
    before = len(store.predicted_ratings())
    # The studio serves the default Gemma; the run was trained on the tiny model.
    proc = run_cli("--db", str(root / "studio.db"), "attributes", "annotate", "--run", str(run.id),
                   home=session_home)
    assert proc.returncode == 1, proc.stderr
    assert f"run {run.id}'s attribute model was trained on" in proc.stderr
    assert f"(not a GGUF), but the studio serves {default_model.name}" in proc.stderr
    assert len(store.predicted_ratings()) == before  # the refused command wrote nothing


def test_an_imported_ratings_dataset_trains_with_its_missing_attributes_masked(tmp_path: Path, tiny_model_dir: Path
                                                                              ) -> None:
    from trainers.methods.attributes import encoded_examples
    from trainers.model_source import load_tokenizer

    path = tmp_path / "helpsteer.jsonl"
    rows = [{"prompt": "P1", "response": "R1", "helpfulness": 4, "verbosity": 1},
            {"prompt": "P2", "response": "R2", "helpfulness": 0},
            {"prompt": "P3", "response": "R3", "verbosity": 3}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with Store.open(tmp_path / "studio.db") as store:
        import_dataset(store, path, name="hs")
        selection = select_ratings(store, RunConfig(method="attributes", dataset="hs", heldout_fraction=0.0))
    assert selection.report.attributes == ["helpfulness", "verbosity"]
    assert selection.report.rated_per_attribute == {"helpfulness": 2, "verbosity": 2}
    assert all(e.example_id.startswith("i") and e.origin == "dataset" for e in selection.train)
    # A bare question is rendered as the chat renders a user's turn (no chat template: the transcript format).
    assert sorted(e.prompt for e in selection.train) == [TranscriptFormat().render("", [ChatTurn("user", p)])
                                                         for p in ("P1", "P2", "P3")]
    by_prompt = {e.prompt.split("\n")[0].removeprefix("User: "): e for e in selection.train}
    rows_out = encoded_examples([by_prompt["P2"], by_prompt["P3"]], ["helpfulness", "verbosity"],
                                load_tokenizer(tiny_model_dir), None)
    assert rows_out[0]["label_mask"] == [1.0, 0.0] and rows_out[0]["labels"] == [-1.0, 0.0]  # 0 → -1, unrated 0
    assert rows_out[1]["label_mask"] == [0.0, 1.0] and rows_out[1]["labels"] == [0.0, 0.5]  # 3 → 0.5


def test_a_preference_dataset_is_refused_for_the_attributes_method(tmp_path: Path) -> None:
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"prompt": "P", "completion": "C"}) + "\n")
    with Store.open(tmp_path / "studio.db") as store:
        import_dataset(store, path, name="demos")
        with pytest.raises(PairSelectionError, match="learns from ratings, and demonstrations dataset 'demos'"):
            select_ratings(store, RunConfig(method="attributes", dataset="demos"))


def test_the_default_model_trains_an_attribute_model_for_a_step(tmp_path_factory: pytest.TempPathFactory,
                                                                session_home: Path, default_model: Path) -> None:
    """The real Gemma 3 270M: its sequence-classification head with one output per attribute, 2 steps."""
    root = tmp_path_factory.mktemp("default-attributes")
    with prefstudio_home(session_home), Store.open(root / "studio.db") as store:
        rate_replies(store, 6, with_quality=True)
        config = RunConfig(method="attributes", learning_rate=2e-3, lora_r=8, batch_size=2, heldout_fraction=0.34,
                           max_steps=2)
        prepared = prepare_run(store, config, model_path=default_model, runs_root=root / "runs")
        outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
        run = store.get_run(prepared.run_id)
    assert outcome.status == "done", outcome.message
    assert run.summary["steps"] == 2 and run.summary["attributes"] == ["verbosity", "quality"]
    assert set(run.summary["heldout"]["after"]) >= {"verbosity"}
    assert run.summary["model"]["sha256"]  # a GGUF: annotate checks the served model against it
    spec = json.loads((Path(outcome.output_dir) / SPEC_FILE).read_text())
    from safetensors.numpy import load_file

    assert load_file(str(Path(outcome.output_dir) / HEAD_FILE))["score.weight"].shape == (2, 640)
    assert spec["attributes"] == ["verbosity", "quality"]
