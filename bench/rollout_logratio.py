"""RLOO rollouts: llama.cpp (``trainers.llama_rollouts``) against transformers ``generate``, and the log-ratio.

For each bundled model (Gemma 3 270M base, Q4_K_M / Q5_0 layers; SmolLM2-135M-Instruct, Q4_1) and its weights
dequantised for torch (the studio's converted cache): 4 prompts × 4 replies of up to 48 tokens at temperature 1,
stopping at EOS, as an RLOO step samples them. Times llama.cpp (all 16 in one batch, the prompt shared) and
transformers ``generate`` (the 16 left-padded in one batch, ``do_sample``, what TRL's RLOOTrainer runs), and
measures, on llama.cpp's tokens, the log-ratio log π_llama.cpp − log π_torch (the same tokens scored by torch
at the same temperature): its mean, mean absolute value per token, and the mean |Σ| per completion (what an
importance weight per sequence would see). Also prints the cost of one adapter sync (PEFT save + GGUF export +
swap) for a r16 LoRA on q/k/v/o. Runs alternate between the two engines (``--rounds``) to share background load.
The last line is the time ratio llama.cpp / transformers on the default model.

    .venv/bin/python bench/rollout_logratio.py [--models gemma3-270m,smollm2] [--rounds 2] [--tokens 48]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import trainers  # noqa: F401,I001  (HF offline env before transformers)
from studio.inference.model_files import DEFAULT_MODEL_NAME, bundled_model_path
from trainers.llama_rollouts import LlamaRollouts, RolloutConfig
from trainers.model_source import load_model, load_tokenizer, resolve_model_source
from trainers.rollout_trainer import logratio_stats

QUESTIONS = [
    "How do I make a good first impression at a new job?",
    "Explain why the sky is blue.",
    "Give me a tip for sleeping better.",
    "What should I pack for a day hike?",
]
REPLIES = 4


def prompt_ids(tokenizer, question: str) -> list[int]:  # noqa: ANN001 - a PreTrainedTokenizerBase
    if tokenizer.chat_template:
        return list(tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                  add_generation_prompt=True, tokenize=True, return_dict=False))
    return tokenizer(f"User: {question}\nAssistant:")["input_ids"]  # Gemma base: the studio's transcript form


def torch_generate(model, tokenizer, prompts: list[list[int]], tokens: int, seed: int) -> tuple[float, int]:  # noqa: ANN001
    pad = tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, do_sample=True,
                             temperature=1.0, top_p=1.0, top_k=0, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=pad)
    elapsed = time.perf_counter() - start
    n = 0
    for row in out[:, width:].tolist():  # tokens up to and including the first EOS (the rest is padding)
        n += row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
    return elapsed, n


def torch_logps(model, prompts: list[list[int]], completions: list[list[int]]) -> torch.Tensor:  # noqa: ANN001
    """Right-padded (n, max completion) log-probs of each completion token under torch at temperature 1."""
    width = max(len(c) for c in completions)
    out = torch.zeros(len(prompts), width, dtype=torch.float64)
    with torch.no_grad():
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1: -1].double()
            out[i, : len(c)] = torch.log_softmax(logits, -1).gather(1, torch.tensor(c)[:, None])[:, 0]
    return out


def sync_cost(model, rollouts: LlamaRollouts) -> dict[str, float]:  # noqa: ANN001
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32,
                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    try:
        rollouts.sync(peft_model)
        total = rollouts.sync(peft_model)  # the second: files and caches warm, as every step after the first
        return {"total": total, **rollouts.last_sync_s}
    finally:
        rollouts.clear_adapter()
        peft_model.unload()


def bench_model(name: str, rounds: int, tokens: int) -> float:
    gguf = bundled_model_path(name)
    model_dir = resolve_model_source(gguf).model_dir
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, device="cpu").eval()
    prompts = [prompt_ids(tokenizer, q) for q in QUESTIONS for _ in range(REPLIES)]
    eos = [tokenizer.eos_token_id]
    times = {"llama.cpp": 0.0, "transformers": 0.0}
    counts = {"llama.cpp": 0, "transformers": 0}
    stats = []
    with LlamaRollouts(gguf, RolloutConfig(n_ctx=4096, seed=0)) as rollouts:
        # Warm both engines first (llama.cpp's first decode pages the model in and builds its graphs: ~35 s for
        # Gemma here, once per run), so the rounds time what every step of a run pays.
        rollouts.generate(prompts[:2], max_new_tokens=4, temperature=1.0)
        torch_generate(model, tokenizer, prompts[:2], 4, seed=0)
        for r in range(rounds):
            start = time.perf_counter()
            out = rollouts.generate(prompts, max_new_tokens=tokens, temperature=1.0, stop_ids=eos)
            times["llama.cpp"] += time.perf_counter() - start
            counts["llama.cpp"] += sum(len(c) for c in out.completion_ids)
            elapsed, n = torch_generate(model, tokenizer, prompts, tokens, seed=r)
            times["transformers"] += elapsed
            counts["transformers"] += n
            stats.append(logratio_stats(torch_logps(model, prompts, out.completion_ids), out.logprobs))
        sync = sync_cost(model, rollouts)
    per_token = torch.cat([s.per_token for s in stats])
    per_seq = torch.cat([s.per_sequence for s in stats])
    # What an importance weight would change: a completion's weight relative to its group's (RLOO's baseline is
    # the group's other replies, so a weight shared by the whole group scales the step, not its direction).
    weights = torch.exp(-per_seq).view(-1, REPLIES)
    relative = (weights / weights.mean(dim=1, keepdim=True) - 1).abs()
    print(f"{name}: log-ratio log π_llama.cpp − log π_torch over {per_token.numel()} sampled tokens: mean "
          f"{float(per_token.mean()):+.4f}, mean |·| {float(per_token.abs().mean()):.4f}, p95 |·| "
          f"{float(per_token.abs().quantile(0.95)):.4f}; per completion mean |Σ| {float(per_seq.abs().mean()):.3f}, "
          f"importance weight exp(−Σ) range {float(torch.exp(-per_seq).min()):.3f}–{float(torch.exp(-per_seq).max()):.3f}, "
          f"relative to its group's mean: mean |w/w̄ − 1| {float(relative.mean()):.3f}, max {float(relative.max()):.3f}")
    print(f"{name}: {rounds} rounds of {len(QUESTIONS)}×{REPLIES}×≤{tokens} tokens: llama.cpp {times['llama.cpp']:.2f} s "
          f"({counts['llama.cpp']} tokens), transformers {times['transformers']:.2f} s ({counts['transformers']} tokens); "
          f"ratio {times['llama.cpp'] / times['transformers']:.3f}")
    print(f"{name}: adapter sync (r16 q/k/v/o) {sync['total'] * 1000:.0f} ms: PEFT save {sync['save'] * 1000:.0f} ms, "
          f"GGUF export {sync['export'] * 1000:.0f} ms, llama.cpp swap {sync['swap'] * 1000:.1f} ms")
    return times["llama.cpp"] / times["transformers"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=f"{DEFAULT_MODEL_NAME},smollm2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    load_before = os.getloadavg()[0]
    ratios = {name: bench_model(name, args.rounds, args.tokens) for name in args.models.split(",")}
    first = next(iter(ratios))
    print(f"ratio {ratios[first]:.3f} (llama.cpp / transformers rollout time, {first}; load average "
          f"{load_before:.1f} → {os.getloadavg()[0]:.1f}; numpy {np.__version__})")


if __name__ == "__main__":
    main()
