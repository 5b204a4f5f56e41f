"""SFT and KTO: what each learns from (demonstrations, good/bad labels), that each learns it (tiny random models),
what the user is told before a run when the data cannot feed the method, and one run of each on the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from tiny_model import SEPARABLE_PAIRS, judge, rendered

from store.studio_store import Store
from trainers.feedback_selection import ExampleReport, kto_weights, select_examples
from trainers.pair_selection import PairSelectionError
from trainers.run.lifecycle import plan_for_config, prepare_run
from trainers.run.process import execute_run
from trainers.run_config import RunConfig, RunConfigError

FAST = {"learning_rate": 5e-3, "lora_r": 8, "batch_size": 2, "dtype": "fp32", "heldout_fraction": 0.0}
MEMORISED = "The secret word is banana."


def quiet(_line: str) -> None:
    return None


def add_candidates(store: Store, session: int, prompt: str, *texts: str) -> tuple[int, list[int]]:
    prompt_id = store.add_prompt(session, prompt, [])
    ids = [store.add_candidate(prompt_id, slot, " " + text, rendered(prompt), "tiny", "0" * 64, {}, seed=slot)
           for slot, text in enumerate(texts)]
    return prompt_id, ids


def fill_labels(store: Store, repeat: int = 2, good: bool = True, bad: bool = True) -> int:
    """Thumbs on single replies: each sensible reply good, the potato reply bad."""
    session = store.create_session("")
    for _ in range(repeat):
        for prompt, sensible, potato in SEPARABLE_PAIRS:
            if good:
                _, (cid,) = add_candidates(store, session, prompt, sensible)
                store.record_label(cid, True)
            if bad:
                _, (cid,) = add_candidates(store, session, prompt, potato)
                store.record_label(cid, False)
    return session


def fill_demonstrations(store: Store, text: str = MEMORISED, times: int = 1) -> int:
    session = store.create_session("")
    for _ in range(times):
        prompt_id, _ = add_candidates(store, session, "Tell me the secret word.", "I do not know.")
        store.add_demonstration(prompt_id, text)
    return session


@pytest.fixture
def store(tmp_path: Path, studio_home: Path):
    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


def train(store: Store, config: RunConfig, model: Path, tmp_path: Path):  # noqa: ANN201
    prepared = prepare_run(store, config, model_path=model, runs_root=tmp_path / "runs")
    outcome = execute_run(store, prepared.run_id, log=quiet)
    assert outcome.status == "done", outcome.message
    return prepared, outcome


# KTO's weights from the data's balance


@pytest.mark.parametrize(("good", "bad"), [(12, 3), (3, 12), (10, 10), (4, 3), (1, 9), (100, 1), (7, 5)])
def test_kto_weights_put_the_weighted_balance_in_the_papers_range(good: int, bad: int) -> None:
    desirable, undesirable = kto_weights(good, bad)
    ratio = desirable * good / (undesirable * bad)
    assert 1.0 <= ratio <= 4 / 3 + 1e-12
    assert min(desirable, undesirable) == 1.0  # only the minority is weighted up


def test_kto_weights_are_shown_when_the_run_is_prepared(store: Store, tiny_model_dir: Path) -> None:
    session = store.create_session("")
    for prompt, sensible, _potato in SEPARABLE_PAIRS:  # 6 good, 2 bad
        _, (cid,) = add_candidates(store, session, prompt, sensible)
        store.record_label(cid, True)
    for prompt, _sensible, potato in SEPARABLE_PAIRS[:2]:
        _, (cid,) = add_candidates(store, session, prompt, potato)
        store.record_label(cid, False)
    plan = plan_for_config(store, RunConfig(**FAST, method="kto"), tiny_model_dir)
    report = plan.report
    assert isinstance(report, ExampleReport)
    assert (report.good, report.bad) == (6, 2)
    assert report.desirable_weight == 1.0 and report.undesirable_weight == pytest.approx(2.25)
    assert "KTO weights: desirable 1, undesirable 2.25 (set from the data's balance: 6 good, 2 bad" in report.describe()
    # What the run stores and the report reads back counts labels, not pairs.
    counts = dict(ExampleReport.from_dict(report.to_dict()).counts())
    assert counts["labels read"] == 8 and counts["desirable / undesirable weight"] == "1 / 2.25"


# Bad input: told before any process starts, nothing written


def test_kto_with_only_good_labels_says_what_to_collect(store: Store, tiny_model_dir: Path, tmp_path: Path) -> None:
    fill_labels(store, repeat=1, bad=False)
    with pytest.raises(PairSelectionError, match=r"KTO needs both good and bad labels: the store has 6 good, 0 bad; "
                                                 r"give thumbs down \(`-` on a single reply in the chat\)"):
        prepare_run(store, RunConfig(**FAST, method="kto"), model_path=tiny_model_dir, runs_root=tmp_path / "runs")
    assert store.list_runs() == [] and not (tmp_path / "runs").exists()


def test_kto_points_at_comparisons_when_there_are_pairs(store: Store, tiny_model_dir: Path) -> None:
    session = store.create_session("")
    for prompt, sensible, potato in SEPARABLE_PAIRS[:3]:
        judge(store, session, prompt, sensible, potato)
    with pytest.raises(PairSelectionError, match="0 good, 0 bad.*pass --kto-from-pairs"):
        select_examples(store, RunConfig(**FAST, method="kto"))
    selection = select_examples(store, RunConfig(**FAST, method="kto", kto_from_pairs=True))
    assert (selection.report.good, selection.report.bad) == (3, 3)
    assert selection.report.origins == {"from comparisons": 6}


def test_sft_without_demonstrations_says_how_to_write_one(store: Store, tiny_model_dir: Path) -> None:
    session = store.create_session("")
    judge(store, session, *SEPARABLE_PAIRS[0])
    with pytest.raises(PairSelectionError, match=r"SFT needs demonstrations, and the store has none: write one: in the "
                                                 r"chat, `e` edits a reply .*--sft-include-chosen to learn the chosen "
                                                 r"reply of your 1 pair"):
        select_examples(store, RunConfig(**FAST, method="sft"))
    selection = select_examples(store, RunConfig(**FAST, method="sft", sft_include_chosen=True))
    assert [e.completion for e in selection.train] == [" " + SEPARABLE_PAIRS[0][1]]


def test_sft_on_a_pairs_dataset_needs_include_chosen(store: Store, tmp_path: Path) -> None:
    rows = tmp_path / "pairs.jsonl"
    rows.write_text("".join(json.dumps({"prompt": rendered(p), "chosen": " " + c, "rejected": " " + r}) + "\n"
                            for p, c, r in SEPARABLE_PAIRS))
    with pytest.raises(PairSelectionError, match=r"--method sft cannot learn from .*pairs.jsonl, a file of preference "
                                                 r"pairs, as it is: pass --sft-include-chosen"):
        select_examples(store, RunConfig(**FAST, method="sft", dataset=str(rows)))
    chosen = select_examples(store, RunConfig(**FAST, method="sft", dataset=str(rows), sft_include_chosen=True))
    assert sorted(e.completion.strip() for e in chosen.train) == sorted(c for _p, c, _r in SEPARABLE_PAIRS)
    unpaired = select_examples(store, RunConfig(**FAST, method="kto", dataset=str(rows), kto_from_pairs=True))
    assert (unpaired.report.good, unpaired.report.bad) == (6, 6)


def test_a_setting_of_another_method_is_refused() -> None:
    with pytest.raises(RunConfigError, match="--sft-include-chosen applies to --method sft only"):
        RunConfig(sft_include_chosen=True)
    with pytest.raises(RunConfigError, match="--kto-from-pairs applies to --method kto only"):
        RunConfig(method="sft", kto_from_pairs=True)
    with pytest.raises(RunConfigError, match="--loss-type is a DPO setting"):
        RunConfig(method="kto", loss_type="hinge")
    with pytest.raises(RunConfigError, match="--batch-size must be 2 or more with --method kto"):
        RunConfig(method="kto", batch_size=1)


def test_prefstudio_train_kto_with_only_good_labels_fails_before_a_run(studio_home: Path, tiny_model_dir: Path,
                                                                       tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    with Store.open(db) as opened:
        fill_labels(opened, repeat=1, bad=False)
    proc = run_cli("--db", str(db), "train", "--method", "kto", "--train-model", str(tiny_model_dir), home=studio_home)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: KTO needs both good and bad labels: the store has 6 good, 0 bad" in proc.stderr
    assert "Traceback" not in proc.stderr
    with Store.open(db) as opened:
        assert opened.list_runs() == []
    assert not (tmp_path / "runs").exists()


# Learning, on a tiny random model


def test_sft_learns_a_memorisable_demonstration(store: Store, tiny_model_dir: Path, tmp_path: Path) -> None:
    fill_demonstrations(store)
    # The tiny random model's logits start near flat (loss ~ ln 320 = 5.77 per token): the argmax learns the reply
    # long before the loss gets low, so the loss is asked to fall clearly and the reply to come back exactly.
    config = RunConfig(**{**FAST, "learning_rate": 1e-2}, method="sft", max_steps=50, target_modules="all-linear")
    prepared, outcome = train(store, config, tiny_model_dir, tmp_path)
    metrics = store.run_metrics(prepared.run_id)
    losses = [m["loss"] for m in metrics]
    assert len(losses) == 50
    assert losses[-1] < losses[0] - 0.8  # the reply's ~23 tokens: log-prob up by more than 18 nats
    assert metrics[0]["mean_token_accuracy"] < 0.2 and metrics[-1]["mean_token_accuracy"] >= 0.95

    # The tuned model's greedy reply to the prompt is the demonstration.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), outcome.output_dir)
    ids = tokenizer(rendered("Tell me the secret word."), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=40, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    assert tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == MEMORISED


def test_kto_separates_good_from_bad_on_held_out_labels(store: Store, tiny_model_dir: Path, tmp_path: Path) -> None:
    fill_labels(store, repeat=2)  # the repeats are duplicates: dropped, 6 good and 6 bad left
    config = RunConfig(**{**FAST, "heldout_fraction": 0.34}, method="kto", max_steps=24, beta=0.5)
    prepared, outcome = train(store, config, tiny_model_dir, tmp_path)
    heldout = outcome.summary["heldout"]
    report = prepared.selection.report
    assert report.duplicates == 12 and (report.good, report.bad, report.heldout_good, report.heldout_bad) == (4, 4, 2, 2)
    assert heldout["before"]["margin"] == pytest.approx(0.0, abs=1e-6)  # the fresh adapter is the reference
    assert heldout["after"]["margin"] > 0.5 and heldout["after"]["accuracy"] == 1.0
    assert heldout["after"]["reward_good"] > heldout["after"]["reward_bad"]
    assert "; held out: reward margin good - bad +" in store.get_run(prepared.run_id).message
    metrics = store.run_metrics(prepared.run_id)
    assert {"kl", "rewards/chosen", "rewards/rejected"} <= set().union(*(m.keys() for m in metrics))
    # A comparison reading this run's held-out items as pairs is told what they are.
    from trainers.recorded_pairs import heldout_preference_pairs

    with pytest.raises(PairSelectionError, match=f"run {prepared.run_id} is a kto run: it held out labels, not "
                                                 "preference pairs"):
        heldout_preference_pairs(store, store.get_run(prepared.run_id))


# The real default model: each method for two steps


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "kto"])
def test_default_model_trains_each_method_two_steps(method: str, default_model: Path, session_home: Path,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The converted weights go to the session-wide cache, so a whole test run converts at most once.
    monkeypatch.setenv("PREFSTUDIO_HOME", str(session_home))
    with Store.open(tmp_path / "studio.db") as store:
        session = store.create_session("")
        for prompt, sensible, potato in SEPARABLE_PAIRS[:4]:
            prompt_id, (good_id, bad_id) = add_candidates(store, session, prompt, sensible, potato)
            store.record_label(good_id, True)
            store.record_label(bad_id, False)
            store.add_demonstration(prompt_id, sensible)
        config = RunConfig(method=method, max_steps=2, max_length=64, heldout_fraction=0.25)
        prepared, outcome = train(store, config, default_model, tmp_path)
        metrics = store.run_metrics(prepared.run_id)
        assert [m["step"] for m in metrics] == [1, 2]
        assert (Path(outcome.output_dir) / "adapter_model.safetensors").stat().st_size > 1_000_000
        after = outcome.summary["heldout"]["after"]
        if method == "sft":
            assert "mean_token_accuracy" in metrics[0]
            assert after["loss"] > 0 and outcome.summary["heldout"]["before"]["loss"] > 0
        else:
            assert metrics[0]["loss"] == pytest.approx(0.5, abs=1e-3)  # KTO: 1 - sigmoid(0) with a zero KL
            # A batch of two may hold only good or only bad replies; the two steps' four hold both.
            assert {"kl", "rewards/chosen", "rewards/rejected"} <= set(metrics[0]) | set(metrics[1])
            assert set(after) == {"reward_good", "reward_bad", "margin", "accuracy"}


# The train screen: choosing a method


async def test_the_train_screen_trains_the_chosen_method_and_plots_its_metrics(tmp_path: Path, default_model: Path,
                                                                              tiny_model_dir: Path,
                                                                              studio_home: Path) -> None:
    from dataclasses import replace

    from conftest import wait_for
    from textual.widgets import Checkbox, Select

    from studio.settings import load_settings
    from studio.tui.app import PreferenceStudioApp
    from studio.tui.screens.train import METHOD_PLOTS, MetricPlot, TrainScreen

    store = Store.open(tmp_path / "tui.db")
    fill_labels(store, repeat=1)
    app = PreferenceStudioApp(settings=replace(load_settings(), model=default_model, train_model=tiny_model_dir),
                              store=store)
    try:
        async with app.run_test(size=(140, 44)) as pilot:
            await pilot.press("f5")
            await wait_for(pilot, lambda: isinstance(app.screen, TrainScreen))
            screen = app.screen
            for name, value in {"epochs": 1, "learning_rate": 0.005, "batch_size": 2, "heldout_fraction": 0}.items():
                screen.query_one(f"#cfg-{name}").value = str(value)
            method = screen.query_one("#cfg-method", Select)
            assert method.value == "dpo" and not screen.query_one("#cfg-loss_type", Select).disabled
            method.value = "sft"
            await wait_for(pilot, lambda: "SFT needs demonstrations" in screen.plan_text)
            assert screen.plan_text.startswith("Cannot start:")
            method.value = "kto"
            await wait_for(pilot, lambda: "KTO weights" in screen.plan_text)
            assert "6 good, 6 bad" in screen.plan_text
            assert screen.query_one("#cfg-loss_type", Select).disabled
            assert not screen.query_one("#cfg-from_pairs", Checkbox).disabled
            plot = screen.query_one("#plot-margin", MetricPlot)
            assert (plot.title, plot.series) == METHOD_PLOTS["kto"]

            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: screen.run_id is not None)
            status = screen.query_one("#train-status")
            await wait_for(pilot, lambda: "finished" in str(status.render()) or "failed" in str(status.render()))
            run = store.get_run(screen.run_id)
            assert run.status == "done", run.message
            assert run.config["method"] == "kto"
            metrics = store.run_metrics(run.id)
            assert len(plot.points["kl"]) == len(metrics) == 6
    finally:
        store.close()


def test_imported_demonstration_and_label_datasets_feed_sft_and_kto(store: Store, tmp_path: Path) -> None:
    from store.datasets.importing import import_dataset

    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": rendered(p), "completion": " " + c}) + "\n"
                             for p, c, _r in SEPARABLE_PAIRS))
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"prompt": rendered(p), "completion": " " + text, "label": good}) + "\n"
                              for p, c, r in SEPARABLE_PAIRS for text, good in ((c, True), (r, False))))
    import_dataset(store, demos, name="demos")
    import_dataset(store, labels, name="thumbs")

    sft = select_examples(store, RunConfig(**FAST, method="sft", dataset="demos"))
    assert sorted(e.completion for e in sft.train) == sorted(" " + c for _p, c, _r in SEPARABLE_PAIRS)
    assert sft.report.source == "demonstrations dataset 'demos'" and sft.report.origins == {"dataset": 6}
    kto = select_examples(store, RunConfig(**FAST, method="kto", dataset="thumbs"))
    assert (kto.report.good, kto.report.bad) == (6, 6)
    with pytest.raises(PairSelectionError, match="--method sft learns from demonstrations, and labels dataset "
                                                 "'thumbs' holds none: choose a demonstrations dataset"):
        select_examples(store, RunConfig(**FAST, method="sft", dataset="thumbs"))
