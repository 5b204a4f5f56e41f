"""``prefstudio generate``: N candidate replies to a prompt, headless.

A thin client of ``studio.judging``: the same context fitting and seeds as the chat screen's rounds (a
base seed gives seed, seed+1, …; none gives fresh random seeds), under one hold of the engine. It stores
nothing."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Annotated

import typer

from studio.cli.context import open_engine, settings
from studio.cli.errors import fail, user_errors
from studio.cli.terminal_text import json_visible, visible


def generate(
    prompt: Annotated[str, typer.Argument(help="The user prompt.")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, max=8, help="Number of candidates.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    seed: Annotated[int | None, typer.Option(help="Seed of the first candidate; the next get seed+1, …")] = None,
    system: Annotated[str | None, typer.Option(help="System text (default: from settings).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Max new tokens per candidate.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
) -> None:
    """Print N candidate replies to PROMPT (headless)."""
    from studio.judging import draft_round, generate_round

    if not prompt.strip():
        raise fail("the prompt is empty; give some text to answer")
    with user_errors():
        s = settings()
        sampling = s.sampling
        if max_tokens is not None or temperature is not None:
            sampling = replace(
                sampling,
                max_tokens=max_tokens if max_tokens is not None else sampling.max_tokens,
                temperature=temperature if temperature is not None else sampling.temperature,
            )
        engine = open_engine()
        round_ = draft_round(engine, system if system is not None else s.system_prompt, [], prompt, sampling,
                             n_candidates=n, base_seed=seed if seed is not None else s.seed)
        results = generate_round(engine, round_, sampling) or []
        fitted = round_.fitted
    if as_json:
        payload = {
            "model": engine.identity.model_id,
            "model_sha256": engine.identity.sha256,
            "prompt": prompt,
            "rendered_prompt": fitted.text,
            "candidates": [
                {"text": g.text.strip(), "raw_text": g.text, "seed": g.seed, "sampling": g.sampling.to_dict(),
                 "finish_reason": g.finish_reason, "n_tokens": g.n_tokens, "duration_s": round(g.duration_s, 3)}
                for g in results
            ],
        }
        typer.echo(json_visible(json.dumps(payload, ensure_ascii=False, indent=2)))
    else:
        for i, g in enumerate(results):
            typer.echo(f"--- candidate {chr(ord('A') + i)} (seed {g.seed}) ---")
            typer.echo(visible(g.text.strip()))
