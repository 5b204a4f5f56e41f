"""SteerLM steerability: does a SteerLM run's answer move with the slider, and do the other attributes stay put?

On ``--limit`` prompts (a prompt source, default the held-out prompts, else the first bank), the SteerLM run
``--steer-run`` answers each prompt at the low and at the high setting of each attribute it was trained on (the
others held at the middle, 2), same seed on both sides; the attribute model ``--attributes-run`` then scores every
reply (read after the unsteered rendered prompt, as it was trained). Per steered attribute: Spearman between the
setting (low/high) and that attribute's predicted value over all replies, the mean predicted value at low and at
high, and how much the *other* attributes moved (mean |high − low| of their predictions). Printed as a table; the
last line starts ``ratio``: the steered attribute's mean movement over the others' (above 1: the slider moves its
own attribute more than the rest).

With ``--ratings FILE`` (HelpSteer-style JSON lines: prompt, response, one 0–4 column per attribute; e.g.
``bench/fixtures/steer_ratings.jsonl``) the bench first builds both runs itself in a new database ``--db``: the
rated replies stored as the chat stores a rated candidate (rendered in the served model's prompt format), an
attribute model trained on them (``--attributes-steps``) and a SteerLM run (``--steer-steps``), then measures.
Stored candidates, not an imported dataset: a ratings dataset's prompts are learnt as written, without the chat
format the studio generates in.

    .venv/bin/python bench/steerability.py --db studio.db --steer-run 7 --attributes-run 6 [--limit 8]
        [--max-tokens 48] [--low 0 --high 4] [--prompts-from bank:general]
    .venv/bin/python bench/steerability.py --db /tmp/steer.db --ratings bench/fixtures/steer_ratings.jsonl
        [--attributes-steps 24 --steer-steps 64 --batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
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
RATING_FIELDS = ("prompt", "response")


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


def read_ratings(path: Path) -> list[tuple[str, str, dict[str, int]]]:
    """(prompt, reply, ratings) per line of a HelpSteer-style JSON-lines file; ValueError naming the line."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        ratings = {k: v for k, v in record.items() if k not in RATING_FIELDS}
        if not all(isinstance(record.get(k), str) for k in RATING_FIELDS) or not ratings or not all(
                isinstance(v, int) and 0 <= v <= 4 for v in ratings.values()):
            raise ValueError(f"{path}:{number}: expected prompt, response (text) and 0–4 whole-number ratings")
        rows.append((record["prompt"], record["response"], ratings))
    return rows


def store_ratings(store: Store, engine: ChatEngine, system: str, rows: list[tuple[str, str, dict[str, int]]]) -> int:
    """The rated replies as the chat stores rated candidates: one prompt per distinct question, its replies as
    candidates with the prompt the engine renders, each rated. Returns the session's id."""
    session = store.create_session(system)
    prompt_ids: dict[str, tuple[int, str]] = {}
    slots: dict[str, int] = {}
    for prompt, reply, ratings in rows:
        if prompt not in prompt_ids:
            rendered = engine.fit_prompt(system, [ChatTurn("user", prompt)], 256).text
            prompt_ids[prompt] = (store.add_prompt(session, prompt, []), rendered)
        prompt_id, rendered = prompt_ids[prompt]
        slots[prompt] = slots.get(prompt, -1) + 1
        candidate = store.add_candidate(prompt_id, slots[prompt], engine.prompt_format.as_completion(reply), rendered,
                                        engine.identity.model_id, engine.identity.sha256, {},
                                        seed=slots[prompt])
        store.record_ratings(candidate, ratings)
    return session


def train(store: Store, model: Path, runs_root: Path, **config: object) -> int:
    """One run prepared and trained to its end in this process; its id. Exits with the run's message if it failed."""
    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run
    from trainers.run_config import RunConfig

    prepared = prepare_run(store, RunConfig(**config), model_path=model, runs_root=runs_root)
    started = time.monotonic()
    outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
    if outcome.status != "done":
        raise SystemExit(f"run {prepared.run_id} ({config['method']}) {outcome.status}: {outcome.message}")
    print(f"run {prepared.run_id} ({config['method']}): {outcome.message} ({time.monotonic() - started:.0f} s)",
          flush=True)
    return prepared.run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--steer-run", type=int, default=None)
    parser.add_argument("--attributes-run", type=int, default=None)
    parser.add_argument("--ratings", type=Path, default=None,
                        help="build both runs from this HelpSteer-style JSON-lines file in a new --db first")
    parser.add_argument("--attributes-steps", type=int, default=24)
    parser.add_argument("--steer-steps", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--attributes-lr", type=float, default=1e-3)
    parser.add_argument("--steer-lr", type=float, default=1e-3)
    parser.add_argument("--model", type=Path, default=None, help="the served GGUF (default: the bundled default)")
    parser.add_argument("--prompts-from", default="auto")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--low", type=int, default=ATTRIBUTE_MIN)
    parser.add_argument("--high", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.ratings is None and (args.steer_run is None or args.attributes_run is None):
        parser.error("give --steer-run and --attributes-run, or --ratings FILE to train both first")
    if args.ratings is not None and args.db.exists():
        parser.error(f"--ratings builds a new database: {args.db} exists already")

    settings = load_settings()
    model = args.model or bundled_model_path(DEFAULT_MODEL_NAME)
    sampling = SamplingSettings(max_tokens=args.max_tokens, temperature=0.0)
    started = time.monotonic()
    with Store.open(args.db) as store:
        engine = ChatEngine(EngineConfig(model_path=model, n_ctx=settings.n_ctx, n_threads=settings.threads))
        if args.ratings is not None:
            rows = read_ratings(args.ratings)
            names = sorted({name for _, _, ratings in rows for name in ratings})
            session = store_ratings(store, engine, settings.system_prompt, rows)
            print(f"{len(rows)} rated replies from {args.ratings} ({', '.join(names)}), session {session}; "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
            common = {"attributes": ",".join(names), "batch_size": args.batch_size, "epochs": 100,
                      "max_length": 192}
            runs_root = args.db.parent / "runs"  # where the studio looks for a database's runs
            args.attributes_run = train(store, model, runs_root, method="attributes", heldout_fraction=0.2,
                                        max_steps=args.attributes_steps, learning_rate=args.attributes_lr, **common)
            args.steer_run = train(store, model, runs_root, method="steerlm", heldout_fraction=0.0,
                                   max_steps=args.steer_steps, learning_rate=args.steer_lr, **common)
            heldout = (store.get_run(args.attributes_run).summary or {}).get("heldout", {})
            for name, after in sorted((heldout.get("after") or {}).items()):
                print(f"attribute model, held-out {name}: MAE {after.get('mae')}, Spearman {after.get('spearman')} "
                      f"(n {after.get('n')})")
        steer_run = store.get_run(args.steer_run)
        trained = steerable_attributes(steer_run.config, steer_run.summary, steer_run.status, steer_run.id)
        prompts, label = resolve_prompts(PromptSource.parse(args.prompts_from), store, steer_run, [], [])
        texts = [p if isinstance(p, str) else p.text for p in prompts[:args.limit]]
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
    for attribute in trained:  # one prompt's pair of answers per attribute, to read beside the figures
        print(f"example, {attribute} {args.low}: {replies[(attribute, args.low, 0)][1].strip()!r}")
        print(f"example, {attribute} {args.high}: {replies[(attribute, args.high, 0)][1].strip()!r}")
    print(f"steer run {args.steer_run}, attribute model run {args.attributes_run}, {len(texts)} prompt(s) from "
          f"{label}, settings {args.low} vs {args.high}, greedy, {args.max_tokens} tokens; "
          f"{time.monotonic() - started:.0f} s in all, load average {os.getloadavg()[0]:.1f}")
    print(f"{'attribute':<14}{'spearman':>10}{'mean@low':>10}{'mean@high':>11}{'moved':>8}{'others moved':>14}"
          f"{'words@low':>11}{'words@high':>12}")
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
        # Reply length in words, a yardstick that needs no model (verbosity's should move, the others' not).
        words = [statistics.fmean(len(replies[(attribute, s, i)][1].split()) for i in range(len(texts)))
                 for s in (args.low, args.high)]
        rho = spearman(xs, ys)
        own_moves.append(abs(mean_high - mean_low))
        other_moves.append(other)
        print(f"{attribute:<14}{'n/a' if rho is None else f'{rho:.3f}':>10}{mean_low:>10.3f}{mean_high:>11.3f}"
              f"{mean_high - mean_low:>8.3f}{other:>14.3f}{words[0]:>11.1f}{words[1]:>12.1f}")
    own, other = statistics.fmean(own_moves), statistics.fmean(m for m in other_moves if m == m) if any(
        m == m for m in other_moves) else float("nan")
    print(f"ratio {own / other:.3f} (steered attribute's movement {own:.3f} over the others' {other:.3f})"
          if other and other == other else f"ratio n/a (steered attribute's movement {own:.3f}; no other attribute)")


if __name__ == "__main__":
    main()
