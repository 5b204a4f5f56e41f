"""``prefstudio pairs list/export``: the preference pairs read out of your judgements."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from store.output_folders import describe_write_error
from store.studio_store import Store
from studio.cli.context import settings
from studio.cli.errors import fail, user_errors
from studio.cli.terminal_text import one_line, visible

pairs_app = typer.Typer(help="Preference pairs read out of your judgements.", no_args_is_help=True)


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
        typer.echo(f"{p.pair_id}\tsession {p.session_id}\t{p.verdict}\t{one_line(p.prompt_text, 50)}"
                   f"\tchosen: {one_line(p.chosen, 40)}\trejected: {one_line(p.rejected, 40)}")
    typer.echo(f"{len(pairs)} pair(s)", err=True)


@pairs_app.command("export")
def pairs_export(
    out: Annotated[Path, typer.Option("--out", help="File to write.")],
    fmt: Annotated[str, typer.Option("--format", help="Output format (jsonl: TRL standard preference).")] = "jsonl",
    session: Annotated[int | None, typer.Option(help="Only this session's pairs.")] = None,
) -> None:
    """Write pairs in TRL's standard preference format (prompt / chosen / rejected)."""
    # The one pairs exporter, the one `datasets export --judged` writes through too.
    from store.datasets.export import check_export_target, judged_export_pairs, write_pairs

    if fmt != "jsonl":
        raise fail(f"unknown format {fmt!r}; supported: jsonl")
    with user_errors():
        check_export_target(out, fmt)  # never over a file this export did not write
        with Store.open(settings().db) as store:
            pairs = judged_export_pairs(store, session)
        if not pairs:
            raise fail("no preference pairs to export: judge some candidates in the studio first")
        try:
            count = write_pairs(pairs, out, fmt)
        except OSError as exc:
            raise fail(describe_write_error(exc, out)) from None
    typer.echo(f"wrote {count} pair(s) to {visible(out)}")
