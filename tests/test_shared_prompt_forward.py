"""A pair's prompt runs through the model once: the same log-probabilities and gradients as TRL's two padded
rows, from fewer tokens; batches it cannot share go to TRL's own forward."""

from __future__ import annotations

import copy

import pytest
import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import add_fused_lm_head

import trainers  # noqa: F401  (HF offline env)
from trainers.compact_logprobs import enable_compact_logprobs_on_cpu
from trainers.shared_prompt_forward import pack_pairs, share_prompt_forward

OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")  # what TRL's DPOTrainer asks its fused head for
PAIRS = [  # prompts of different lengths, replies longer and shorter than each other
    {"prompt_ids": [2, 5, 6, 7, 8], "chosen_ids": [9, 10, 11, 12, 1], "rejected_ids": [13, 1]},
    {"prompt_ids": [2, 20, 21], "chosen_ids": [22, 1], "rejected_ids": [23, 24, 25, 26, 27, 28, 1]},
    {"prompt_ids": [2, 30, 31, 32, 33, 34, 35, 36], "chosen_ids": [37, 38, 1], "rejected_ids": [39, 1]},
]


def tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))


def tiny_gemma3() -> torch.nn.Module:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    # A window of 4 positions, shorter than the rows, so the sliding layers' own mask matters.
    return Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                              sliding_window=4))


def twins(build, attention: str, outputs: tuple[str, ...] = OUTPUTS,  # noqa: ANN001
          by: str = "pairs") -> tuple[torch.nn.Module, torch.nn.Module, list[int]]:
    """Two copies of one random model with TRL's fused head, the second sharing prompts (``by`` pairs or
    prompt); the token counts the second's backbone was given, call by call."""
    enable_compact_logprobs_on_cpu()
    torch.manual_seed(0)
    trl_side = build()
    trl_side.config._attn_implementation = attention
    shared = copy.deepcopy(trl_side)
    for model in (trl_side, shared):
        add_fused_lm_head(model, outputs=outputs)
    assert share_prompt_forward(shared, by=by)
    seen: list[int] = []
    shared.get_input_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].numel()))
    return trl_side, shared, seen


def batch_of(pairs: list[dict[str, list[int]]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    batch = DataCollatorForPreference(pad_token_id=0)(pairs)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}, labels


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3-sliding"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_pair_batch_scores_the_same_with_its_prompt_run_once(build, attention: str) -> None:  # noqa: ANN001
    trl_side, shared, seen = twins(build, attention)
    inputs, labels = batch_of(PAIRS)

    expected = trl_side(**inputs, labels=labels, fused_lm_head=True)
    got = shared(**inputs, labels=labels, fused_lm_head=True)

    assert got.log_probs.shape == expected.log_probs.shape
    torch.testing.assert_close(got.log_probs, expected.log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.entropy, expected.entropy, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.is_top1, expected.is_top1) and torch.equal(got.label_mask, expected.label_mask)
    expected.log_probs.sum().backward()
    got.log_probs.sum().backward()
    for (name, a), b in zip(trl_side.named_parameters(), shared.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
    # One packed row: each prompt once (its last token once per reply), no padding.
    prompts = sum(len(p["prompt_ids"]) for p in PAIRS)
    replies = sum(len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in PAIRS)
    assert seen == [prompts + len(PAIRS) + replies]
    assert seen[0] < inputs["input_ids"].numel()


def test_batches_it_cannot_share_go_to_trls_forward() -> None:
    trl_side, shared, seen = twins(tiny_llama, "sdpa")
    inputs, labels = batch_of(PAIRS[:2])
    inputs["input_ids"][3, 1] = 40  # the second pair's rejected row no longer has its chosen row's prompt
    assert pack_pairs(inputs["input_ids"], inputs["attention_mask"], labels) is None

    got = shared(**inputs, labels=labels, fused_lm_head=True)

    torch.testing.assert_close(got.log_probs, trl_side(**inputs, labels=labels, fused_lm_head=True).log_probs)
    assert seen == [inputs["input_ids"].numel()]  # the padded batch, as TRL gives it


def test_a_batch_too_long_for_one_row_keeps_trls_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    import trainers.shared_prompt_forward as shared_prompt

    inputs, labels = batch_of(PAIRS)
    assert pack_pairs(inputs["input_ids"], inputs["attention_mask"], labels) is not None
    monkeypatch.setattr(shared_prompt, "MAX_PACKED_TOKENS", 20)  # the three pairs pack into 40 tokens
    assert pack_pairs(inputs["input_ids"], inputs["attention_mask"], labels) is None


def test_a_reply_truncated_away_is_not_packed() -> None:
    inputs, labels = batch_of(PAIRS[:1])
    labels[1] = -100  # the rejected reply cut off by max_length: nothing of it left to score
    assert pack_pairs(inputs["input_ids"], inputs["attention_mask"], labels) is None


GROUPS = [  # RLOO: replies to one prompt each, prompts of different lengths (left-padded), replies too
    {"prompt": [2, 5, 6, 7, 8], "replies": [[9, 10, 11, 1], [12, 1], [13, 14, 15, 16, 17, 1]]},
    {"prompt": [2, 20, 21], "replies": [[22, 1], [23, 24, 25, 1], [26, 27, 1]]},
]


def rloo_batch(order: list[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """TRL's RLOO layout: left-padded prompt columns, then right-padded reply columns, rows in ``order``; the
    labels as TRL's ``_get_per_token_logps_and_entropies`` makes them; the reply width (``logits_to_keep``)."""
    rows = [(g["prompt"], reply) for g in GROUPS for reply in g["replies"]]
    rows = [rows[i] for i in order]
    prompt_width = max(len(p) for p, _ in rows)
    reply_width = max(len(r) for _, r in rows)
    ids, mask = [], []
    for prompt, reply in rows:
        left, right = prompt_width - len(prompt), reply_width - len(reply)
        ids.append([0] * left + prompt + reply + [0] * right)
        mask.append([0] * left + [1] * (len(prompt) + len(reply)) + [0] * right)
    input_ids, attention_mask = torch.tensor(ids), torch.tensor(mask)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :-reply_width] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask}, labels, reply_width


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3-sliding"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_rloo_replies_to_one_prompt_share_it_wherever_the_shuffle_put_them(build, attention: str) -> None:  # noqa: ANN001
    trl_side, shared, seen = twins(build, attention, outputs=("log_probs", "entropy"), by="prompt")
    inputs, labels, keep = rloo_batch([4, 0, 2, 5, 1, 3])  # shuffled: the groups' rows interleave

    expected = trl_side(**inputs, labels=labels, fused_lm_head=True)
    got = shared(**inputs, labels=labels, fused_lm_head=True)

    mask = labels[:, 1:] != -100
    assert bool(mask[:, -keep:].any(dim=1).all())  # every row has reply tokens scored
    torch.testing.assert_close(got.log_probs[mask], expected.log_probs[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.entropy[mask], expected.entropy[mask], atol=1e-5, rtol=1e-5)
    assert bool((got.log_probs[~mask] == 0).all())
    (expected.log_probs * mask).sum().backward()
    (got.log_probs * mask).sum().backward()
    for (name, a), b in zip(trl_side.named_parameters(), shared.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
    # One packed row per prompt, padded to the longest: prompt once, its last token once per reply.
    packed = [len(g["prompt"]) - 1 + sum(1 + len(r) for r in g["replies"]) for g in GROUPS]
    assert seen == [len(GROUPS) * max(packed)]
    assert seen[0] < inputs["input_ids"].numel()


def test_rloo_rows_that_do_not_group_by_prompt_are_still_scored() -> None:
    from trainers.shared_prompt_forward import pack_shared_prompts

    inputs, labels, _ = rloo_batch([0, 1, 2, 3, 4, 5])
    inputs["attention_mask"][0, -1] = 0  # padding inside a row: not a layout this packs
    inputs["attention_mask"][0, 6] = 0
    assert pack_shared_prompts(inputs["input_ids"], inputs["attention_mask"], labels, by="prompt") is None
    single, labels, _ = rloo_batch([0, 3])  # one reply per prompt: packs, each row its own group
    assert pack_shared_prompts(single["input_ids"], single["attention_mask"], labels, by="prompt") is not None


def tiny_classifier(kind: str) -> torch.nn.Module:
    from transformers import (
        Gemma3TextConfig,
        Gemma3TextForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    if kind == "llama":
        return LlamaForSequenceClassification(LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_labels=1, pad_token_id=0))
    return Gemma3TextForSequenceClassification(Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=4, num_labels=1, pad_token_id=0))


REWARD_PAIRS = [  # chosen / rejected as the reward trainer gets them: the same prompt, then the replies
    {"chosen_ids": [2, 5, 6, 7, 8, 9, 10, 11, 1], "rejected_ids": [2, 5, 6, 7, 8, 13, 1]},
    {"chosen_ids": [2, 20, 21, 22, 1], "rejected_ids": [2, 20, 21, 23, 24, 25, 26, 27, 1]},
]


@pytest.mark.parametrize("kind", ["llama", "gemma3-sliding"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_reward_pair_batch_scores_the_same_with_its_prompt_run_once(kind: str, attention: str) -> None:
    from trl.trainer.reward_trainer import DataCollatorForPreference as RewardCollator

    from trainers.shared_prompt_forward import share_prompt_in_reward_model

    torch.manual_seed(0)
    plain = tiny_classifier(kind)
    plain.config._attn_implementation = attention
    shared = copy.deepcopy(plain)
    assert share_prompt_in_reward_model(shared)
    seen: list[int] = []
    shared.get_input_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].numel()))
    batch = RewardCollator(pad_token_id=0)(REWARD_PAIRS)

    expected = plain(**batch, use_cache=False).logits
    got = shared(**batch, use_cache=False).logits

    assert got.shape == expected.shape == (4, 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    expected.sum().backward()
    got.sum().backward()
    for (name, a), b in zip(plain.named_parameters(), shared.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
    # One row: each pair's shared prefix once (its last token once per row), then what differs: 4 + 5 + 3 for
    # the first pair (prefix of 5), 2 + 3 + 7 for the second (prefix of 3), against 30 tokens unpadded.
    assert seen == [24]
    assert seen[0] < batch["input_ids"].numel()


def test_reward_rows_that_share_nothing_keep_the_models_own_forward() -> None:
    from trl.trainer.reward_trainer import DataCollatorForPreference as RewardCollator

    from trainers.shared_prompt_forward import pack_reward_pairs

    batch = RewardCollator(pad_token_id=0)([{"chosen_ids": [3, 4, 1], "rejected_ids": [5, 4, 1]}])
    assert pack_reward_pairs(batch["input_ids"], batch["attention_mask"], 0) is None  # no common prefix
    batch = RewardCollator(pad_token_id=0)([{"chosen_ids": [3, 4], "rejected_ids": [3, 4, 7, 1]}])
    assert pack_reward_pairs(batch["input_ids"], batch["attention_mask"], 0) is None  # one row is all prefix
