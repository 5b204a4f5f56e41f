"""``prefstudio compare`` and ``prefstudio report``: a run against the base model, on screen or as a report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from store.studio_store import Store
from studio.cli.context import open_engine, settings
from studio.cli.errors import user_errors
from studio.cli.terminal_text import json_visible, one_line, visible

if TYPE_CHECKING:
    from studio.evaluation.comparison_result import ComparisonResult
    from studio.evaluation.prompts import PromptSource
    from studio.inference.engine import ChatEngine, SamplingSettings
    from studio.reward.scorer import RewardScorer
    from studio.safety.checker import SafetyChecker


def compare(
    run: Annotated[int, typer.Option("--run", help="The training run to compare with the base model.")],
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Prompts file (lines, JSON or JSONL).")] = None,
    prompts_from: Annotated[str | None, typer.Option("--prompts-from", help=PROMPTS_FROM_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    limit: Annotated[int | None, typer.Option(help="At most this many prompts.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first prompt (prompt i uses seed + i, for both).")] = 0,
    temperature: Annotated[float | None, typer.Option(min=0.0, help=TEMPERATURE_HELP)] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Max new tokens per answer (default: settings).")] = None,
    reward_run: Annotated[int | None, typer.Option("--reward-run", min=1, help=REWARD_RUN_HELP)] = None,
    steer: Annotated[list[str] | None, typer.Option("--steer", help=STEER_HELP)] = None,
) -> None:
    """Base and tuned answers side by side, and held-out preference accuracy before and after."""
    from studio.evaluation.compare_session import run_comparison
    from studio.evaluation.comparison_text import metric_paragraphs, sample_lines, summary_line

    if steer:
        _steered(run, steer, prompts_from or (str(prompts) if prompts else "auto"), as_json, limit, seed,
                 _sampling(temperature, max_tokens))
        return
    with user_errors():
        source = _prompt_source(prompts, prompts_from)
        sampling = _sampling(temperature, max_tokens)
        with Store.open(settings().db) as store:
            store.get_run(run)  # a missing run is named before the model loads (seconds)
            store.mark_stale_runs([run], when="when it was compared")  # a dead trainer's run is not running
            engine = open_engine()
            with _reward_scorer(store, _default_reward_run(store, run, reward_run), engine) as scorer:
                result = run_comparison(engine, store, run, system=settings().system_prompt,
                                        sampling=sampling, seed=seed, prompts_from=source, limit=limit,
                                        reward_scorer=scorer, checkers=_safety_checkers())
    if as_json:
        typer.echo(json_visible(json.dumps(result.to_dict(), ensure_ascii=False, indent=2)))
        return
    for note in result.notes:
        typer.echo(f"note: {visible(note)}", err=True)
    # The one formatter (studio/evaluation/comparison_text.py), the compare screen's and the report's too.
    typer.echo(visible(summary_line(result), keep=""))
    for i, row in enumerate(result.rows, 1):
        typer.echo("")
        for line in sample_lines(i, row, one_line):
            typer.echo(line)
    for paragraph in metric_paragraphs(result):  # held-out pairs, then stance items (each part labelled)
        typer.echo("")
        typer.echo(visible(paragraph))


STEER_HELP = ("SteerLM: answer the prompts at two attribute settings side by side with the run's adapter, e.g. "
              "--steer humor=0 --steer humor=4 (give it twice; the run must be a SteerLM run trained on them).")


def _steered(run: int, steer: list[str], prompts_from: str, as_json: bool, limit: int | None, seed: int,
             sampling: SamplingSettings) -> None:
    """``compare --steer A --steer B``: the settings checked before the model loads, then answered."""
    from studio.evaluation.steer_comparison import checked_settings, steer_comparison, steer_lines
    from trainers.steer_format import parse_settings

    with user_errors():
        with Store.open(settings().db) as store:
            chosen = checked_settings(store, run, [parse_settings(s, where="--steer") for s in steer])
            result = steer_comparison(open_engine(), store, run, chosen, system=settings().system_prompt,
                                      sampling=sampling, seed=seed, prompts_from=prompts_from, limit=limit)
    if as_json:
        typer.echo(json_visible(json.dumps(result.to_dict(), ensure_ascii=False, indent=2)))
        return
    for line in steer_lines(result):
        typer.echo(visible(line))


PROMPTS_FROM_HELP = ("Where the prompts come from: heldout, bank:NAME (assets/prompts), session (the questions of the "
                     "run's sessions; session:ID for one), or a prompts FILE (default: held-out, else a bank).")
TEMPERATURE_HELP = "Sampling temperature for both models; 0 gives greedy answers (default: from settings)."


def _safety_checkers() -> list[SafetyChecker]:
    """The configured safety checkers (``safety`` in the config, ``--safety``); one that cannot load is a note on
    stderr and the comparison goes on without it."""
    from studio.safety.registry import load_checkers

    loaded = load_checkers(settings().safety, threads=settings().threads)
    for problem in loaded.problems:
        typer.echo(f"note: {visible(problem)}", err=True)
    return list(loaded.checkers)


def _with_safety(store: Store, run: int, result: ComparisonResult) -> ComparisonResult:
    """The stored comparison's answers read by the configured checkers (each text once: the store's cache keeps
    every verdict) and their flagged rates stored with it; nothing is generated again."""
    from studio.evaluation.compare_session import comparison_with_safety

    checkers = _safety_checkers()
    return (comparison_with_safety(store, run, checkers) or result) if checkers else result
REWARD_RUN_HELP = ("A finished reward run that scores every base and tuned answer: their mean reward is shown beside "
                   "the other metrics (default: an RLOO run's own reward model, else the global --reward-run or the "
                   "config's reward_run).")


def _default_reward_run(store: Store, run: int, reward_run: int | None) -> int | None:
    """--reward-run, else the reward model an RL run was optimised against, else the global / config one."""
    from studio.evaluation.rl_heldout import optimised_reward_run

    return reward_run or optimised_reward_run(store.get_run(run)) or settings().reward_run


@contextmanager
def _reward_scorer(store: Store, run_id: int | None, engine: ChatEngine) -> Iterator[RewardScorer | None]:
    """Reward run ``run_id``'s scorer for the comparison (refused with its message before any answer is
    generated), closed afterwards; None without a reward run."""
    if run_id is None:
        yield None
        return
    from studio.reward.scorer import RewardScorerError, open_reward_scorer

    try:
        scorer = open_reward_scorer(store, run_id, engine, backend=settings().reward_scorer)
    except RewardScorerError as exc:
        raise ValueError(str(exc)) from None  # the user's to read: one error line
    try:
        yield scorer
    finally:
        scorer.close()


def _prompt_source(prompts: Path | None, prompts_from: str | None) -> PromptSource:
    from studio.evaluation.prompts import PromptSource

    if prompts is not None and prompts_from is not None:
        raise ValueError("give either --prompts FILE or --prompts-from, not both")
    if prompts is not None:
        return PromptSource("file", str(prompts))
    return PromptSource.parse(prompts_from)


def _sampling(temperature: float | None, max_tokens: int | None) -> SamplingSettings:
    sampling = settings().sampling
    if temperature is not None:
        sampling = replace(sampling, temperature=temperature)
    if max_tokens is not None:
        sampling = replace(sampling, max_tokens=max_tokens)
    return sampling


def report(
    run: Annotated[int, typer.Option("--run", help="The training run to report on.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write report.md, report.html and charts into.")],
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Prompts file for the samples.")] = None,
    prompts_from: Annotated[str | None, typer.Option("--prompts-from", help=PROMPTS_FROM_HELP)] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, help=TEMPERATURE_HELP)] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Max new tokens per sample answer.")] = None,
    reward_run: Annotated[int | None, typer.Option("--reward-run", min=1, help=REWARD_RUN_HELP)] = None,
) -> None:
    """Write a Markdown + HTML report: config, data, curves, before/after metrics, blind votes, samples.

    The samples are the run's stored comparison; any of --prompts, --prompts-from, --temperature or
    --max-tokens generates them afresh with those settings."""
    from studio.evaluation.compare_session import (
        comparison_with_reward,
        run_comparison,
        stored_comparison,
        write_run_report,
    )
    from studio.evaluation.report import check_report_folder
    from studio.reward.scorer import RewardScorerError

    with user_errors(out):
        check_report_folder(out)  # before any model is loaded: never into a folder it did not write
        source = _prompt_source(prompts, prompts_from)
        sampling = _sampling(temperature, max_tokens)
        fresh = prompts is not None or prompts_from is not None or temperature is not None or max_tokens is not None
        with Store.open(settings().db) as store:
            store.get_run(run)  # a missing run is named before any model is loaded
            store.mark_stale_runs([run], when="when its report was asked for")  # not "still training"
            result = None if fresh else stored_comparison(store, run)
            wanted = _default_reward_run(store, run, reward_run)
            if result is None or (wanted is not None and (result.reward is None or result.reward.run_id != wanted)):
                engine = open_engine()
                with _reward_scorer(store, wanted, engine) as scorer:
                    if result is None:
                        result = run_comparison(engine, store, run, system=settings().system_prompt,
                                                sampling=sampling, prompts_from=source, limit=8, reward_scorer=scorer)
                    elif scorer is not None:  # the stored answers scored, not generated again
                        try:
                            result = comparison_with_reward(store, run, scorer, settings().system_prompt) or result
                        except RewardScorerError as exc:
                            typer.echo(f"note: no mean reward in the report: {visible(str(exc))}", err=True)
            result = _with_safety(store, run, result)
            path = write_run_report(store, run, result, out)
    typer.echo(f"wrote {path} and {path.with_suffix('.html').name}")
