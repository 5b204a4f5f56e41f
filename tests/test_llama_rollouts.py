"""llama.cpp rollouts for online RL (trainers.llama_rollouts, trainers.rollout_trainer) on the real SmolLM2 GGUF
against transformers on the same GGUF dequantised (converted once per session home).

What must hold: greedy llama.cpp continues a prompt as torch does; an exported LoRA with non-zero B changes the
rollouts, and the synced engine then agrees with torch + PEFT; n sequences decoded side by side are token for token
and log-prob for log-prob the n sequences decoded alone (same seeds); the sampler's log-probs are close to torch's
for the same tokens; TRL's RLOOTrainer runs with the rollouts and logs the log-ratio; another TRL is refused loudly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import prefstudio_home

from trainers.llama_rollouts import LlamaRollouts, RolloutConfig, RolloutError, sample_token
from trainers.rollout_trainer import UnsupportedTRLError, check_trl_compatible, logratio_stats

SYSTEM = "You are a concise, friendly assistant."  # with SmolLM2's default system text its greedy replies are
QUESTIONS = ["What is the capital of France?", "Write one sentence about rain.", "Name a colour."]  # less clear-cut


@dataclass
class Loaded:
    rollouts: LlamaRollouts
    model_dir: Path
    model: torch.nn.Module  # LlamaForCausalLM, fp32, eval mode
    prompts: list[list[int]]  # ChatML prompts tokenized by the trainer's (HF) tokenizer
    eos: int


@pytest.fixture(scope="module")
def loaded(smollm2_model: Path, session_home: Path) -> Iterator[Loaded]:
    from trainers.model_source import load_model, load_tokenizer, resolve_model_source

    with prefstudio_home(session_home):
        model_dir = resolve_model_source(smollm2_model).model_dir
    tokenizer = load_tokenizer(model_dir)
    prompts = [tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
               for q in QUESTIONS]
    model = load_model(model_dir, device="cpu").eval()
    with LlamaRollouts(smollm2_model, RolloutConfig(n_ctx=2048, n_seq_max=8)) as rollouts:
        yield Loaded(rollouts, model_dir, model, [list(p) for p in prompts], int(tokenizer.eos_token_id))


def torch_logps(model: torch.nn.Module, prompt: list[int], completion: list[int], temperature: float) -> np.ndarray:
    """log π_torch(completion[j] | prompt + completion[:j]) at ``temperature``."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1: -1].double() / temperature
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None])[:, 0].numpy()


def test_greedy_continuation_equals_torch(loaded: Loaded) -> None:
    prompt = loaded.prompts[0]
    out = loaded.rollouts.generate([prompt], max_new_tokens=10, temperature=0.0, stop_ids=[loaded.eos])
    with torch.no_grad():
        ids = loaded.model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                                    eos_token_id=loaded.eos, pad_token_id=loaded.eos)[0, len(prompt):].tolist()
    assert out.completion_ids[0] == ids
    assert len(ids) >= 5  # a reply ("L'Alma: Paris, France."), not an immediate end


def test_batch_equals_sequential_at_fixed_seeds(loaded: Loaded) -> None:
    prompts = [loaded.prompts[1], loaded.prompts[1], loaded.prompts[2], loaded.prompts[1]]
    seeds = [11, 12, 13, 11]
    together = loaded.rollouts.generate(prompts, max_new_tokens=16, temperature=1.0, stop_ids=[loaded.eos],
                                        seeds=seeds)
    alone = [loaded.rollouts.generate([p], max_new_tokens=16, temperature=1.0, stop_ids=[loaded.eos], seeds=[s])
             for p, s in zip(prompts, seeds, strict=True)]
    assert together.completion_ids == [a.completion_ids[0] for a in alone]
    assert together.logprobs == [a.logprobs[0] for a in alone]
    assert together.completion_ids[0] == together.completion_ids[3]  # same prompt, same seed
    assert together.completion_ids[0] != together.completion_ids[1]  # same prompt, another seed


def test_sampled_logprobs_close_to_torch(loaded: Loaded) -> None:
    """The quantised sampler's distribution is near torch's on the tokens it drew (a property, loosely bound)."""
    prompts = [p for p in loaded.prompts for _ in range(2)]
    out = loaded.rollouts.generate(prompts, max_new_tokens=24, temperature=1.0, stop_ids=[loaded.eos],
                                   seeds=list(range(len(prompts))))
    torch_rows = [torch_logps(loaded.model, p, c, 1.0) for p, c in zip(prompts, out.completion_ids, strict=True)]
    width = max(len(c) for c in out.completion_ids)
    padded = torch.tensor([list(r) + [0.0] * (width - len(r)) for r in torch_rows])
    stats = logratio_stats(padded, out.logprobs)
    print(f"\nSmolLM2 Q4_1 vs dequantised torch over {stats.per_token.numel()} sampled tokens: mean log-ratio "
          f"{stats.mean:+.4f}, mean |log-ratio| {stats.mean_abs:.4f}, per sequence |Σ| "
          f"{float(stats.per_sequence.abs().mean()):.3f}")
    assert stats.per_token.numel() >= 20
    assert stats.mean_abs < 0.25
    assert abs(stats.mean) < 0.1


def test_adapter_sync_changes_rollouts_and_matches_peft(loaded: Loaded, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    prompt = loaded.prompts[2]
    base = loaded.rollouts.generate([prompt], max_new_tokens=12, temperature=1.0, stop_ids=[loaded.eos], seeds=[5])
    peft_model = get_peft_model(loaded.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    try:
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
        loaded.rollouts.sync(peft_model)
        tuned = loaded.rollouts.generate([prompt], max_new_tokens=12, temperature=1.0, stop_ids=[loaded.eos],
                                         seeds=[5])
        tuned_torch = torch_logps(peft_model, prompt, tuned.completion_ids[0], 1.0)
        with peft_model.disable_adapter():
            base_torch = torch_logps(peft_model, prompt, tuned.completion_ids[0], 1.0)
    finally:
        loaded.rollouts.clear_adapter()
        peft_model.unload()  # leaves the module's model as it was for the other tests
    assert tuned.completion_ids != base.completion_ids or tuned.logprobs != base.logprobs
    synced_gap = np.abs(np.array(tuned.logprobs[0]) - tuned_torch).mean()
    base_gap = np.abs(np.array(tuned.logprobs[0]) - base_torch).mean()
    assert synced_gap < base_gap / 2, (synced_gap, base_gap)
    again = loaded.rollouts.generate([prompt], max_new_tokens=12, temperature=1.0, stop_ids=[loaded.eos], seeds=[5])
    assert again.completion_ids == base.completion_ids  # clear_adapter restores the base


def test_rollouts_that_do_not_fit_are_refused(loaded: Loaded) -> None:
    with pytest.raises(RolloutError, match="need .* cells of the 2048-token rollout context"):
        loaded.rollouts.generate([loaded.prompts[0]] * 8, max_new_tokens=400, temperature=1.0)
    with pytest.raises(RolloutError, match="holds 8 sequences"):
        loaded.rollouts.generate([loaded.prompts[0]] * 9, max_new_tokens=4, temperature=1.0)


def test_sample_token_top_p_renormalises_the_nucleus() -> None:
    logits = np.log(np.array([0.1, 0.6, 0.3], dtype=np.float32))
    rng = np.random.default_rng(0)
    token, logp = sample_token(logits, 1.0, 0.5, rng)  # 0.6 alone reaches 0.5
    assert (token, logp) == (1, pytest.approx(0.0))
    draws = [sample_token(logits, 1.0, 0.8, rng) for _ in range(400)]  # nucleus {1, 2}: 2/3 and 1/3
    assert {t for t, _ in draws} == {1, 2}
    assert dict(draws)[2] == pytest.approx(np.log(1 / 3), abs=1e-6)
    assert 0.55 < sum(t == 1 for t, _ in draws) / 400 < 0.78


def test_trl_version_guard_fails_loudly() -> None:
    check_trl_compatible()  # the installed TRL is the supported one
    with pytest.raises(UnsupportedTRLError, match=r"written for TRL 1\.16\.x; the installed TRL is 2\.0\.0"):
        check_trl_compatible("2.0.0")

    from trl import RLOOTrainer

    class Changed(RLOOTrainer):  # a TRL whose private generation hook took other arguments
        def _generate_single_turn(self, prompts, sampling_params):  # noqa: ANN001,ANN202
            return []

    with pytest.raises(UnsupportedTRLError, match=r"_generate_single_turn takes \(prompts, sampling_params\)"):
        check_trl_compatible("1.16.0", Changed)


def test_rloo_trainer_takes_llama_rollouts(loaded: Loaded, smollm2_model: Path, tmp_path: Path) -> None:
    """Two RLOO steps with the rollouts from llama.cpp: the adapter is synced each step and the log-ratio logged."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import RLOOConfig

    from trainers.model_source import load_model, load_tokenizer
    from trainers.rollout_trainer import LlamaRolloutRLOOTrainer

    def shorter_is_better(completions: list[list[dict[str, str]]], **_: object) -> list[float]:
        return [-float(len(c[0]["content"])) for c in completions]  # conversational: one assistant message each

    args = RLOOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=8, max_steps=2, learning_rate=1e-3, logging_steps=1, use_cpu=True,
                      bf16=False, report_to=[], save_strategy="no", gradient_checkpointing=False, seed=3)
    prompts = [{"prompt": [{"role": "user", "content": q}]} for q in QUESTIONS[:2]] * 4
    trainer = LlamaRolloutRLOOTrainer(
        gguf_path=smollm2_model, rollout_config=RolloutConfig(n_ctx=1024, n_seq_max=8, seed=3), importance_cap=1.5,
        model=load_model(loaded.model_dir, device="cpu"), args=args, reward_funcs=shorter_is_better,
        train_dataset=Dataset.from_list(prompts), processing_class=load_tokenizer(loaded.model_dir),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    try:
        trainer.train()
    finally:
        trainer.close()
    logged = [entry for entry in trainer.state.log_history if "rollout/logratio" in entry]
    assert len(logged) == 2
    assert all(abs(entry["rollout/abs_logratio"]) < 0.5 for entry in logged)
    assert all(entry["rollout/sync_s"] > 0 for entry in logged)  # synced at step 0 and again after step 1
    assert all(0 < entry["rollout/importance_weight"] <= 1.5 for entry in logged)


def test_importance_weights_are_the_capped_probability_ratio_of_each_completion() -> None:
    from trainers.rollout_trainer import importance_weights

    # Σ log π_llama.cpp − log π_torch per completion: torch likes the first more, the third much more.
    weights = importance_weights(torch.tensor([-0.2, 0.0, -3.0, 0.5], dtype=torch.float64), cap=2.0)
    assert weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx([np.exp(0.2), 1.0, 2.0, np.exp(-0.5)], rel=1e-6)
