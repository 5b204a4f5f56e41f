"""Compare speed: adapter switching, scoring, and side-by-side generation against raw llama-cpp-python.

Self-contained: it writes a random rank-16 GGUF LoRA on the default model's attention projections (speed does
not depend on the values) and measures, in one run:

1. adapter switch time (activate adapter / base, median of 50 each, prompt cache reset included);
2. scoring speed of fixed replies (``studio.inference.scoring.reply_logprob``), tokens/s;
3. side-by-side answers to 10 prompts (base then tuned, same seeds, settings and stop strings) by the
   studio, against the same 20 generations by raw llama-cpp-python: one plain ``Llama`` and one
   ``Llama(lora_path=...)``. The ratio printed last is raw time / studio time (target ≥ 0.95).

    .venv/bin/python bench/compare_speed.py [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from studio.evaluation.comparison import side_by_side
from studio.inference import runtime_env  # noqa: F401,I001  (OMP_WAIT_POLICY before llama_cpp loads)
from studio.inference.engine import ChatEngine, EngineConfig, SamplingSettings
from studio.inference.model_files import GGUFInfo, ensure_default_model
from studio.inference.scoring import reply_logprob

PROMPTS = [
    "What should I cook tonight?", "How do I keep my plants alive?", "Explain tides simply.",
    "Suggest a weekend hobby.", "Why do cats purr?", "How can I sleep better?", "What is a good first bike?",
    "Describe autumn in one paragraph.", "How do I start running?", "What makes bread rise?",
]
REPLY = " Start with a short walk every day, then add a minute of slow running each week until it feels easy."


def write_random_adapter(base: GGUFInfo, path: Path, rank: int = 16, alpha: float = 32.0) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), base.architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    rng = np.random.default_rng(0)
    for tensor in base.tensors:
        if not any(part in tensor.name for part in ("attn_q.", "attn_k.", "attn_v.", "attn_output.")):
            continue
        n_in, n_out = tensor.shape[0], tensor.shape[1]  # GGUF shapes are innermost-first
        writer.add_tensor(f"{tensor.name}.lora_a", (rng.standard_normal((rank, n_in)) * 0.01).astype(np.float32))
        writer.add_tensor(f"{tensor.name}.lora_b", (rng.standard_normal((n_out, rank)) * 0.01).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def raw_side_by_side(base_llm, tuned_llm, engine: ChatEngine, sampling: SamplingSettings, seed: int) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for llm in (base_llm, tuned_llm):
        for i, prompt in enumerate(PROMPTS):
            text = engine.prompt_format.render("", [_turn(prompt)])
            llm.create_completion(
                text, max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                top_k=sampling.top_k, min_p=sampling.min_p, repeat_penalty=sampling.repeat_penalty,
                seed=seed + i, stop=list(engine.prompt_format.stop),
            )
    return time.perf_counter() - start


def _turn(prompt: str):  # noqa: ANN202
    from trainers.prompt_format import ChatTurn

    return ChatTurn("user", prompt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    import llama_cpp

    model = ensure_default_model()
    engine = ChatEngine(EngineConfig(model_path=model))
    with tempfile.TemporaryDirectory() as tmp:
        adapter = write_random_adapter(engine.info, Path(tmp) / "random-lora.gguf")
        started = time.perf_counter()
        engine.load_adapter("bench", adapter)
        print(f"adapter load: {(time.perf_counter() - started) * 1000:.1f} ms")

        on, off = [], []
        for _ in range(50):
            t = time.perf_counter()
            engine.activate_adapter("bench")
            on.append(time.perf_counter() - t)
            t = time.perf_counter()
            engine.activate_adapter(None)
            off.append(time.perf_counter() - t)
        print(f"adapter switch: on {statistics.median(on) * 1e3:.2f} ms, off {statistics.median(off) * 1e3:.2f} ms "
              "(median of 50, cache reset included)")

        prompt_text = engine.prompt_format.render("", [_turn(PROMPTS[0])])
        scores = []
        for _ in range(5):
            t = time.perf_counter()
            score = reply_logprob(engine, prompt_text, REPLY)
            scores.append((time.perf_counter() - t, score.n_tokens))
        seconds, n_tokens = sorted(scores)[len(scores) // 2]
        print(f"scoring: {n_tokens} reply tokens in {seconds:.3f} s = {n_tokens / seconds:.0f} tok/s (median of 5)")

        sampling = SamplingSettings(max_tokens=args.max_tokens, temperature=0.7)
        n_ctx = engine.llama.context_params.n_ctx
        common = dict(n_ctx=n_ctx, n_batch=engine.llama.n_batch, n_threads=engine.n_threads,
                      n_threads_batch=engine.n_threads_batch, verbose=False)
        base_llm = llama_cpp.Llama(model_path=str(model), **common)
        tuned_llm = llama_cpp.Llama(model_path=str(model), lora_path=str(adapter), **common)

        studio_times, raw_times = [], []
        for round_ in range(2):  # alternate, so background load hits both alike
            order = ("studio", "raw") if round_ % 2 == 0 else ("raw", "studio")
            for who in order:
                if who == "studio":
                    t = time.perf_counter()
                    rows = side_by_side(engine, PROMPTS, "", sampling, 100 * round_, engine.activate_adapter,
                                        "bench")
                    studio_times.append(time.perf_counter() - t)
                    assert len(rows) == len(PROMPTS)
                else:
                    raw_times.append(raw_side_by_side(base_llm, tuned_llm, engine, sampling, 100 * round_))
        studio_s, raw_s = min(studio_times), min(raw_times)
        print(f"side by side, {len(PROMPTS)} prompts × (base, tuned), up to {args.max_tokens} tokens each: "
              f"studio {studio_s:.1f} s, raw llama-cpp-python {raw_s:.1f} s (best of 2)")
        print(f"ratio raw/studio: {raw_s / studio_s:.3f} (target ≥ 0.95)")
        engine.close()


if __name__ == "__main__":
    main()
