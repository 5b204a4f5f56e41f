"""``prefstudio``: the TUI when called bare, and headless subcommands for scripts and CI.

Every expected failure (bad model file, unwritable or newer database, bad config, empty prompt) is
printed as one ``error: …`` line on stderr with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from store.errors import StoreError
from store.output_folders import describe_write_error
from store.studio_store import Store
from studio.cli.terminal_text import json_visible, one_line, visible
from studio.inference import runtime_env  # noqa: F401  (env for llama.cpp and HF; heavy imports are lazy)
from studio.inference.engine import ChatEngine, EngineConfig, EngineError, new_seed
from studio.inference.model_files import ModelFileError, default_model_path, ensure_default_model
from studio.settings import SettingsError, StudioSettings, load_settings

app = typer.Typer(
    help="Preference Studio: chat with a local model, judge its replies, train DPO, compare.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)
pairs_app = typer.Typer(help="Preference pairs read out of your judgements.", no_args_is_help=True)
app.add_typer(pairs_app, name="pairs")
adapters_app = typer.Typer(help="LoRA adapters of finished runs, for llama.cpp.", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")


def _datasets_app() -> typer.Typer:
    from studio.cli.datasets import make_datasets_app

    return make_datasets_app(lambda: settings().db)


app.add_typer(_datasets_app(), name="datasets")


class _State:
    settings: StudioSettings | None = None


state = _State()


def fail(message: str, code: int = 1) -> typer.Exit:
    # Messages quote file names, dataset names and file contents: never let them drive the terminal.
    typer.echo(f"error: {visible(message, keep='')}", err=True)
    return typer.Exit(code)


@contextmanager
def user_errors(out: Path | None = None):
    """Turn the errors a user can cause into one clear line and exit code 1; ``out`` is the command's
    --out, named when a write fails without a file name (a full disk fails in write(), not open())."""
    try:
        yield
    except (StoreError, EngineError, ModelFileError, SettingsError, ValueError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:  # an unwritable, read-only or full --out
        raise fail(describe_write_error(exc, out or Path("the output"))) from None


def settings() -> StudioSettings:
    assert state.settings is not None
    return state.settings


def resolve_model_path(progress: bool = True) -> Path:
    """The model to serve: --model / config, else the embedded default (assembled once, with a bar)."""
    chosen = settings().model
    if chosen is not None:
        return chosen
    if default_model_path().exists():
        return ensure_default_model()
    if not progress:
        return ensure_default_model()
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        transient=True, console=_stderr_console(),
    ) as bar:
        task = bar.add_task("assembling the embedded model (once)", total=None)
        return ensure_default_model(lambda done, total: bar.update(task, completed=done, total=total))


def _stderr_console():  # noqa: ANN202
    from rich.console import Console

    return Console(stderr=True)


def open_engine() -> ChatEngine:
    s = settings()
    return ChatEngine(EngineConfig(model_path=resolve_model_path(), n_ctx=s.n_ctx, n_threads=s.threads))


@app.callback(invoke_without_command=True)
def main_callback(
    ctx: typer.Context,
    db: Annotated[Path | None, typer.Option("--db", help="SQLite file to use (default: user data dir).")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="A GGUF model file (default: embedded Gemma 3 270M).")] = None,
    n_ctx: Annotated[int | None, typer.Option("--n-ctx", help="Context length in tokens.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Decode threads (default: chosen for this CPU).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Config TOML (default: user config dir).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Base seed: candidates get seed, seed+1, … (reproducible demos).")] = None,
) -> None:
    """Start the studio (TUI) when no command is given."""
    with user_errors():
        state.settings = load_settings(
            config, db=db.expanduser() if db else None, model=model.expanduser() if model else None,
            n_ctx=n_ctx, threads=threads, seed=seed,
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


@app.command()
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
    from trainers.prompt_format import ChatTurn

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
        fitted = engine.fit_prompt(system if system is not None else s.system_prompt,
                                   [ChatTurn("user", prompt)], sampling.max_tokens)
        if seed is None:
            seed = s.seed
        base_seed = seed if seed is not None else new_seed()
        results = []
        for i in range(n):
            gen = engine.generate(fitted.text, sampling, seed=base_seed + i)
            results.append(gen)
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


@pairs_app.command("list")
def pairs_list(
    session: Annotated[int | None, typer.Option(help="Only this session's pairs.")] = None,
) -> None:
    """List the preference pairs collected so far."""
    with user_errors():
        with Store.open(settings().db) as store:
            pairs = store.pairs(session_id=session)
    if not pairs:
        typer.echo("no preference pairs yet: judge some candidates in the studio first", err=True)
        return
    for p in pairs:
        typer.echo(f"{p.pair_id}\tsession {p.session_id}\t{p.verdict}\t{_one_line(p.prompt_text, 50)}"
                   f"\tchosen: {_one_line(p.chosen, 40)}\trejected: {_one_line(p.rejected, 40)}")
    typer.echo(f"{len(pairs)} pair(s)", err=True)


_one_line = one_line  # one line, control characters escaped (studio/cli/terminal_text.py)


@pairs_app.command("export")
def pairs_export(
    out: Annotated[Path, typer.Option("--out", help="File to write.")],
    fmt: Annotated[str, typer.Option("--format", help="Output format (jsonl: TRL standard preference).")] = "jsonl",
    session: Annotated[int | None, typer.Option(help="Only this session's pairs.")] = None,
) -> None:
    """Write pairs in TRL's standard preference format (prompt / chosen / rejected)."""
    from store.datasets.export import check_export_target
    from store.pairs import write_pairs_jsonl

    if fmt != "jsonl":
        raise fail(f"unknown format {fmt!r}; supported: jsonl")
    with user_errors():
        check_export_target(out, fmt)  # never over a file this export did not write
        with Store.open(settings().db) as store:
            pairs = store.pairs(session_id=session)
        if not pairs:
            raise fail("no preference pairs to export: judge some candidates in the studio first")
        try:
            count = write_pairs_jsonl(pairs, out)
        except OSError as exc:
            raise fail(describe_write_error(exc, out)) from None
    typer.echo(f"wrote {count} pair(s) to {visible(out)}")


def _train_command():  # noqa: ANN202
    from trainers.run.cli import make_train_command

    # Dataset names and paths in the trainer's lines are user text: shown with control characters escaped.
    return make_train_command(get_db=lambda: settings().db, default_model=resolve_model_path, escape=visible)


app.command("train", help="Train a LoRA DPO adapter on your preference pairs (its own process; ctrl-c cancels "
            "at the next step and keeps the adapter so far).")(_train_command())


@adapters_app.command("export")
def adapters_export(
    run: Annotated[int, typer.Option("--run", help="The training run whose adapter to export.")],
    out: Annotated[Path, typer.Option("--out", help="The .gguf file to write.")],
) -> None:
    """Write a run's adapter as a GGUF LoRA that llama.cpp (and this studio) can load."""
    from studio.evaluation.run_adapters import export_run_adapter
    from studio.inference.model_files import inspect_gguf

    with user_errors(out):
        with Store.open(settings().db) as store:
            record = store.get_run(run)
        written = export_run_adapter(record, inspect_gguf(resolve_model_path()), out)
    typer.echo(f"wrote {visible(written)} ({written.stat().st_size:,} bytes)")


@adapters_app.command("list")
def adapters_list() -> None:
    """List runs with an adapter (finished or cancelled)."""
    from studio.evaluation.run_adapters import usable_runs

    with user_errors():
        with Store.open(settings().db) as store:
            runs = usable_runs(store)
    if not runs:
        typer.echo("no finished runs yet: train one with `prefstudio train` or F5 in the studio", err=True)
    for r in runs:
        typer.echo(f"run {r.id}\t{r.status}\t{r.created_at}\t{one_line(r.model_id, 80)}\t{one_line(r.output_dir, 200)}")


@app.command()
def compare(
    run: Annotated[int, typer.Option("--run", help="The training run to compare with the base model.")],
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Prompts file (lines, JSON or JSONL).")] = None,
    prompts_from: Annotated[str | None, typer.Option("--prompts-from", help=PROMPTS_FROM_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    limit: Annotated[int | None, typer.Option(help="At most this many prompts.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first prompt (prompt i uses seed + i, for both).")] = 0,
    temperature: Annotated[float | None, typer.Option(min=0.0, help=TEMPERATURE_HELP)] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Max new tokens per answer (default: settings).")] = None,
) -> None:
    """Base and tuned answers side by side, and held-out preference accuracy before and after."""
    from studio.evaluation.compare_session import describe_sampling, run_comparison

    with user_errors():
        source = _prompt_source(prompts, prompts_from)
        sampling = _sampling(temperature, max_tokens)
        engine = open_engine()
        with Store.open(settings().db) as store:
            store.mark_stale_runs([run], when="when it was compared")  # a dead trainer's run is not running
            result = run_comparison(engine, store, run, system=settings().system_prompt,
                                    sampling=sampling, seed=seed, prompts_from=source, limit=limit)
    if as_json:
        typer.echo(json_visible(json.dumps(result.to_dict(), ensure_ascii=False, indent=2)))
        return
    for note in result.notes:
        typer.echo(f"note: {visible(note)}", err=True)
    typer.echo(f"run {run}: {len(result.rows)} prompt(s) from {visible(result.prompts_source, keep='')} · "
               f"{describe_sampling(sampling)}")
    for i, row in enumerate(result.rows, 1):
        typer.echo(f"\n[{i}] {_one_line(row.prompt, 100)}  (seed {row.seed})")
        typer.echo(f"  base : {_one_line(row.base_text, 200)}")
        typer.echo(f"  tuned: {_one_line(row.tuned_text, 200)}")
    if result.before and result.after:
        typer.echo("")
        typer.echo(_metrics_line(result.before, result.after))
    if result.stance:
        from studio.evaluation.stance_metric import describe_stance

        typer.echo("")
        for line in describe_stance(result.stance):  # held-out and training items, each labelled
            typer.echo(line)


PROMPTS_FROM_HELP = ("Where the prompts come from: heldout, bank:NAME (assets/prompts), session (the questions of the "
                     "run's sessions; session:ID for one), or a prompts FILE (default: held-out, else a bank).")
TEMPERATURE_HELP = "Sampling temperature for both models; 0 gives greedy answers (default: from settings)."


def _prompt_source(prompts: Path | None, prompts_from: str | None):  # noqa: ANN202 - a PromptSource
    from studio.evaluation.prompts import PromptSource

    if prompts is not None and prompts_from is not None:
        raise ValueError("give either --prompts FILE or --prompts-from, not both")
    if prompts is not None:
        return PromptSource("file", str(prompts))
    return PromptSource.parse(prompts_from)


def _sampling(temperature: float | None, max_tokens: int | None):  # noqa: ANN202 - SamplingSettings
    sampling = settings().sampling
    if temperature is not None:
        sampling = replace(sampling, temperature=temperature)
    if max_tokens is not None:
        sampling = replace(sampling, max_tokens=max_tokens)
    return sampling


def _metrics_line(before: dict, after: dict) -> str:
    return (f"held-out pairs: {before['n']} · preference accuracy base {before['raw_accuracy']:.2f} → tuned "
            f"{after['raw_accuracy']:.2f} (implicit reward {after['implicit_reward_accuracy']:.2f}) · mean margin "
            f"{before['mean_margin']:+.3f} → {after['mean_margin']:+.3f}")


@app.command()
def report(
    run: Annotated[int, typer.Option("--run", help="The training run to report on.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write report.md, report.html and charts into.")],
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Prompts file for the samples.")] = None,
    prompts_from: Annotated[str | None, typer.Option("--prompts-from", help=PROMPTS_FROM_HELP)] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, help=TEMPERATURE_HELP)] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Max new tokens per sample answer.")] = None,
) -> None:
    """Write a Markdown + HTML report: config, data, curves, before/after metrics, blind votes, samples.

    The samples are the run's stored comparison; any of --prompts, --prompts-from, --temperature or
    --max-tokens generates them afresh with those settings."""
    from studio.evaluation.compare_session import run_comparison, stored_comparison, write_run_report

    with user_errors(out):
        check_report_folder(out)  # before any model is loaded: never into a folder it did not write
        source = _prompt_source(prompts, prompts_from)
        sampling = _sampling(temperature, max_tokens)
        fresh = prompts is not None or prompts_from is not None or temperature is not None or max_tokens is not None
        with Store.open(settings().db) as store:
            store.get_run(run)  # a missing run is named before any model is loaded
            store.mark_stale_runs([run], when="when its report was asked for")  # not "still training"
            result = None if fresh else stored_comparison(store, run)
            if result is None:
                result = run_comparison(open_engine(), store, run, system=settings().system_prompt,
                                        sampling=sampling, prompts_from=source, limit=8)
            path = write_run_report(store, run, result, out)
        mark_report_folder(out)
    typer.echo(f"wrote {path} and {path.with_suffix('.html').name}")


REPORT_EXPORT_KIND = "report"


def check_report_folder(out: Path) -> None:
    """``report --out``: a new or empty folder, or an earlier report (store/output_folders.py's rule)."""
    from store.output_folders import earlier_export_files

    earlier_export_files(out, REPORT_EXPORT_KIND)


def mark_report_folder(out: Path) -> None:
    """Record the report's files in ``out``, so the next report may replace them (and only them)."""
    from store.output_folders import write_marker
    from studio.evaluation.report import LOSS_PNG, MARGINS_PNG

    write_marker(Path(out).expanduser(), REPORT_EXPORT_KIND, (LOSS_PNG, MARGINS_PNG, "report.html", "report.md"))


@app.command()
def doctor() -> None:
    """Print what the studio would use: model, engine build, threads, database, versions."""
    from studio.cli.doctor import collect_report

    with user_errors():
        report = collect_report(settings(), resolve_model_path)
    width = max(len(k) for k in report)
    for key, value in report.items():
        typer.echo(f"{key:<{width}}  {visible(value, keep='')}")  # paths and the system prompt are user text


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
