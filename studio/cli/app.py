"""``prefstudio``: the TUI when called bare, and headless subcommands for scripts and CI.

The main app and its callback (global options → settings); each command group lives in its own module
(generate, pairs, adapters, datasets, train, compare/report, doctor) and every one reports expected
failures through ``studio.cli.errors.user_errors``.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from store.studio_store import Store
from studio.cli.adapters import adapters_app
from studio.cli.attributes import attributes_app
from studio.cli.compare import compare, report
from studio.cli.context import resolve_model_path, settings, state
from studio.cli.datasets import make_datasets_app
from studio.cli.doctor import doctor
from studio.cli.errors import user_errors
from studio.cli.generate import generate
from studio.cli.models import models
from studio.cli.pairs import pairs_app
from studio.cli.queue import queue_app
from studio.cli.runs import runs_app
from studio.cli.safety import safety_app
from studio.cli.train import TRAIN_HELP, train_command
from studio.inference import runtime_env  # noqa: F401  (env for llama.cpp and HF; heavy imports are lazy)
from studio.inference.model_files import BUNDLED_MODELS, DEFAULT_MODEL_NAME
from studio.safety.specs import SPEC_HELP
from studio.settings import MAX_CANDIDATES, SettingsError, load_settings

app = typer.Typer(
    help="Preference Studio: chat with a local model, judge its replies, train DPO, compare.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(pairs_app, name="pairs")
app.add_typer(adapters_app, name="adapters")
app.add_typer(queue_app, name="queue")
app.add_typer(safety_app, name="safety")
app.add_typer(runs_app, name="runs")
app.add_typer(attributes_app, name="attributes")
app.add_typer(make_datasets_app(lambda: settings().db), name="datasets")

MODEL_HELP = (f"A bundled model by name ({', '.join(BUNDLED_MODELS)}; default {DEFAULT_MODEL_NAME}) or a GGUF "
              "file; `prefstudio models` lists them.")


@app.callback(invoke_without_command=True)
def main_callback(
    ctx: typer.Context,
    db: Annotated[Path | None, typer.Option("--db", help="SQLite file to use (default: user data dir).")] = None,
    model: Annotated[str | None, typer.Option("--model", help=MODEL_HELP)] = None,
    n_ctx: Annotated[int | None, typer.Option("--n-ctx", help="Context length in tokens.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Decode threads (default: chosen for this CPU).")] = None,
    candidates: Annotated[int | None, typer.Option(
        "--candidates", help="Candidates per prompt in the studio, 1–4: 1 thumbs up/down, 2 pick the better, 3–4 "
        "rank them (default 2; F10 in the chat changes it).")] = None,
    attributes: Annotated[str | None, typer.Option(
        "--attributes", help="What `a` rates a reply on (0–4 each): names separated by commas, or a preset: "
        "steerlm (default: quality,helpfulness,correctness,humor,toxicity), helpsteer, oasst.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Config TOML (default: user config dir).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Base seed: candidates get seed, seed+1, … (reproducible demos).")] = None,
    safety: Annotated[list[str] | None, typer.Option(
        "--safety", help=f"A safety checker run on replies, repeatable: {SPEC_HELP} (default: profanity, the "
        "bundled offline classifier; the config's `safety` list).")] = None,
    prompt_format: Annotated[str | None, typer.Option("--prompt-format", help="auto (the model's chat template if it has one) or transcript (plain User:/Assistant: text, e.g. for a model whose template fails).")] = None,
    reward_run: Annotated[int | None, typer.Option(
        "--reward-run", help="A finished reward run (`prefstudio train --method reward`) that scores each candidate "
        "in the studio and the comparison's answers; its pick is marked suggested.")] = None,
    best_of: Annotated[int | None, typer.Option(
        "--best-of", help="Best-of-N in the studio: N candidates (2–4) shown in the reward model's order, best "
        "first (needs --reward-run or reward_run in the config).")] = None,
) -> None:
    """Start the studio (TUI) when no command is given."""
    with user_errors():
        if best_of is not None and not 2 <= best_of <= MAX_CANDIDATES:
            raise SettingsError(f"--best-of must be a whole number from 2 to {MAX_CANDIDATES} (the candidates the "
                                f"studio shows side by side), got {best_of}")
        state.settings = load_settings(
            config, db=db.expanduser() if db else None, model=model,
            n_ctx=n_ctx, threads=threads, seed=seed, prompt_format=prompt_format,
            candidates=best_of if best_of is not None else candidates,
            attributes=attributes, safety=safety or None, reward_run=reward_run,
            best_first=True if best_of is not None else None,
        )
    if ctx.invoked_subcommand is None:
        run_tui()


def run_tui() -> None:
    with user_errors():
        from studio.tui.app import PreferenceStudioApp

        model_path = resolve_model_path()
        store = Store.open(settings().db)
        stale = store.mark_stale_runs()
    app_ = PreferenceStudioApp(settings=replace(settings(), model=model_path), store=store, stale_runs=stale)
    try:
        app_.run()
    finally:
        store.close()
    if app_.return_code:
        raise typer.Exit(app_.return_code)


app.command()(generate)
app.command("train", help=TRAIN_HELP)(train_command())
app.command()(compare)
app.command()(report)
app.command()(doctor)
app.command()(models)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
