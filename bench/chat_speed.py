"""Chat speed: the studio engine against raw llama-cpp-python with the same settings, in one run.

Both load the default model with the same context, batch and threads, and answer the same prompts with
the same seeds and sampling (so they produce the same tokens). Each prompt is new to both engines, so the
time to first token includes a real prompt evaluation; both are timed from the caller's side (the call to
the first piece of text received), tokenising included. Runs alternate between the two to share any
background load fairly. Prints medians, then the ratios last (target: both ≥ 0.97).

    .venv/bin/python bench/chat_speed.py [--rounds 10] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import statistics
import time

from studio.inference import runtime_env  # noqa: F401,I001  (OMP_WAIT_POLICY before llama_cpp loads)
from studio.inference.engine import ChatEngine, EngineConfig, SamplingSettings
from studio.inference.model_files import ensure_default_model
from trainers.prompt_format import ChatTurn

PROMPTS = [
    "Describe a walk along a beach at sunset.",
    "Explain how a refrigerator keeps food cold.",
    "Write a short story about a lost umbrella.",
    "What makes a good cup of tea?",
    "Tell me about the history of bicycles.",
    "Why do leaves change colour in autumn?",
    "Describe your ideal weekend in the mountains.",
    "How do bees make honey?",
    "Explain what a rainbow is to a child.",
    "Write a letter to a friend who moved to another city.",
    "What is the best way to learn to cook?",
    "Describe the sounds of a busy city morning.",
]


def raw_generate(llm, prompt: str, sampling: SamplingSettings, seed: int, stop: list[str]) -> tuple[float, float, int]:
    start = time.perf_counter()
    first = None
    n = 0
    for chunk in llm.create_completion(
        prompt, max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
        top_k=sampling.top_k, min_p=sampling.min_p, repeat_penalty=sampling.repeat_penalty, seed=seed,
        stop=stop, stream=True,
    ):
        if chunk["choices"][0]["text"]:
            n += 1
            if first is None:
                first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()

    import llama_cpp

    model = ensure_default_model()
    engine = ChatEngine(EngineConfig(model_path=model))
    raw = llama_cpp.Llama(
        model_path=str(model), n_ctx=engine.llama.context_params.n_ctx, n_batch=engine.llama.n_batch,
        n_threads=engine.n_threads, n_threads_batch=engine.n_threads_batch, verbose=False,
    )
    # No stop sequences and a low temperature keep replies at full length: decode speed is measured.
    sampling = SamplingSettings(max_tokens=args.max_tokens, temperature=0.7)
    stop: list[str] = []
    results: dict[str, dict[str, list[float]]] = {"studio": {"ttft": [], "tps": []}, "raw": {"ttft": [], "tps": []}}
    print(f"model {model.name}, threads {engine.n_threads}/{engine.n_threads_batch}, n_ctx {engine.n_ctx}, "
          f"max_tokens {args.max_tokens}, rounds {args.rounds}")
    for i in range(args.rounds):
        prompt_text = engine.prompt_format.render("", [ChatTurn("user", PROMPTS[i % len(PROMPTS)] + f" ({i})")])
        order = ("studio", "raw") if i % 2 == 0 else ("raw", "studio")
        for who in order:
            if who == "studio":
                # Timed from the caller, as the raw side is: from the call to each piece it receives, so the
                # work the engine does before its own clock starts (tokenising, taking the lock) counts too.
                arrivals: list[float] = []
                start = time.perf_counter()
                engine.generate(prompt_text, sampling, seed=1000 + i,
                                on_token=lambda _piece, got=arrivals: got.append(time.perf_counter()), stop=stop)
                total = time.perf_counter() - start
                ttft, n = (arrivals[0] - start if arrivals else 0.0), len(arrivals)
            else:
                ttft, total, n = raw_generate(raw, prompt_text, sampling, 1000 + i, stop)
            results[who]["ttft"].append(ttft)
            results[who]["tps"].append((n - 1) / (total - ttft) if n > 1 and total > ttft else 0.0)
    for who in ("raw", "studio"):
        r = results[who]
        print(f"{who:>7}: decode {statistics.median(r['tps']):6.1f} tok/s   "
              f"time to first token {statistics.median(r['ttft']) * 1000:6.1f} ms")
    # Each round's two runs are back to back: their ratio cancels load that drifts over the whole benchmark
    # (other work on a shared machine), which the ratio of the two medians does not.
    studio, raw_r = results["studio"], results["raw"]
    paired_decode = statistics.median(s / r for s, r in zip(studio["tps"], raw_r["tps"], strict=True) if r)
    paired_ttft = statistics.median(r / s for s, r in zip(studio["ttft"], raw_r["ttft"], strict=True) if s)
    print(f"per-round ratios (median): decode {paired_decode:.3f}, time-to-first-token speed {paired_ttft:.3f}")
    decode_ratio = statistics.median(studio["tps"]) / statistics.median(raw_r["tps"])
    ttft_ratio = statistics.median(raw_r["ttft"]) / statistics.median(studio["ttft"])
    print(f"ratio studio/raw: decode {decode_ratio:.3f}, time-to-first-token speed {ttft_ratio:.3f} (target ≥ 0.97)")


if __name__ == "__main__":
    main()
