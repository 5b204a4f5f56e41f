"""Where one studio DPO step spends its time and memory, phase by phase (run by hand, no ratio: a profile).

    .venv/bin/python bench/dpo_profile.py                 # default model, the train_speed bench pairs
    .venv/bin/python bench/dpo_profile.py --steps 6 --ops # + torch.profiler's top operators
    .venv/bin/python bench/dpo_profile.py --fp32-weights  # the frozen weights left fp32 (before frozen_weights)

Builds the studio's own trainer (``trainers.methods.dpo``: config, LoRA, shared-prompt forward, compact log-probs,
bf16 autocast where the CPU has it) on the pairs ``bench/train_speed.py`` trains on, then runs the training steps
by hand so each phase can be timed on its own: data (collation), the reference pass (adapter disabled, no grad),
the policy forward + loss, backward, the optimizer. The LM head (TRL's chunked log-prob over the vocabulary) is
timed inside the forward and reference passes. RSS (current and peak) is read after loading and after each phase.
The first step is left out of the medians (it allocates).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from trainers.run import native_env  # noqa: E402, F401  (the training process's oneDNN settings, before torch)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_split_mb() -> tuple[float, float]:
    """(anonymous, file-backed) resident MB: the model's weights are a memory map of the cached safetensors."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["RssAnon"].split()[0]) / 1024, int(fields["RssFile"].split()[0]) / 1024


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--model", default=None, help="a bundled model's name or a .gguf path")
    parser.add_argument("--ops", action="store_true", help="also print torch.profiler's top operators")
    parser.add_argument("--trl-head", action="store_true",
                        help="TRL's own CPU fold for the LM head instead of trainers.cpu_logprob_head (as runs were)")
    parser.add_argument("--fp32-weights", action="store_true",
                        help="keep the frozen weights fp32 (as runs were before trainers.frozen_weights)")
    opts = parser.parse_args()
    memory: list[tuple[str, float, float]] = [("imports (python)", rss_mb(), peak_mb())]

    import torch
    import trl.trainer.utils as trl_utils
    from datasets import Dataset
    from train_speed import bench_pairs

    from studio.inference import runtime_env  # noqa: F401
    from studio.inference.model_files import DEFAULT_MODEL_NAME, named_model_path
    from trainers.compact_logprobs import enable_compact_logprobs_on_cpu
    from trainers.cpu_logprob_head import enable_cpu_logprob_head
    from trainers.frozen_weights import store_frozen_weights_for_autocast
    from trainers.methods.dpo import METHOD, lora_config
    from trainers.model_prompt_format import prompt_format_for_model
    from trainers.model_source import load_model, load_tokenizer, resolve_model_source
    from trainers.run.allocator import keep_freed_memory
    from trainers.run.device import cpu_has_native_bf16
    from trainers.run_config import RunConfig

    memory.append(("imports (torch, transformers, trl)", rss_mb(), peak_mb()))
    keep_freed_memory()
    torch.set_num_threads(os.cpu_count() or 1)
    enable_compact_logprobs_on_cpu()
    if not opts.trl_head:
        enable_cpu_logprob_head()
    name = opts.model or DEFAULT_MODEL_NAME
    gguf = named_model_path(name)
    rows = bench_pairs(opts.pairs, prompt_format_for_model(gguf))
    source = resolve_model_source(gguf)
    tokenizer = load_tokenizer(source.model_dir)
    memory.append(("tokenizer", rss_mb(), peak_mb()))
    model = load_model(source.model_dir, device="cpu")
    memory.append(("model loaded (fp32)", rss_mb(), peak_mb()))
    dtype = opts.dtype if opts.dtype != "auto" else ("bf16" if cpu_has_native_bf16() else "fp32")
    config = RunConfig(max_length=opts.max_length, batch_size=opts.batch_size, dtype=dtype, heldout_fraction=0.0)

    head_seconds: list[float] = []
    original_head = trl_utils._ChunkedLogProbFunction

    class TimedHead:
        @staticmethod
        def apply(*args):  # noqa: ANN002, ANN205
            started = time.perf_counter()
            out = original_head.apply(*args)
            head_seconds.append(time.perf_counter() - started)
            return out

    trl_utils._ChunkedLogProbFunction = TimedHead
    with tempfile.TemporaryDirectory() as tmp:
        args = METHOD.trainer_args(config, Path(tmp), "cpu", dtype, False, opts.max_length)
        trainer = METHOD.trainer_class()(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                         processing_class=tokenizer, peft_config=lora_config(config))
        memory.append(("trainer built (LoRA, tokenised)", rss_mb(), peak_mb()))
        if not opts.fp32_weights:
            frozen = store_frozen_weights_for_autocast(trainer.model, "cpu", dtype)
            if frozen is not None:
                print(frozen.describe(), flush=True)
                memory.append(("frozen weights stored for autocast", rss_mb(), peak_mb()))
        trainer.create_optimizer_and_scheduler(num_training_steps=opts.steps)
        model = trainer.model
        model.train()
        trainer.precompute_ref_logps = True  # the reference pass is timed on its own below
        loader = iter(trainer.get_train_dataloader())
        phases: dict[str, list[float]] = {k: [] for k in
                                          ("data", "reference", "ref LM head", "policy forward + loss",
                                           "policy LM head", "backward", "optimizer", "step")}
        tokens: list[int] = []
        profiler = None
        if opts.ops:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        for step in range(opts.steps):
            if profiler is not None and step == 1:
                profiler.__enter__()
            t0, cpu0 = time.perf_counter(), time.process_time()
            batch = next(loader)
            t1 = time.perf_counter()
            tokens.append(int(batch["attention_mask"].sum()))
            head_seconds.clear()
            with trainer.accelerator.autocast():
                chosen, rejected = trainer.compute_ref_log_probs(model, batch)
            t2 = time.perf_counter()
            ref_head = sum(head_seconds)
            head_seconds.clear()
            batch["ref_chosen_logps"], batch["ref_rejected_logps"] = chosen, rejected
            if step == 0:
                memory.append(("after reference pass", rss_mb(), peak_mb()))
            with trainer.accelerator.autocast():
                loss = trainer.compute_loss(model, batch)
            t3 = time.perf_counter()
            policy_head = sum(head_seconds)
            if step == 0:
                memory.append(("after policy forward", rss_mb(), peak_mb()))
            trainer.accelerator.backward(loss)
            t4 = time.perf_counter()
            if step == 0:
                memory.append(("after backward", rss_mb(), peak_mb()))
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            model.zero_grad(set_to_none=True)
            t5 = time.perf_counter()
            if step == 0:
                memory.append(("after optimizer step", rss_mb(), peak_mb()))
            for key, value in (("data", t1 - t0), ("reference", t2 - t1), ("ref LM head", ref_head),
                               ("policy forward + loss", t3 - t2), ("policy LM head", policy_head),
                               ("backward", t4 - t3), ("optimizer", t5 - t4), ("step", t5 - t0)):
                phases[key].append(value)
            anon, mapped = rss_split_mb()
            print(f"step {step}: {t5 - t0:.2f} s (CPU {time.process_time() - cpu0:.2f} s), {tokens[-1]} tokens, loss {float(loss.detach()):.4f}, "
                  f"RSS anon {anon:.0f} MB file {mapped:.0f} MB", flush=True)
        if profiler is not None:
            profiler.__exit__(None, None, None)
        memory.append(("after all steps", rss_mb(), peak_mb()))

    counted = slice(1, None) if opts.steps > 1 else slice(None)
    total = statistics.median(phases["step"][counted])
    print(f"\n{gguf.name}, {'TRL' if opts.trl_head else 'studio'} LM head, {dtype}, batch {opts.batch_size}, {opts.steps} steps (median of steps 2..), "
          f"{statistics.median(tokens)} padded tokens per batch")
    print("| phase | median s | share of step |\n|---|---|---|")
    for key, values in phases.items():
        median = statistics.median(values[counted])
        print(f"| {key} | {median:.3f} | {median / total:.0%} |")
    print("\n| after | RSS MB | peak RSS MB |\n|---|---|---|")
    for label, now, peak in memory:
        print(f"| {label} | {now:.0f} | {peak:.0f} |")
    if profiler is not None:
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    print(json.dumps({k: statistics.median(v[counted]) for k, v in phases.items()}))


if __name__ == "__main__":
    main()
