"""Candidates speed: N candidates decoded side by side (studio) against raw llama-cpp-python one after another.

For N = 1, 2 and 4, each round asks a new prompt (so both sides evaluate it: raw llama-cpp-python once, then
reusing its prefix for the next candidate; the studio once for all) for N candidates with the same seeds,
sampling and max tokens, and no stop strings, so every candidate runs to max tokens unless the model ends it.
The raw side is a plain ``Llama`` with the engine's context, batch and threads, calling
``create_completion`` N times; the studio side is ``studio.inference.batched_generation.generate_batch``.
Runs alternate between the two to share background load. Prints per N the summed times, their ratio, and how
many candidates are token-identical to the raw ones (with the mean share of tokens they agree on before the
first difference). An end-of-generation token still ends a candidate, so once the two sides' candidates
differ their lengths may too: the token counts and a per-token ratio are printed beside the times. The last
line is the ratio batched / sequential time for N = 4 (target ≤ 0.6).

    .venv/bin/python bench/candidates_speed.py [--model gemma3-270m|smollm2|PATH] [--rounds 3] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from studio.inference import runtime_env  # noqa: F401,I001  (OMP_WAIT_POLICY before llama_cpp loads)
from studio.inference.batched_generation import common_prefix, generate_batch
from studio.inference.engine import ChatEngine, EngineConfig, SamplingSettings
from studio.inference.model_files import BUNDLED_MODELS, DEFAULT_MODEL_NAME, bundled_model_path
from trainers.prompt_format import ChatTurn

PROMPTS = [
    "Describe a walk along a beach at sunset.",
    "Explain how a refrigerator keeps food cold.",
    "Write a short story about a lost umbrella.",
    "What makes a good cup of tea?",
    "Tell me about the history of bicycles.",
    "Why do leaves change colour in autumn?",
]
COUNTS = (1, 2, 4)


def model_file(name_or_path: str) -> Path:
    return bundled_model_path(name_or_path) if name_or_path in BUNDLED_MODELS else Path(name_or_path)


def raw_sequential(llm, prompt: str, sampling: SamplingSettings, seeds: list[int]) -> list[str]:  # noqa: ANN001
    texts = []
    for seed in seeds:
        out = llm.create_completion(
            prompt, max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k, min_p=sampling.min_p, repeat_penalty=sampling.repeat_penalty, seed=seed, stop=[],
        )
        texts.append(out["choices"][0]["text"])
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME, help="a bundled model's name or a .gguf path")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    import llama_cpp

    path = model_file(args.model)
    engine = ChatEngine(EngineConfig(model_path=path))
    raw = llama_cpp.Llama(
        model_path=str(path), n_ctx=engine.llama.context_params.n_ctx, n_batch=engine.llama.n_batch,
        n_threads=engine.n_threads, n_threads_batch=engine.n_threads_batch, verbose=False,
    )
    sampling = SamplingSettings(max_tokens=args.max_tokens)
    load_before = os.getloadavg()[0]
    print(f"model {path.name}, threads {engine.n_threads}/{engine.n_threads_batch}, n_ctx {engine.n_ctx}, "
          f"max_tokens {args.max_tokens}, rounds {args.rounds}, "
          f"load average {load_before:.1f}")
    totals = {n: {"raw": 0.0, "batched": 0.0} for n in COUNTS}
    tokens = {n: {"raw": 0, "batched": 0} for n in COUNTS}
    agreement = {n: {"identical": 0, "candidates": 0, "prefix": 0.0} for n in COUNTS}
    for i in range(args.rounds):
        for n in COUNTS:
            question = f"{PROMPTS[i % len(PROMPTS)]} ({i}, {n})"  # new to both sides: a real prompt evaluation
            prompt = engine.prompt_format.render("", [ChatTurn("user", question)])
            seeds = [1000 * i + 10 * n + slot for slot in range(n)]
            order = ("raw", "batched") if i % 2 == 0 else ("batched", "raw")
            for who in order:
                start = time.perf_counter()
                if who == "raw":
                    raw_texts = raw_sequential(raw, prompt, sampling, seeds)
                else:
                    batched_texts = [g.text for g in generate_batch(engine, prompt, sampling, seeds, stop=())]
                totals[n][who] += time.perf_counter() - start
            for a, b in zip(raw_texts, batched_texts, strict=True):
                ta = raw.tokenize(a.encode("utf-8"), add_bos=False, special=True)
                tb = raw.tokenize(b.encode("utf-8"), add_bos=False, special=True)
                tokens[n]["raw"] += len(ta)
                tokens[n]["batched"] += len(tb)
                agreement[n]["candidates"] += 1
                agreement[n]["identical"] += a == b
                agreement[n]["prefix"] += common_prefix(ta, tb) / max(1, len(ta), len(tb))
    for n in COUNTS:
        t, a, k = totals[n], agreement[n], tokens[n]
        per_token = (t["batched"] / max(1, k["batched"])) / (t["raw"] / max(1, k["raw"]))
        print(f"N={n}: sequential {t['raw']:6.2f} s ({k['raw']} tokens)   batched {t['batched']:6.2f} s "
              f"({k['batched']} tokens)   ratio {t['batched'] / t['raw']:.3f} (per token {per_token:.3f})"
              f"   token-identical {a['identical']}/{a['candidates']}"
              f"   tokens agreeing before the first difference {100 * a['prefix'] / a['candidates']:.0f} %")
    ratio = totals[4]["batched"] / totals[4]["raw"]
    print(f"ratio {ratio:.3f} (batched / sequential for N=4, target ≤ 0.6; load average {load_before:.1f} → "
          f"{os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
