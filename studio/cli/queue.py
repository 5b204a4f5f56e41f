"""``prefstudio queue``: prompts queued for labelling, their candidates generated ahead (headless).

``queue add`` enqueues prompts (a file, a bundled bank, an imported dataset's prompts) with N candidates each
and generates them with a progress bar; ``queue generate`` resumes; ``queue status`` says how far each queue
is. Ctrl-C stops generation at the next token: every prompt already generated stays stored, the one being
generated stays waiting, and ``queue generate`` goes on with the rest. Judging happens in the studio's queue
mode (F9). A thin client of ``studio.labelling_queue``.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from store.studio_store import Store
from studio.cli.context import open_engine, settings
from studio.cli.errors import fail, user_errors
from studio.cli.terminal_text import visible

queue_app = typer.Typer(help="The labelling queue: prompts with candidates generated ahead, judged in the "
                             "studio's queue mode (F9).", no_args_is_help=True)

CANCELLED_EXIT = 130  # as a shell reports a command stopped by ctrl-c


@queue_app.command("add")
def add(
    prompts: Annotated[Path | None, typer.Option("--prompts", help="A prompts file: one per line, .jsonl or .json.")] = None,
    n: Annotated[int, typer.Option("-n", "--n", min=1, max=4, help="Candidates per prompt (1–4).")] = 2,
    system: Annotated[str | None, typer.Option(help="System text (default: from settings).")] = None,
    bank: Annotated[str | None, typer.Option("--bank", help="A bundled prompt bank by name.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="An imported dataset's prompts.")] = None,
    generate_now: Annotated[bool, typer.Option("--generate/--no-generate",
                                               help="Generate the candidates now (default) or later.")] = True,
    max_tokens: Annotated[int | None, typer.Option(help="Max new tokens per candidate.")] = None,
) -> None:
    """Queue prompts with N candidates each, then generate their candidates (ctrl-c stops; the rest later)."""
    from studio.labelling_queue import enqueue, prompts_from_bank, prompts_from_dataset, prompts_from_file

    if prompts is None and bank is None and dataset is None:
        raise fail("nothing to queue: give --prompts FILE, --bank NAME or --dataset NAME")
    s = settings()
    with user_errors(prompts, db=s.db, reading=True), Store.open(s.db) as store:
        found: list[tuple[str, str]] = []
        if prompts is not None:
            found += prompts_from_file(prompts)
        if bank is not None:
            found += prompts_from_bank(bank)
        if dataset is not None:
            found += prompts_from_dataset(store, dataset)
        queue_id, counts = enqueue(store, found, n, system if system is not None else s.system_prompt)
        again = f" ({counts.already_queued} already queued)" if counts.already_queued else ""
        typer.echo(f"queued {counts.added} prompt(s) with {n} candidate(s) each in queue {queue_id}{again}")
    if generate_now:
        _generate(max_tokens)


@queue_app.command("generate")
def generate(
    max_tokens: Annotated[int | None, typer.Option(help="Max new tokens per candidate.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after this many prompts.")] = None,
) -> None:
    """Generate the candidates of every prompt still waiting (resumes where the last run stopped)."""
    _generate(max_tokens, limit)


@queue_app.command("status")
def status() -> None:
    """How far each queue is: generated / left, judged / left."""
    from studio.labelling_queue import progress_line

    s = settings()
    with user_errors(db=s.db), Store.open(s.db) as store:
        queues = store.queues()
        if not queues:
            typer.echo("no labelling queue yet: `prefstudio queue add --prompts FILE -n 4` starts one")
            return
        for queue in queues:
            counts = store.queue_counts(queue.id)
            system = " ".join(queue.system_prompt.split())
            typer.echo(f"queue {queue.id}: {progress_line(counts)} · system: {visible(system[:60], keep='')}")
        if len(queues) > 1:
            typer.echo(f"all: {progress_line(store.queue_counts())}")


def _generate(max_tokens: int | None, limit: int | None = None) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from studio.labelling_queue import QueueGenerator, progress_line

    s = settings()
    sampling = s.sampling if max_tokens is None else replace(s.sampling, max_tokens=max_tokens)
    with user_errors(db=s.db), Store.open(s.db) as store:
        waiting = store.queue_counts().waiting
        if waiting == 0:
            typer.echo(f"nothing to generate: {progress_line(store.queue_counts())}")
            return
        engine = open_engine()
        generator = QueueGenerator(store, engine, sampling, base_seed=s.seed)
        previous = signal.getsignal(signal.SIGINT)

        def stop(signum: int, frame: FrameType | None) -> None:
            # The first ctrl-c stops at the next token (the stored prompts stay); a second one is the default.
            generator.cancel()
            signal.signal(signal.SIGINT, signal.default_int_handler)

        signal.signal(signal.SIGINT, stop)
        try:
            with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task("generating candidates", total=min(waiting, limit or waiting))
                report = generator.run(on_item_done=lambda item, prompt_id: bar.advance(task), limit=limit)
        finally:
            signal.signal(signal.SIGINT, previous)
            engine.close()
        rate = generator.rate.per_minute()
        for item, why in report.skipped:
            typer.echo(f"skipped {visible(item.origin, keep='')}: {visible(why, keep='')}", err=True)
        typer.echo(f"generated {report.generated} prompt(s); {progress_line(store.queue_counts(), rate)}")
        if report.cancelled:
            typer.echo("stopped: what was generated is stored; `prefstudio queue generate` goes on with the rest",
                       err=True)
            raise typer.Exit(CANCELLED_EXIT)
