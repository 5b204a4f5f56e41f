"""``prefstudio generate``: N candidate replies to a prompt, headless.

A thin client of ``studio.judging``: the same context fitting and seeds as the chat screen's rounds (a
base seed gives seed, seed+1, …; none gives fresh random seeds), under one hold of the engine. It stores
nothing. ``--check-safety`` reads each candidate with the configured safety checkers and prints its badge, as
the chat shows it (``studio/safety/candidate_checks.py``). ``--run N`` answers with a finished run's adapter;
with a SteerLM run, ``--attributes quality=4,humor=0`` writes the values into the prompt by the one rule
(``trainers/steer_format.py``), checked before the model loads: 0–4, attributes the run was trained on."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated

import typer

from studio.cli.context import open_engine, settings
from studio.cli.errors import fail, user_errors
from studio.cli.terminal_text import json_visible, visible

if TYPE_CHECKING:
    from studio.inference.engine import ChatEngine


def generate(
    prompt: Annotated[str, typer.Argument(help="The user prompt.")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, max=8, help="Number of candidates.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    seed: Annotated[int | None, typer.Option(help="Seed of the first candidate; the next get seed+1, …")] = None,
    system: Annotated[str | None, typer.Option(help="System text (default: from settings).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Max new tokens per candidate.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    check_safety: Annotated[bool, typer.Option(
        "--check-safety", help="Check each candidate with the configured safety checkers (--safety, the config's "
        "`safety`) and print its badge: safe, or flagged and why.")] = False,
    run: Annotated[int | None, typer.Option("--run", min=1, help="Answer with this finished run's adapter.")] = None,
    attributes: Annotated[str | None, typer.Option(
        "--attributes", help="SteerLM: the attribute values to answer with, e.g. quality=4,humor=0 (0–4 each; "
        "needs --run N, a SteerLM run trained on those attributes).")] = None,
) -> None:
    """Print N candidate replies to PROMPT (headless)."""
    from studio.judging import draft_round, generate_round

    if not prompt.strip():
        raise fail("the prompt is empty; give some text to answer")
    steer = _steer_values(attributes, run)
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
        if run is not None:
            _activate_run_adapter(engine, run)
        round_ = draft_round(engine, system if system is not None else s.system_prompt, [], prompt, sampling,
                             n_candidates=n, base_seed=seed if seed is not None else s.seed, steer=steer)
        results = generate_round(engine, round_, sampling) or []
        fitted = round_.fitted
        badges = _safety_badges(prompt, [g.text for g in results]) if check_safety else None
    if as_json:
        payload = {
            "model": engine.identity.model_id,
            "model_sha256": engine.identity.sha256,
            "prompt": prompt,
            "rendered_prompt": fitted.text,
            **({"run": run} if run is not None else {}),
            **({"steer": steer} if steer else {}),
            "candidates": [
                {"text": g.text.strip(), "raw_text": g.text, "seed": g.seed, "sampling": g.sampling.to_dict(),
                 "finish_reason": g.finish_reason, "n_tokens": g.n_tokens, "duration_s": round(g.duration_s, 3),
                 **({"safety": badges[i]} if badges is not None else {})}
                for i, g in enumerate(results)
            ],
        }
        typer.echo(json_visible(json.dumps(payload, ensure_ascii=False, indent=2)))
    else:
        for i, g in enumerate(results):
            badge = f" · {badges[i]}" if badges is not None else ""
            typer.echo(f"--- candidate {chr(ord('A') + i)} (seed {g.seed}){visible(badge)} ---")
            typer.echo(visible(g.text.strip()))


def _steer_values(attributes: str | None, run_id: int | None) -> dict[str, int] | None:
    """The checked ``--attributes`` values (before the model loads), or None; a clear message for an unknown
    attribute, a value outside 0–4, or a run that is not a finished SteerLM run."""
    from store.studio_store import Store
    from trainers.steer_format import SteerValueError, check_values, parse_settings, steerable_attributes

    if run_id is not None:
        with user_errors(), Store.open(settings().db) as store:
            found = store.get_run(run_id)
        trained: tuple[str, ...] | None = None
        if attributes is not None or (found.config or {}).get("method") == "steerlm":
            try:
                trained = steerable_attributes(found.config, found.summary, found.status, run_id)
            except SteerValueError as exc:
                raise fail(str(exc)) from None
    if attributes is None:
        return None
    if run_id is None:
        raise fail("--attributes needs --run N: the SteerLM run whose adapter follows the values")
    try:
        return check_values(parse_settings(attributes), allowed=trained)
    except SteerValueError as exc:
        raise fail(str(exc)) from None


def _activate_run_adapter(engine: ChatEngine, run_id: int) -> None:
    """Load run ``run_id``'s adapter (exported to GGUF once) and make it the active one."""
    from store.studio_store import Store
    from studio.evaluation.run_adapters import adapter_name, gguf_adapter_for_run

    with Store.open(settings().db) as store:
        found = store.get_run(run_id)
        name = adapter_name(found)
        engine.load_adapter(name, gguf_adapter_for_run(found, engine.info, store.path))
    engine.activate_adapter(name)


def _safety_badges(prompt: str, replies: list[str]) -> list[str]:
    """Each reply's badge from the configured checkers, checked afresh (generate stores nothing); a checker that
    cannot load, or fails on a reply, is a note on stderr."""
    from studio.safety.candidate_checks import check_candidates, round_conversation
    from studio.safety.registry import load_checkers

    loaded = load_checkers(settings().safety, threads=settings().threads)
    for problem in loaded.problems:
        typer.echo(f"note: {visible(problem)}", err=True)
    checked = check_candidates(None, loaded.checkers, round_conversation([], prompt), replies)
    for safety in checked:
        for problem in safety.problems:
            typer.echo(f"note: candidate {chr(ord('A') + safety.slot)}: {visible(problem)}", err=True)
    return [safety.badge() or "not checked" for safety in checked]
