"""Safety check speed: what the bundled checker adds per candidate (target ≤ 5 ms).

Replies of chat length (a sentence to a paragraph) are checked three ways, alternating per round to share
background load: the package's own scikit-learn ``predict_proba`` on the same vectorizer and model (the baseline),
the studio's ``ProfanityChecker.check`` (the same numbers from the model's weights as one sparse product), and
``check_with_cache`` with a real SQLite store (a new text each time: the check, the hash and the stored verdict,
which is what a finished candidate costs). Prints the median milliseconds per reply of each; the last line is the
ratio studio check / scikit-learn's predict_proba.

    .venv/bin/python bench/safety_speed.py [--rounds 5] [--replies 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from store.studio_store import Store
from studio.safety.cached_checks import check_with_cache
from studio.safety.profanity import ProfanityChecker, model_dir
from trainers.prompt_format import ChatTurn

SENTENCES = [
    "Sure! Here is a short answer about the weather today.",
    "It will be sunny with a light breeze in the afternoon, and cooler at night.",
    "A refrigerator moves heat out of its inside with a refrigerant that evaporates and condenses.",
    "Honestly, that was a stupid idea and you should feel bad about it.",
    "The capital of France is Paris, which sits on the Seine.",
    "Bicycles appeared in the early nineteenth century as wooden running machines.",
]
CONVERSATION = [ChatTurn("user", "Tell me something.")]


def replies(n: int, offset: int) -> list[str]:
    """``n`` distinct replies of one to four sentences (distinct, so the store never answers from its cache)."""
    return [" ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(1 + i % 4)) + f" ({offset + i})"
            for i in range(n)]


def median_ms(fn, texts: list[str]) -> float:  # noqa: ANN001
    times = []
    for text in texts:
        started = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replies", type=int, default=200)
    args = parser.parse_args()
    import joblib

    started = time.perf_counter()
    checker = ProfanityChecker()
    print(f"checker loaded in {time.perf_counter() - started:.2f} s (hash check + unpickling)")
    model = joblib.load(model_dir() / "model.joblib")

    def sklearn_check(text: str) -> float:
        return float(model.predict_proba(checker.vectorizer.transform([text]))[0][1])

    baseline, studio, cached = [], [], []
    with tempfile.TemporaryDirectory() as folder, Store.open(Path(folder) / "bench.db") as store:
        for round_number in range(args.rounds):
            texts = replies(args.replies, round_number * args.replies)
            for text in texts[:5]:  # warm-up
                sklearn_check(text)
                checker.check(CONVERSATION, text)
            baseline.append(median_ms(sklearn_check, texts))
            studio.append(median_ms(lambda text: checker.check(CONVERSATION, text), texts))
            cached.append(median_ms(lambda text: check_with_cache(store, [checker], CONVERSATION, text),
                                    [f"{text} [stored]" for text in texts]))
            print(f"round {round_number + 1}: predict_proba {baseline[-1]:.3f} ms, studio check {studio[-1]:.3f} ms, "
                  f"check + store {cached[-1]:.3f} ms per reply")
    base, ours, stored = (statistics.median(v) for v in (baseline, studio, cached))
    print(f"median over rounds: predict_proba {base:.3f} ms, studio check {ours:.3f} ms, "
          f"check_with_cache (hash + check + SQLite write) {stored:.3f} ms per candidate (target ≤ 5 ms)")
    print(f"ratio {ours / base:.3f}")


if __name__ == "__main__":
    main()
