"""``prefstudio runs`` (list) and ``prefstudio runs show N``: the training runs, and the runs each built on.

Read-only but for one thing: a run whose training process is gone is marked failed first (as the studio's
start, ``report`` and ``compare`` do), so a list never shows a dead run as training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from store.studio_store import Store
from studio.cli.context import settings
from studio.cli.errors import user_errors
from studio.cli.terminal_text import one_line, visible
from trainers.chain import ChainLink, chain_of, method_of
from trainers.run_config import field_defaults, flag

if TYPE_CHECKING:
    from store.records import RunRecord

runs_app = typer.Typer(help="Training runs: what each trained on, how it ended, which run it built on.")


@runs_app.callback(invoke_without_command=True)
def runs_main(ctx: typer.Context) -> None:
    """List the training runs, newest first (``runs show N`` for one run and its chain)."""
    if ctx.invoked_subcommand is None:
        runs_list()


@runs_app.command("list")
def runs_list() -> None:
    """List the training runs, newest first: id, status, method, model, when, result, and the run it started from."""
    with user_errors():
        with Store.open(settings().db) as store:
            store.mark_stale_runs(when="when the runs were listed")
            runs = store.list_runs()
    if not runs:
        typer.echo("no training runs yet: `prefstudio train` starts one", err=True)
        return
    for run in runs:
        typer.echo("\t".join(run_row(run)))
    typer.echo(f"{len(runs)} run(s)", err=True)


@runs_app.command("show")
def runs_show(run_id: Annotated[int, typer.Argument(help="The run's id (`prefstudio runs` lists them).")]) -> None:
    """One run: its status, settings, result and the whole chain of runs it builds on."""
    with user_errors():
        with Store.open(settings().db) as store:
            store.mark_stale_runs([run_id], when="when the run was shown")
            run = store.get_run(run_id)
            chain = chain_of(store, run)
    for line in run_details(run, chain):
        typer.echo(line)


def run_row(run: RunRecord) -> list[str]:
    """One run as the list shows it, each cell safe for a terminal."""
    from_run = run.config.get("init_from")
    return [
        str(run.id), run.status, one_line(method_of(run), 10), one_line(run.model_id, 40), run.created_at[:16],
        one_line(_result(run), 40), f"from run {from_run}" if from_run else "",
    ]


def run_details(run: RunRecord, chain: list[ChainLink]) -> list[str]:
    """``runs show``: what a person asks of a run, in lines (stored text escaped)."""
    lines = [f"run {run.id}: {run.status}" + (f" — {one_line(run.message, 200)}" if run.message else ""),
             f"method: {one_line(method_of(run), 20)}",
             f"model: {visible(run.config.get('train_model') or run.model_id, keep='')}",
             f"created: {run.created_at}, updated: {run.updated_at}"]
    lines.append(f"chain: {describe_chain(chain)}")
    if len(chain) > 1:
        lines.append(f"  started from run {chain[-2].run_id}: its adapter (the chain before it) merged into the "
                     "base; this run's adapter is the whole chain's effect")
    lines.append(f"pairs: {len(run.pair_ids)} train, {len(run.heldout_ids)} held out")
    changed = _changed_settings(run.config)
    if changed:
        lines.append("settings: " + ", ".join(changed))
    summary = run.summary or {}
    if summary.get("steps") is not None:
        lines.append(f"result: {one_line(_result(run), 120)}")
    lines.append(f"output: {visible(run.output_dir, keep='')}")
    return lines


def describe_chain(chain: list[ChainLink]) -> str:
    """``run 1 (sft, done) → run 2 (dpo, done)``: the runs a run builds on, oldest first, the run itself last."""
    return " → ".join(f"run {link.run_id} ({one_line(link.method, 10)}, {link.status})" for link in chain)


def _result(run: RunRecord) -> str:
    summary = run.summary or {}
    steps = summary.get("steps")
    if steps is None:
        return ""
    loss = (summary.get("last") or {}).get("loss")
    return f"{steps} step(s)" + (f", loss {loss:.4f}" if isinstance(loss, int | float) else "")


def _changed_settings(config: dict[str, object]) -> list[str]:
    """The run's settings that differ from the defaults, as flags (the model and the chain shown apart)."""
    defaults = field_defaults()
    shown = []
    for name, value in sorted(config.items()):
        if name in ("train_model", "init_from", "method") or defaults.get(name, value) == value:
            continue
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        shown.append(f"{flag(name)} {one_line(text, 60)}")
    return shown
