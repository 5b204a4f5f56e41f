"""The reward model: trained on pairs (``--method reward``), published as a LoRA + a head, scored in llama.cpp
on the served model, its scores and the user's agreement with them stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import prefstudio_home
from tiny_model import judge

from store.studio_store import Store
from studio.reward.scorer import RewardScorerError, open_reward_scorer
from trainers.methods import training_method
from trainers.methods.reward import (
    HEAD_FILE,
    SPEC_FILE,
    RewardMethod,
    load_trained_reward_model,
    reward_input_ids,
    transformers_reward_scores,
)
from trainers.pair_selection import at_token_boundary
from trainers.prompt_format import ChatTurn
from trainers.run.lifecycle import prepare_run
from trainers.run.process import execute_run
from trainers.run_config import RunConfig

SENSIBLE = ["The sky is blue on a clear day.", "An apple is a fruit.", "A cat has four legs.", "Fish live in water.",
            "Hello, nice to meet you.", "Two plus two is four.", "The sun is a star.", "Birds can fly.",
            "Water is wet.", "Dogs like to run."]
NONSENSE = ["Potato potato potato.", "Potato potato potato potato.", "Potato potato."]


def fill_good_and_bad(store: Store, n: int) -> int:
    """``n`` judged prompts, each a sensible reply chosen over a nonsense one; return the session id."""
    session_id = store.create_session("")
    for i in range(n):
        judge(store, session_id, f"Question number {i}: tell me something.", f"{SENSIBLE[i % len(SENSIBLE)]} ({i})",
              NONSENSE[i % len(NONSENSE)])
    return session_id


@pytest.fixture(scope="module")
def tiny_reward_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """A reward model trained on the tiny model: 32 pairs to learn from, 8 held out (two full eval batches)."""
    root = tmp_path_factory.mktemp("tiny-reward")
    with prefstudio_home(root / "home"), Store.open(root / "studio.db") as store:
        fill_good_and_bad(store, 40)
        config = RunConfig(method="reward", learning_rate=5e-3, lora_r=8, batch_size=4, dtype="fp32",
                           heldout_fraction=0.2, epochs=2)
        prepared = prepare_run(store, config, model_path=tiny_model_dir, runs_root=root / "runs")
        outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
        yield store, store.get_run(prepared.run_id), outcome


def test_the_reward_method_is_registered() -> None:
    assert isinstance(training_method("reward"), RewardMethod)
    assert RunConfig(method="reward").method == "reward"


def test_a_tiny_reward_model_learns_to_prefer_the_sensible_reply(tiny_reward_run) -> None:
    store, run, outcome = tiny_reward_run
    assert outcome.status == "done", outcome.message
    heldout = run.summary["heldout"]
    assert heldout["pairs"] == 8
    # The new head scores every reply 0: no preference before training (no pair won, margin 0) ...
    assert heldout["before"]["accuracy"] == 0.0
    assert heldout["before"]["margin"] == pytest.approx(0.0, abs=1e-6)
    # ... and after, the held-out sensible replies score above the nonsense ones.
    assert heldout["after"]["accuracy"] >= 0.9
    assert heldout["after"]["margin"] > 1.0
    assert "held-out accuracy" in outcome.message
    rows = store.run_metrics(run.id)
    assert {"loss", "accuracy", "margin"} <= set(rows[-1])  # the reward model's own live metrics
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_the_output_is_a_plain_lora_a_head_and_no_pickle(tiny_reward_run) -> None:
    _store, _run, outcome = tiny_reward_run
    folder = Path(outcome.output_dir)
    from safetensors.numpy import load_file

    adapter = load_file(str(folder / "adapter_model.safetensors"))
    assert adapter and all(".lora_A." in key or ".lora_B." in key for key in adapter)  # exportable to a GGUF LoRA
    head = load_file(str(folder / HEAD_FILE))["score.weight"]
    assert head.shape == (1, 64) and np.abs(head).sum() > 0  # trained (it started at zero)
    spec = json.loads((folder / SPEC_FILE).read_text())
    assert spec["append_eos"] is True and spec["eos_token_id"] == 1
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))


def test_a_reward_run_is_not_offered_as_a_chat_adapter(tiny_reward_run) -> None:
    store, run, outcome = tiny_reward_run
    from studio.evaluation.run_adapters import usable_runs

    assert (Path(outcome.output_dir) / "adapter_model.safetensors").exists()
    assert run.id not in [r.id for r in usable_runs(store)]


def test_the_published_files_give_the_trainers_scores(tiny_reward_run) -> None:
    """The LoRA and the head, loaded back, reproduce the trainer's own held-out margin: nothing was lost in
    moving the head out of PEFT's file."""
    store, run, outcome = tiny_reward_run
    from trainers.recorded_pairs import run_pairs

    model, tokenizer = load_trained_reward_model(Path(outcome.output_dir), Path(run.summary["model"]["model_dir"]))
    _train, heldout = run_pairs(store, run, RunConfig.from_dict(run.config))
    margins = [np.subtract(*transformers_reward_scores(model, tokenizer, p.prompt, [p.chosen, p.rejected]))
               for p in heldout]
    assert float(np.mean(margins)) == pytest.approx(run.summary["heldout"]["after"]["margin"], rel=1e-4)


def test_replies_are_scored_on_prompt_reply_and_eos(tiny_model_dir: Path) -> None:
    from trainers.model_source import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    ids = reward_input_ids(tokenizer, "User: hi\nAssistant:", " Hello")
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    cut = reward_input_ids(tokenizer, "User: hi\nAssistant:", " Hello" * 50, max_length=16)
    assert len(cut) == 16 and cut[-1] == tokenizer.eos_token_id  # too long: the end cut, EOS kept


# --- the store: scores and the live agreement rate ---


def test_scores_are_stored_per_candidate_and_run_and_agreement_is_read_from_judgements(tmp_path: Path,
                                                                                       studio_home: Path) -> None:
    with Store.open(tmp_path / "scores.db") as store:
        run_id = store.create_run({"method": "reward"}, "m.gguf", str(tmp_path / "r"), [], [])
        session_id = store.create_session("")
        judge(store, session_id, "first", "good", "bad", verdict="a")    # the user picked slot 0
        judge(store, session_id, "second", "good", "bad", verdict="b")   # the user picked slot 1
        judge(store, session_id, "third", "good", "bad", verdict="tie")  # no pick: not counted
        candidates = [row[0] for row in store.db.execute("SELECT id FROM candidates ORDER BY id")]
        first_a, first_b, second_a, second_b, third_a, third_b = candidates
        assert store.reward_agreement(run_id).judged == 0  # nothing scored yet
        store.record_reward_scores(run_id, {first_a: 2.0, first_b: -1.0, second_a: 0.5, second_b: 0.1,
                                            third_a: 1.0, third_b: 0.0})
        agreement = store.reward_agreement(run_id)
        assert (agreement.judged, agreement.agreed) == (2, 1)  # agreed on the first, not the second
        assert agreement.rate == 0.5 and "1 of 2" in agreement.describe()

        store.record_reward_scores(run_id, {second_b: 3.0})  # scored again: the newer score counts
        assert store.reward_scores(run_id, [second_a, second_b]) == {second_a: 0.5, second_b: 3.0}
        assert store.reward_agreement(run_id).agreed == 2

        with pytest.raises(ValueError, match="not a finite number"):
            store.record_reward_scores(run_id, {first_a: float("nan")})
        with pytest.raises(ValueError, match="no candidate with id 999"):
            store.record_reward_scores(run_id, {first_a: 9.0, 999: 1.0})
        with pytest.raises(ValueError, match="no run with id 77"):
            store.record_reward_scores(77, {first_a: 9.0})
        assert store.reward_scores(run_id)[first_a] == 2.0  # a refused batch stored nothing


# --- the real default model: a reward run of two steps, scored in llama.cpp ---


@pytest.fixture(scope="module")
def default_reward_run(tmp_path_factory: pytest.TempPathFactory, session_home: Path, default_model: Path):
    root = tmp_path_factory.mktemp("default-reward")
    with prefstudio_home(session_home), Store.open(root / "studio.db") as store:
        fill_good_and_bad(store, 6)
        config = RunConfig(method="reward", learning_rate=2e-3, lora_r=8, batch_size=2, heldout_fraction=0.0,
                           max_steps=2)
        prepared = prepare_run(store, config, model_path=default_model, runs_root=root / "runs")
        outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
        yield store, store.get_run(prepared.run_id), outcome


REPLIES = [" " + text for text in SENSIBLE + NONSENSE] + [" I do not know.", " The moon is made of cheese."]


@pytest.fixture(scope="module")
def reference_scores(default_reward_run, engine) -> list[float]:
    """The reward model's scores of ``REPLIES`` by transformers + PEFT in this process (the trainer's model)."""
    _store, run, outcome = default_reward_run
    model, tokenizer = load_trained_reward_model(Path(outcome.output_dir), Path(run.summary["model"]["model_dir"]))
    prompt = engine.prompt_format.render("", [ChatTurn("user", "Question number 0: tell me something.")])
    kept, moved, _ = at_token_boundary(prompt, REPLIES[0], REPLIES[0])
    assert len(reward_input_ids(tokenizer, kept, moved)) > 3
    return transformers_reward_scores(model, tokenizer, prompt, REPLIES)


def test_the_float32_worker_gives_the_trainers_model_scores(default_reward_run, engine, reference_scores) -> None:
    store, run, outcome = default_reward_run
    assert outcome.status == "done", outcome.message
    scorer = open_reward_scorer(store, run.id, engine, backend="torch-fp32")
    conversation = [ChatTurn("user", "Question number 0: tell me something.")]
    try:
        assert scorer.precision == "fp32"
        scorer.prepare(conversation)  # the prompt computed ahead, as the chat does when a round starts
        assert scorer.last_cpu_seconds > 0
        scores = scorer.score(conversation, REPLIES)
        with pytest.raises(RewardScorerError, match="must end with the user's turn"):
            scorer.score([ChatTurn("assistant", "Hi.")], [" Hello."])
    finally:
        scorer.close()
    # The same model in float32; the worker merges the LoRA and packs the replies into one pass, so the sums
    # round differently: 1.4e-5 seen on a score of -3.47 (4e-6 relative).
    assert scores == pytest.approx(reference_scores, abs=1e-4)
    assert len(set(np.round(scores, 4))) > 5  # the replies are told apart, not one score for all


def test_the_default_worker_computes_as_the_run_trained(default_reward_run, engine, reference_scores) -> None:
    from trainers.run.device import cpu_has_native_bf16

    store, run, _outcome = default_reward_run
    scorer = open_reward_scorer(store, run.id, engine)  # the default: as the run trained
    try:
        scores = scorer.score([ChatTurn("user", "Question number 0: tell me something.")], REPLIES)
    finally:
        scorer.close()
    trained_bf16 = run.summary["dtype"] == "bf16"
    assert scorer.precision == ("bf16" if trained_bf16 and cpu_has_native_bf16() else "fp32")
    pearson = float(np.corrcoef(scores, reference_scores)[0, 1])
    print(f"default worker ({scorer.precision}) vs transformers + PEFT in float32: Pearson {pearson:.4f}, max "
          f"|difference| {float(np.max(np.abs(np.subtract(scores, reference_scores)))):.4f}")
    if scorer.precision == "fp32":
        assert scores == pytest.approx(reference_scores, abs=1e-4)
    else:
        # Approximate, not exact: bf16 matmuls. These 15 replies of a barely trained model score close together
        # (a spread of a few hundredths); the bench's 50 replies keep a Pearson of 0.999.
        assert pearson >= 0.95
        assert scores != pytest.approx(reference_scores, abs=1e-6)  # the matmuls really are bf16


def test_torch_workers_start_without_the_wait_policy_set_for_llama_cpp() -> None:
    """The studio sets OMP_WAIT_POLICY=PASSIVE for llama.cpp; a torch worker under it ran 1.6x slower (its OpenMP
    threads sleep between a forward's small parallel regions), so workers start without it, unless the user set it."""
    probe = ("import os, sys, studio.reward.torch_worker, studio.attributes_model; "
             "print('studio.inference.runtime_env' in sys.modules, os.environ.get('OMP_WAIT_POLICY')); "
             "from studio.inference import runtime_env; "
             "print(os.environ['OMP_WAIT_POLICY'], runtime_env.torch_worker_env().get('OMP_WAIT_POLICY'))")

    def run(**extra: str) -> list[str]:
        env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"} | extra
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        return done.stdout.split("\n")[:2]

    # The worker modules set nothing themselves (they are what the worker process imports before torch).
    assert run() == ["False None", "PASSIVE None"]
    assert run(OMP_WAIT_POLICY="ACTIVE") == ["False ACTIVE", "ACTIVE ACTIVE"]


def test_the_llama_cpp_scorer_follows_the_trainers_model(default_reward_run, engine, reference_scores) -> None:
    store, run, _outcome = default_reward_run
    conversation = [ChatTurn("user", "Question number 0: tell me something.")]
    scorer = open_reward_scorer(store, run.id, engine, backend="llama")
    try:
        scores = scorer.score(conversation, REPLIES)
        again = scorer.score(conversation, REPLIES[:2])  # the prompt cached: the same numbers again
        assert scorer.score(conversation, REPLIES[:2]) == again
        # llama.cpp's numbers move a little with the batch a reply is decoded in (8 at a time vs 2).
        assert again == pytest.approx(scores[:2], rel=0.05)
    finally:
        scorer.close()
    # Approximate, not exact (quantised activations): measured 0.92 after two steps (bench/reward_scoring.py).
    pearson = float(np.corrcoef(scores, reference_scores)[0, 1])
    print(f"llama.cpp vs transformers over {len(scores)} replies: Pearson {pearson:.4f}")
    assert pearson >= 0.8


def test_a_run_that_is_not_a_finished_reward_run_on_this_model_is_refused(tiny_reward_run, default_reward_run,
                                                                           engine, tmp_path: Path) -> None:
    tiny_store, tiny_run, _ = tiny_reward_run
    store, _run, _ = default_reward_run
    with pytest.raises(RewardScorerError, match="trained on .*not a GGUF.*but the chat serves gemma"):
        open_reward_scorer(tiny_store, tiny_run.id, engine)  # another base model
    dpo = store.create_run({"method": "dpo"}, "m.gguf", str(tmp_path / "r"), [], [])
    with pytest.raises(RewardScorerError, match=f"run {dpo} is a dpo run, not a reward model"):
        open_reward_scorer(store, dpo, engine)
    queued = store.create_run({"method": "reward"}, "m.gguf", str(tmp_path / "q"), [], [])
    with pytest.raises(RewardScorerError, match=f"run {queued} is queued; only a finished reward run can score"):
        open_reward_scorer(store, queued, engine)
    with pytest.raises(RewardScorerError, match="there is no run 999"):
        open_reward_scorer(store, 999, engine)
