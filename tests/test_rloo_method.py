"""``--method rloo``: online RL (TRL's RLOOTrainer) against the studio's reward model (issue 16).

A tiny random model learns a reward whose optimum is known; a whole run against a tiny reward run records
TRL's metrics, the sampled replies and the held-out reward; bad input (no reward run, a foreign or unfinished
one, prompts that do not fit, no prompts, a reward that turns NaN) is refused with a clear message and nothing
half-written; the real default model runs two steps against a real reward run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import prefstudio_home, run_cli
from tiny_model import SEPARABLE_PAIRS, build_tiny_model, fill_separable, rendered

from store.studio_store import Store
from trainers.pair_selection import PairSelectionError
from trainers.reward_functions import (
    SAMPLES_FILE,
    RewardModelScorer,
    RewardNotFiniteError,
    RewardRunError,
    SampleLog,
    StudioReward,
)
from trainers.rl_prompts import file_prompts, parse_prompt_bank, select_prompts
from trainers.run.lifecycle import prepare_run
from trainers.run.process import execute_run
from trainers.run_config import RunConfig, RunConfigError
from trainers.safety_checks.wordlist import WordListChecker

FAST_RLOO = {"method": "rloo", "learning_rate": 5e-3, "lora_r": 8, "batch_size": 2, "num_generations": 2,
             "max_completion_length": 6, "dtype": "fp32", "threads": 1}


def quiet(_line: str) -> None:
    return None


@pytest.fixture(scope="module")
def tiny_reward(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """A store holding SEPARABLE_PAIRS twice and a done reward run on the tiny model (4 steps)."""
    root = tmp_path_factory.mktemp("tiny-rloo")
    with prefstudio_home(root / "home"), Store.open(root / "studio.db") as store:
        fill_separable(store, repeat=2)
        config = RunConfig(method="reward", learning_rate=5e-3, lora_r=8, batch_size=4, dtype="fp32",
                           heldout_fraction=0.0, max_steps=4)
        prepared = prepare_run(store, config, model_path=tiny_model_dir, runs_root=root / "runs")
        outcome = execute_run(store, prepared.run_id, log=quiet)
        assert outcome.status == "done", outcome.message
        yield root, store, prepared.run_id


def runs_and_folders(store: Store, root: Path) -> tuple[int, list[str]]:
    return len(store.list_runs()), sorted(p.name for p in (root / "runs").iterdir())


# The reward terms


def test_the_penalties_take_off_per_token_over_the_target_and_per_flagged_reply(tmp_path: Path) -> None:
    words = tmp_path / "blocked.txt"
    words.write_text("potato\n", encoding="utf-8")
    reward = StudioReward(lambda prompts, replies: [1.0] * len(replies), length_penalty=0.5, length_target=3,
                          safety=WordListChecker(words), safety_penalty=2.0, samples=SampleLog(tmp_path / "s.jsonl"))
    logged: dict[str, float] = {}
    totals = reward(prompts=["p", "p", "p"], completions=[" fine", " potato", " fine"],
                    completion_ids=[[1, 2], [1, 2, 3, 4, 5], [1, 2, 3, 4]], log_metric=logged.__setitem__)
    assert totals == [1.0, 1.0 - 0.5 * 2 - 2.0, 1.0 - 0.5]
    assert logged["reward/flagged"] == pytest.approx(1 / 3)
    assert logged["reward/length_penalty"] == pytest.approx(-0.5)
    lines = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    # The best and the worst reply of the batch, with their total rewards.
    assert [(s["reply"], s["reward"]) for s in lines] == [(" fine", 1.0), (" potato", -2.0)]


def test_a_nan_score_stops_with_a_message_naming_the_reply() -> None:
    reward = StudioReward(lambda prompts, replies: [0.5, float("nan")])
    with pytest.raises(RewardNotFiniteError, match=r"scored a reply nan .*reply ' broken'"):
        reward(prompts=["p", "q"], completions=[" ok", " broken"], completion_ids=[[1], [2]])


def test_the_batched_scorer_scores_as_the_reward_model_was_trained(tiny_reward, tiny_model_dir: Path) -> None:
    from trainers.methods.reward import load_trained_reward_model, transformers_reward_scores

    _root, store, run_id = tiny_reward
    model, tokenizer = load_trained_reward_model(Path(store.get_run(run_id).output_dir), tiny_model_dir)
    prompt = rendered(SEPARABLE_PAIRS[0][0])
    replies = [" " + SEPARABLE_PAIRS[0][1], " Potato.", " A cat has four legs and it is blue on a clear day."]
    batched = RewardModelScorer(model, tokenizer, batch_size=3)([prompt] * 3, replies)
    one_by_one = transformers_reward_scores(model, tokenizer, prompt, replies)
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    assert batched[0] > batched[1]  # the reward run learnt the sensible reply over the potato one


# Where prompts come from


def test_prompts_come_from_a_file_a_bank_or_the_store(tiny_reward, tmp_path: Path, tiny_model_dir: Path) -> None:
    _root, store, _run_id = tiny_reward
    lines = tmp_path / "prompts.txt"
    lines.write_text("Say hello.\n\nName a fruit.\n", encoding="utf-8")
    rows = tmp_path / "prompts.jsonl"
    rows.write_text('{"prompt": "Say hello."}\n{"prompt": "Say hello."}\n', encoding="utf-8")
    assert [text for _id, text in file_prompts(lines)] == ["Say hello.", "Name a fruit."]
    base = RunConfig(method="rloo", reward_run=1, heldout_fraction=0.0, train_model=str(tiny_model_dir))
    from_file = select_prompts(store, base.replace(rl_prompts=str(lines)))
    assert [e.prompt + e.completion for e in from_file.train] == [rendered("Say hello."), rendered("Name a fruit.")]
    assert select_prompts(store, base.replace(rl_prompts=str(rows))).report.duplicates == 1
    bank = select_prompts(store, base.replace(rl_prompts="bank:everyday"))
    everyday = parse_prompt_bank(Path("assets/prompts/everyday.txt").read_text(encoding="utf-8"))
    assert len(bank.train) == len(set(everyday)) and bank.report.source.startswith("prompt bank")
    stored = select_prompts(store, base.replace(heldout_fraction=0.34))  # the store's prompts as the engine saw them
    assert {e.prompt for e in stored.train + stored.heldout} == {rendered(p) for p, _c, _r in SEPARABLE_PAIRS}
    assert stored.report.duplicates == 6 and len(stored.heldout) == 2


def test_a_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    rows = tmp_path / "prompts.jsonl"
    rows.write_text('{"prompt": "Say hello."}\n{"text": "no prompt"}\n', encoding="utf-8")
    with pytest.raises(PairSelectionError, match=r"prompts.jsonl line 2: no text field `prompt`"):
        file_prompts(rows)


# Bad input: refused before anything is written


def test_rloo_settings_are_refused_on_another_method() -> None:
    with pytest.raises(RunConfigError, match=r"--importance-cap must be greater than 0"):
        RunConfig(method="rloo", importance_cap=0.0)
    with pytest.raises(RunConfigError, match=r"--importance-cap applies to --method rloo only"):
        RunConfig(method="dpo", importance_cap=2.0)
    with pytest.raises(RunConfigError, match=r"--num-generations applies to --method rloo only"):
        RunConfig(method="dpo", num_generations=8)
    with pytest.raises(RunConfigError, match=r"--num-generations must be 2 or more"):
        RunConfig(method="rloo", num_generations=1)
    assert RunConfig(method="rloo", beta=0.0).beta == 0.0  # RLOO without a KL penalty: no reference pass
    with pytest.raises(RunConfigError, match=r"--beta must be greater than 0 \(0, no KL penalty, only with"):
        RunConfig(method="dpo", beta=0.0)


def test_rollouts_default_to_llama_cpp_for_a_gguf_and_to_transformers_for_a_model_folder() -> None:
    from trainers.methods.rloo import rollouts_of

    assert rollouts_of(RunConfig(method="rloo", train_model="/m/gemma.gguf")) == "llama"
    assert rollouts_of(RunConfig(method="rloo", train_model="/m/tiny")) == "transformers"
    assert rollouts_of(RunConfig(method="rloo", train_model="/m/gemma.gguf", rollouts="transformers")) == \
        "transformers"
    # A chained run's earlier adapter is in the torch weights only: llama.cpp would sample another policy.
    assert rollouts_of(RunConfig(method="rloo", train_model="/m/gemma.gguf", init_from=3)) == "transformers"
    with pytest.raises(RunConfigError, match=r"--rollouts llama cannot start from --init-from 3"):
        RunConfig(method="rloo", train_model="/m/gemma.gguf", init_from=3, rollouts="llama")


def test_bad_reward_runs_and_prompts_are_refused_before_anything_is_written(tiny_reward, tmp_path: Path,
                                                                            tiny_model_dir: Path) -> None:
    root, store, run_id = tiny_reward
    before = runs_and_folders(store, root)

    def refused(error: type[Exception], match: str, model: Path = tiny_model_dir, **changes: object) -> None:
        config = RunConfig(**{**FAST_RLOO, "reward_run": run_id, **changes})
        with pytest.raises(error, match=match):
            prepare_run(store, config, model_path=model, runs_root=root / "runs")
        assert runs_and_folders(store, root) == before

    refused(RewardRunError, r"--method rloo needs --reward-run N", reward_run=None)
    refused(RewardRunError, r"--reward-run 99: there is no run 99", reward_run=99)
    other = build_tiny_model(tmp_path / "other-tiny", seed=1)
    refused(RewardRunError, rf"--reward-run {run_id}: run {run_id} was trained on .*its reward model only fits",
            model=other)
    refused(PairSelectionError, r"prompt p\d+ \('User: .*'\) is \d+ tokens: with --max-completion-length 12 it "
            r"does not fit the context of 16 tokens", max_length=16, max_completion_length=12)
    refused(PairSelectionError, r"RLOO needs prompts, and session 999 has none", session_id=999)
    refused(RunConfigError, r"--rollouts llama samples in llama.cpp and needs a .gguf", rollouts="llama")
    # A model folder: transformers samples from the policy itself, so importance weights have nothing to correct.
    refused(RunConfigError, r"--importance-cap weighs replies sampled by llama.cpp", importance_cap=2.0)
    # A run that is not a reward model, and a reward run that did not finish.
    store.set_run_status(run_id, "failed", "broken on purpose")
    try:
        refused(RewardRunError, rf"run {run_id} is failed \(broken on purpose\); only a finished")
    finally:
        store.set_run_status(run_id, "done", "done")


def test_prefstudio_train_rloo_without_a_reward_run_fails_before_a_run(studio_home: Path, tiny_model_dir: Path,
                                                                       tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    with Store.open(db) as opened:
        fill_separable(opened)
    proc = run_cli("--db", str(db), "train", "--method", "rloo", "--train-model", str(tiny_model_dir),
                   home=studio_home)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: --method rloo needs --reward-run N: a done reward run" in proc.stderr
    assert "Traceback" not in proc.stderr
    with Store.open(db) as opened:
        assert opened.list_runs() == []
    assert not (tmp_path / "runs").exists()


# Training


def test_rloo_raises_a_reward_whose_optimum_is_known(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Reward = the share of reply tokens from the lowest quarter of the vocabulary: a dozen RLOO steps raise it
    (the first steps' mean against the last steps'), with the method's own TRL config and reward function."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from trainers.methods.example_training import causal_lm_lora
    from trainers.methods.rloo import build_rloo_config, rloo_trainer_class
    from trainers.model_source import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    cut = len(tokenizer) // 4

    def low_share(prompts: list[str], replies: list[str]) -> list[float]:
        out = []
        for reply in replies:
            ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
            out.append(sum(1 for i in ids if i < cut) / max(1, len(ids)))
        return out

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # The random model's logits are nearly flat (entropy ln 320): its tied embeddings scaled up give it a
    # policy with preferences to move, as a trained model has (entropy ~1.7 nats a token here).
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(6.0)
    config = RunConfig(**{**FAST_RLOO, "reward_run": 1, "learning_rate": 2e-2, "num_generations": 4,
                          "max_completion_length": 4, "max_steps": 12, "target_modules": "all-linear",
                          "beta": 0.01})
    rows = [{"prompt": rendered(p)} for p in ("What colour is the sky?", "Name a fruit.", "Say hello.",
                                              "Where do fish live?")]
    trainer = rloo_trainer_class(config)(  # the method's trainer: transformers rollouts for a model folder
        model=model, reward_funcs=StudioReward(low_share, samples=SampleLog(tmp_path / SAMPLES_FILE)),
        args=build_rloo_config(config, tmp_path / "work", "cpu", "fp32"), train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer, peft_config=causal_lm_lora(config))
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert len(rewards) == 12
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.2, rewards
    samples = [json.loads(line) for line in (tmp_path / SAMPLES_FILE).read_text().splitlines()]
    assert [s["step"] for s in samples[:4]] == [1, 1, 2, 2]


def test_a_run_against_a_reward_run_records_metrics_samples_and_heldout_reward(tiny_reward,
                                                                              tiny_model_dir: Path) -> None:
    root, store, run_id = tiny_reward
    config = RunConfig(**{**FAST_RLOO, "reward_run": run_id, "max_steps": 2, "heldout_fraction": 0.34,
                          "length_penalty": 0.1, "length_target": 2})
    with prefstudio_home(root / "home"):
        prepared = prepare_run(store, config, model_path=tiny_model_dir, runs_root=root / "runs")
        outcome = execute_run(store, prepared.run_id, log=quiet)
    assert outcome.status == "done", outcome.message
    run = store.get_run(prepared.run_id)
    assert len(run.pair_ids) == 4 and len(run.heldout_ids) == 2 and all(i.startswith("p") for i in run.pair_ids)
    metrics = store.run_metrics(prepared.run_id)
    assert [m["step"] for m in metrics] == [1, 2]
    assert {"reward", "reward_std", "kl", "entropy", "completions/mean_length", "reward/model",
            "reward/length_penalty"} <= set(metrics[0])
    output = Path(outcome.output_dir)
    samples = [json.loads(line) for line in (output / SAMPLES_FILE).read_text().splitlines()]
    assert [s["step"] for s in samples] == [1, 1, 2, 2]
    assert set(samples[0]) == {"step", "prompt", "reply", "reward"} and samples[0]["reward"] >= samples[1]["reward"]
    heldout = outcome.summary["heldout"]
    assert {"reward", "reward_model", "length"} <= set(heldout["before"]) and "reward" in heldout["after"]
    assert "mean reward" in run.message and (output / "adapter_model.safetensors").is_file()


def test_a_reward_model_that_scores_nan_fails_the_run_and_publishes_nothing(tiny_reward, tiny_model_dir: Path
                                                                            ) -> None:
    from safetensors.numpy import load_file, save_file

    root, store, run_id = tiny_reward
    with prefstudio_home(root / "home"):
        reward_config = RunConfig(method="reward", lora_r=8, batch_size=4, dtype="fp32", heldout_fraction=0.0,
                                  max_steps=1)
        broken = prepare_run(store, reward_config, model_path=tiny_model_dir, runs_root=root / "runs")
        assert execute_run(store, broken.run_id, log=quiet).status == "done"
        head_file = Path(store.get_run(broken.run_id).output_dir) / "reward_head.safetensors"
        head = load_file(str(head_file))
        head["score.weight"][:] = float("nan")
        save_file(head, str(head_file))
        config = RunConfig(**{**FAST_RLOO, "reward_run": broken.run_id, "max_steps": 2, "heldout_fraction": 0.0})
        prepared = prepare_run(store, config, model_path=tiny_model_dir, runs_root=root / "runs")
        outcome = execute_run(store, prepared.run_id, log=quiet)
    run = store.get_run(prepared.run_id)
    assert outcome.status == "failed" and run.status == "failed"
    assert "the reward model scored a reply nan" in run.message
    assert not prepared.output_dir.exists()  # no adapter folder that looks done
    shutil.rmtree(prepared.paths.work_dir, ignore_errors=True)


# The real default model


@pytest.mark.slow
def test_default_model_runs_two_rloo_steps_against_a_real_reward_run(reward_data: tuple[Path, int],
                                                                     default_model: Path, session_home: Path) -> None:
    db, reward_run_id = reward_data
    copy = db.parent
    with prefstudio_home(session_home), Store.open(db) as store:
        config = RunConfig(method="rloo", reward_run=reward_run_id, max_steps=2, batch_size=1, num_generations=2,
                           max_completion_length=8, heldout_fraction=0.0, learning_rate=1e-4)
        prepared = prepare_run(store, config, model_path=default_model, runs_root=copy / "runs")
        outcome = execute_run(store, prepared.run_id, log=quiet)
        assert outcome.status == "done", outcome.message
        metrics = store.run_metrics(prepared.run_id)
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["reward"] == m["reward"] for m in metrics) and "kl" in metrics[0]
    assert len((Path(outcome.output_dir) / SAMPLES_FILE).read_text().splitlines()) == 4
