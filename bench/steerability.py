"""SteerLM steerability: does a SteerLM run's answer move with the slider, and do the other attributes stay put?

On ``--limit`` prompts (a prompt source, default the first bank), the SteerLM run ``--steer-run`` answers each
prompt at the low and at the high setting of each attribute it was trained on (the others held at the middle,
2), same seed on both sides; the attribute model ``--attributes-run`` then scores every reply (read after the
unsteered rendered prompt, as it was trained). Per steered attribute: Spearman between the setting (low/high)
and that attribute's predicted value over all replies, the mean predicted value at low and at high, and how much
the *other* attributes moved (mean |high − low| of their predictions). Printed as a table; the last line starts
``ratio``: the steered attribute's mean movement over the others' (above 1: the slider moves its own attribute
more than the rest).

    .venv/bin/python bench/steerability.py --db studio.db --steer-run 7 --attributes-run 6 [--limit 8]
        [--max-tokens 48] [--low 0 --high 4] [--prompts-from bank:general]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from store.studio_store import Store
from studio.attributes_model import AttributePredictor
from studio.evaluation.prompts import PromptSource, resolve_prompts
from studio.evaluation.run_adapters import adapter_name, gguf_adapter_for_run
from studio.inference import runtime_env  # noqa: F401,I001  (OMP_WAIT_POLICY before llama_cpp loads)
from studio.inference.engine import ChatEngine, EngineConfig, SamplingSettings
from studio.inference.model_files import DEFAULT_MODEL_NAME, bundled_model_path
from studio.settings import load_settings
from trainers.prompt_format import ChatTurn
from trainers.steer_format import ATTRIBUTE_MIN, steerable_attributes, steered_prompt

MIDDLE = 2


def ranks(values: list[float]) -> list[float]:
    """Average ranks (ties share the mean of their places), for Spearman."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def spearman(xs: list[float], ys: list[float]) -> float | None:
    rx, ry = ranks(xs), ranks(ys)
    if len(set(rx)) < 2 or len(set(ry)) < 2:
        return None
    return statistics.correlation(rx, ry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--steer-run", type=int, required=True)
    parser.add_argument("--attributes-run", type=int, required=True)
    parser.add_argument("--model", type=Path, default=None, help="the served GGUF (default: the bundled default)")
    parser.add_argument("--prompts-from", default="auto")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--low", type=int, default=ATTRIBUTE_MIN)
    parser.add_argument("--high", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    settings = load_settings()
    sampling = SamplingSettings(max_tokens=args.max_tokens, temperature=0.0)
    with Store.open(args.db) as store:
        steer_run = store.get_run(args.steer_run)
        trained = steerable_attributes(steer_run.config, steer_run.summary, steer_run.status, steer_run.id)
        prompts, label = resolve_prompts(PromptSource.parse(args.prompts_from), store, steer_run, [], [])
        texts = [p if isinstance(p, str) else p.text for p in prompts[:args.limit]]
        engine = ChatEngine(EngineConfig(model_path=args.model or bundled_model_path(DEFAULT_MODEL_NAME), n_ctx=settings.n_ctx,
                                         n_threads=settings.threads))
        name = adapter_name(steer_run)
        engine.load_adapter(name, gguf_adapter_for_run(steer_run, engine.info, store.path))
        engine.activate_adapter(name)
        # (attribute, setting, prompt index) -> (rendered prompt without steering, reply)
        replies: dict[tuple[str, int, int], tuple[str, str]] = {}
        for attribute in trained:
            for setting in (args.low, args.high):
                values = {a: (setting if a == attribute else MIDDLE) for a in trained}
                for i, text in enumerate(texts):
                    fitted = engine.fit_prompt(settings.system_prompt, [ChatTurn("user", text)],
                                               sampling.max_tokens + 48).text
                    gen = engine.generate(steered_prompt(fitted, values, engine.prompt_format.name), sampling,
                                          args.seed + i)
                    replies[(attribute, setting, i)] = (fitted, gen.text)
        engine.close()
        attributes_run = store.get_run(args.attributes_run)
        keys = list(replies)
        with AttributePredictor(attributes_run, db_path=store.path) as predictor:
            predicted = predictor.predict([replies[k][1] for k in keys], [replies[k][0] for k in keys])
    scored = dict(zip(keys, predicted, strict=True))
    print(f"steer run {args.steer_run}, attribute model run {args.attributes_run}, {len(texts)} prompt(s) from "
          f"{label}, settings {args.low} vs {args.high}, greedy, {args.max_tokens} tokens")
    print(f"{'attribute':<14}{'spearman':>10}{'mean@low':>10}{'mean@high':>11}{'moved':>8}{'others moved':>14}")
    own_moves, other_moves = [], []
    for attribute in trained:
        xs, ys = [], []
        for setting in (args.low, args.high):
            for i in range(len(texts)):
                value = scored[(attribute, setting, i)].get(attribute)
                if value is not None:
                    xs.append(float(setting))
                    ys.append(value)
        low = [scored[(attribute, args.low, i)] for i in range(len(texts))]
        high = [scored[(attribute, args.high, i)] for i in range(len(texts))]
        mean_low = statistics.fmean(p.get(attribute, float("nan")) for p in low)
        mean_high = statistics.fmean(p.get(attribute, float("nan")) for p in high)
        others = [abs(h[a] - lo[a]) for lo, h in zip(low, high, strict=True) for a in h if a != attribute and a in lo]
        other = statistics.fmean(others) if others else float("nan")
        rho = spearman(xs, ys)
        own_moves.append(abs(mean_high - mean_low))
        other_moves.append(other)
        print(f"{attribute:<14}{'n/a' if rho is None else f'{rho:.3f}':>10}{mean_low:>10.3f}{mean_high:>11.3f}"
              f"{mean_high - mean_low:>8.3f}{other:>14.3f}")
    own, other = statistics.fmean(own_moves), statistics.fmean(m for m in other_moves if m == m) if any(
        m == m for m in other_moves) else float("nan")
    print(f"ratio {own / other:.3f} (steered attribute's movement {own:.3f} over the others' {other:.3f})"
          if other and other == other else f"ratio n/a (steered attribute's movement {own:.3f}; no other attribute)")


if __name__ == "__main__":
    main()
