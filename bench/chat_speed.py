"""Chat speed: the studio engine against raw llama-cpp-python with the same settings, in one run.

Both load the same model (the default one, or ``--model``: a bundled model's name or a GGUF path) with the
same context, batch and threads, and answer the same prompts with the same seeds and sampling (so they
produce the same tokens). The prompt is rendered by the studio's prompt format for that model (a transcript
for the base Gemma, its chat template for SmolLM2) and the raw side gets the same text. Each prompt is new
to both engines, so the time to first token includes a real prompt evaluation; both are timed from the
caller's side (the call to the first piece of text received), tokenising included. Runs alternate between
the two to share any background load fairly; a first round warms both up and is not counted. Prints
medians, the CPU time to first token (which neighbours' load barely moves), then the ratios last (target:
both ≥ 0.97).

    .venv/bin/python bench/chat_speed.py [--model smollm2|PATH.gguf] [--rounds 10] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from studio.inference import runtime_env  # noqa: F401,I001  (OMP_WAIT_POLICY before llama_cpp loads)
from studio.inference.engine import ChatEngine, EngineConfig, SamplingSettings
from studio.inference.model_files import (
    BUNDLED_MODELS,
    DEFAULT_MODEL_NAME,
    ModelFileError,
    bundled_model_path,
)
from trainers.prompt_format import ChatTurn

if TYPE_CHECKING:
    from llama_cpp import Llama

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


def model_path(choice: str) -> Path:
    """A bundled model's name, or the path of a GGUF file."""
    if choice in BUNDLED_MODELS:
        return bundled_model_path(choice)
    path = Path(choice).expanduser()
    if path.suffix.lower() == ".gguf" or path.exists():
        if not path.is_file():
            raise SystemExit(f"--model {choice}: no such file")
        return path
    try:
        return bundled_model_path(choice)  # the registry's own message: the bundled names, or a path
    except ModelFileError as exc:
        raise SystemExit(f"--model: {exc}") from None


@dataclass
class Timing:
    """One reply, timed from the caller: wall clock, and this process's CPU time (every thread), which a
    neighbour's load on a shared machine barely moves: it tells a real gap from scheduling noise."""

    ttft: float = 0.0
    ttft_cpu: float = 0.0
    total: float = 0.0
    pieces: int = 0

    @property
    def decode_tps(self) -> float:
        decoding = self.total - self.ttft
        return (self.pieces - 1) / decoding if self.pieces > 1 and decoding > 0 else 0.0


class Stopwatch:
    """Started at the call; ``piece()`` for each piece of text received, the first one stamps the TTFT."""

    def __init__(self) -> None:
        self.timing = Timing()
        self._start, self._start_cpu = time.perf_counter(), time.process_time()

    def piece(self, _text: str = "") -> None:
        if self.timing.pieces == 0:
            self.timing.ttft = time.perf_counter() - self._start
            self.timing.ttft_cpu = time.process_time() - self._start_cpu
        self.timing.pieces += 1

    def stop(self) -> Timing:
        self.timing.total = time.perf_counter() - self._start
        return self.timing


def raw_generate(llm: Llama, prompt: str, sampling: SamplingSettings, seed: int, stop: list[str]) -> Timing:
    clock = Stopwatch()
    for chunk in llm.create_completion(
        prompt, max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
        top_k=sampling.top_k, min_p=sampling.min_p, repeat_penalty=sampling.repeat_penalty, seed=seed,
        stop=stop, stream=True,
    ):
        if chunk["choices"][0]["text"]:
            clock.piece()
    return clock.stop()


def studio_generate(engine: ChatEngine, prompt: str, sampling: SamplingSettings, seed: int, stop: list[str]) -> Timing:
    # Timed from the caller, as the raw side is: from the call to each piece it receives, so the work the
    # engine does before its own clock starts (tokenising, taking the lock) counts too.
    clock = Stopwatch()
    engine.generate(prompt, sampling, seed=seed, on_token=clock.piece, stop=stop)
    return clock.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME,
                        help=f"a bundled model ({', '.join(BUNDLED_MODELS)}) or a .gguf path (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()

    import llama_cpp

    model = model_path(args.model)
    engine = ChatEngine(EngineConfig(model_path=model))
    raw = llama_cpp.Llama(
        model_path=str(model), n_ctx=engine.llama.context_params.n_ctx, n_batch=engine.llama.n_batch,
        n_threads=engine.n_threads, n_threads_batch=engine.n_threads_batch, verbose=False,
    )
    # No stop sequences and a low temperature keep replies at full length: decode speed is measured.
    sampling = SamplingSettings(max_tokens=args.max_tokens, temperature=0.7)
    stop: list[str] = []
    results: dict[str, list[Timing]] = {"studio": [], "raw": []}
    print(f"model {model.name}, threads {engine.n_threads}/{engine.n_threads_batch}, n_ctx {engine.n_ctx}, "
          f"max_tokens {args.max_tokens}, rounds {args.rounds} (+1 warm-up), load average {os.getloadavg()[0]:.2f}")
    # Round 0 warms both up and is not counted: each Llama's first evaluation faults in its mapping of the
    # weights and allocates its compute buffers, and the side that goes first in round 0 would pay more.
    for i in range(args.rounds + 1):
        prompt_text = engine.prompt_format.render("", [ChatTurn("user", PROMPTS[i % len(PROMPTS)] + f" ({i})")])
        order = ("studio", "raw") if i % 2 == 0 else ("raw", "studio")
        for who in order:
            if who == "studio":
                timing = studio_generate(engine, prompt_text, sampling, 1000 + i, stop)
            else:
                timing = raw_generate(raw, prompt_text, sampling, 1000 + i, stop)
            if i > 0:
                results[who].append(timing)
    for who in ("raw", "studio"):
        runs = results[who]
        print(f"{who:>7}: decode {statistics.median(t.decode_tps for t in runs):6.1f} tok/s   "
              f"time to first token {statistics.median(t.ttft for t in runs) * 1000:6.1f} ms "
              f"(CPU {statistics.median(t.ttft_cpu for t in runs) * 1000:6.1f} ms)")
    studio, raw_r = results["studio"], results["raw"]
    cpu_ratio = statistics.median(t.ttft_cpu for t in raw_r) / statistics.median(t.ttft_cpu for t in studio)
    print(f"CPU time to first token, raw/studio: {cpu_ratio:.3f} (work done; the load on the machine barely moves it)")
    # Each round's two runs are back to back: their ratio cancels load that drifts over the whole benchmark
    # (other work on a shared machine), which the ratio of the two medians does not.
    pairs = list(zip(studio, raw_r, strict=True))
    paired_decode = statistics.median(s.decode_tps / r.decode_tps for s, r in pairs if r.decode_tps)
    paired_ttft = statistics.median(r.ttft / s.ttft for s, r in pairs if s.ttft)
    print(f"per-round ratios (median): decode {paired_decode:.3f}, time-to-first-token speed {paired_ttft:.3f}")
    decode_ratio = statistics.median(t.decode_tps for t in studio) / statistics.median(t.decode_tps for t in raw_r)
    ttft_ratio = statistics.median(t.ttft for t in raw_r) / statistics.median(t.ttft for t in studio)
    print(f"ratio studio/raw: decode {decode_ratio:.3f}, time-to-first-token speed {ttft_ratio:.3f} (target ≥ 0.97)")


if __name__ == "__main__":
    main()
