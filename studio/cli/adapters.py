"""``prefstudio adapters list/export``: LoRA adapters of finished runs, for llama.cpp."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from store.studio_store import Store
from studio.cli.context import resolve_model_path, settings
from studio.cli.errors import user_errors
from studio.cli.terminal_text import one_line, visible

adapters_app = typer.Typer(help="LoRA adapters of finished runs, for llama.cpp.", no_args_is_help=True)


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
        written = export_run_adapter(record, inspect_gguf(resolve_model_path()), out, store.path)
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
