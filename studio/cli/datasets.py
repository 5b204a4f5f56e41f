"""``prefstudio datasets``: import, export, list and show datasets.

Wired in ``studio.cli.app`` with ``app.add_typer(make_datasets_app(lambda: settings().db), name="datasets")``;
``get_db`` is called when a command runs, so the global ``--db`` is honoured. Expected failures print one
``error: …`` line on stderr and exit 1, like every other command.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import chain, islice
from pathlib import Path
from typing import Annotated

import typer

from store.datasets.export import (
    EXPORT_FORMATS,
    PREFER,
    check_export_target,
    dataset_export_pairs,
    judged_export_pairs,
    sibling_path,
    write_dataset_pairs,
    write_pairs,
    write_test_prompts,
)
from store.datasets.feedback_formats import FEEDBACK_KINDS
from store.datasets.files import CONTAINERS
from store.datasets.formats import FEEDBACK_SCHEMAS, SCHEMAS
from store.datasets.store_mixin import ExportPair
from store.studio_store import Store
from studio.cli.errors import fail, user_errors
from studio.cli.terminal_text import one_line, visible

_FORMAT_HELP = (f"Force the schema ({', '.join(SCHEMAS + tuple(FEEDBACK_SCHEMAS))}), the file type ({', '.join(CONTAINERS)}), or both "
                "joined by ',' (default: detected).")


@contextmanager
def _progress() -> Iterator[Callable[[int], None] | None]:
    """A live record count on stderr when it is a terminal; nothing in scripts and tests."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), transient=True,
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("reading records…")
        yield lambda n: bar.update(task, description=f"read {n:,} records")


def _unit(kind: str) -> str:
    """What a dataset of this kind holds, for counts: items, pairs, or the kind itself (labels, ratings, …)."""
    return {"stance": "items", "preference": "pairs"}.get(kind, kind)


def _default_export_format(out: Path) -> str:
    return "parquet" if out.suffix.lower() == ".parquet" else "jsonl"


def _peeked(pairs: Iterator[ExportPair]) -> Iterator[ExportPair] | None:
    """`pairs` unchanged, or None when it is empty (so nothing is written for an empty selection)."""
    first = next(pairs, None)
    return None if first is None else chain([first], pairs)


def _unique(pairs: Iterable[ExportPair]) -> Iterator[ExportPair]:
    # A pair reached through two sources (a held-out judged pair also asked for with --judged) goes once.
    seen: set[str] = set()
    for pair in pairs:
        if pair.pair_id not in seen:
            seen.add(pair.pair_id)
            yield pair


def make_datasets_app(get_db: Callable[[], Path | None]) -> typer.Typer:
    """The ``datasets`` sub-app; ``get_db()`` gives the database (None: the user's default one)."""
    app = typer.Typer(help="Import, export and inspect datasets (labelled stance items, preference pairs).",
                      no_args_is_help=True)

    def open_store() -> Store:
        return Store.open(get_db())

    @app.command("import")
    def import_(
        path: Annotated[Path, typer.Argument(help="A JSON, JSONL or parquet file, a save_to_disk folder, or a "
                                             "folder with one data file and a *test* prompt file.")],
        name: Annotated[str | None, typer.Option("--name", help="Dataset name (default: the file's stem).")] = None,
        fmt: Annotated[str | None, typer.Option("--format", help=_FORMAT_HELP)] = None,
        test_prompts: Annotated[Path | None, typer.Option(
            "--test-prompts", help="A companion file of {id, prompt} test prompts.")] = None,
        skip_bad: Annotated[bool, typer.Option(
            "--skip-bad", help="Leave malformed records (bad JSON lines, missing fields, wrong types) out and report "
            "them, instead of refusing the whole file.")] = False,
    ) -> None:
        """Import a dataset (stance JSON, TRL standard or conversational, HH); importing again adds only new records."""
        from store.datasets.importing import import_dataset

        if name is not None and not name.strip():
            raise fail("--name is empty; give the dataset a name (or leave --name out to use the file's stem)")
        with user_errors(path, db=get_db(), reading=True), open_store() as store, _progress() as on_progress:
            report = import_dataset(store, path, name=name, fmt=fmt, test_prompts_path=test_prompts,
                                    on_progress=on_progress, skip_bad=skip_bad)
            record = store.get_dataset(report.dataset_id)
        typer.echo(visible(report.describe()))
        from trainers.exercise import missing_test_prompts_note

        note = missing_test_prompts_note(record.kind, record.n_test_prompts, record.name)
        if note:  # e.g. labelled_data.json imported without its test file (issue 9, item 11)
            typer.echo(f"note: {visible(note)}", err=True)

    @app.command("list")
    def list_() -> None:
        """List the imported datasets."""
        with user_errors(reading=True), open_store() as store:
            records = store.list_datasets()
        if not records:
            typer.echo("no datasets yet: import one with `prefstudio datasets import FILE`", err=True)
            return
        for r in records:
            unit = _unit(r.kind)
            typer.echo(f"{r.id}\t{visible(r.name, keep='')}\t{r.kind}\t{r.format}\t{r.n_items} {unit}\t"
                       f"{r.n_test_prompts} test prompts\t{r.created_at[:19]}")

    @app.command("show")
    def show(
        dataset: Annotated[str, typer.Argument(help="Dataset name or id.")],
        limit: Annotated[int, typer.Option("--limit", min=0, help="How many records to show.")] = 5,
    ) -> None:
        """Show a dataset: what it holds and its first records."""
        with user_errors(reading=True), open_store() as store:
            record = store.get_dataset(dataset)
            tests = store.test_prompts(record)
            if record.kind in FEEDBACK_KINDS:
                lines = [one_line(str(item), 160) for item in store.feedback_items(record)[:limit]]
            elif record.kind == "stance":
                lines = [f"{one_line(i.item_key, 40)}\t{one_line(i.prompt, 50)}\tsupport: {one_line(i.support, 30)}\t"
                         f"oppose: {one_line(i.oppose, 30)}" for i in store.stance_items(record)[:limit]]
            else:
                lines = [f"{p.pair_id}\t{one_line(p.prompt, 50)}\tchosen: {one_line(p.chosen, 30)}\t"
                         f"rejected: {one_line(p.rejected, 30)}"
                         for p in islice(store.iter_dataset_pairs(record.id), limit)]  # not all 100k
        unit = _unit(record.kind)
        typer.echo(f"dataset '{visible(record.name, keep='')}' (id {record.id}): {record.kind}, {record.format}, "
                   f"{record.n_items} {unit}, {record.n_test_prompts} test prompts")
        typer.echo(f"imported from {visible(record.source_path, keep='')} at {record.created_at[:19]}")
        for line in lines:
            typer.echo(line)
        for prompt in tests[:limit]:
            typer.echo(f"test {one_line(prompt.item_key, 40)}\t{one_line(prompt.prompt, 80)}")

    @app.command("export")
    def export(
        out: Annotated[Path, typer.Option("--out", help="File (jsonl, parquet) or folder (hf) to write.")],
        datasets: Annotated[list[str] | None, typer.Argument(
            metavar="[NAME]...", help="Datasets to export (names or ids).", show_default=False)] = None,
        all_: Annotated[bool, typer.Option("--all", help="Every imported dataset.")] = False,
        fmt: Annotated[str | None, typer.Option(
            "--format", help=f"{' | '.join(EXPORT_FORMATS)} (hf: a save_to_disk folder; default: parquet for a "
            ".parquet --out, else jsonl).")] = None,
        conversational: Annotated[bool, typer.Option(
            "--conversational", help="TRL conversational format (message lists) instead of standard.")] = False,
        prefer: Annotated[str, typer.Option(
            "--prefer", help="For stance datasets: the side written as chosen (support | oppose).")] = "support",
        judged: Annotated[bool, typer.Option("--judged", help="The studio's own judged pairs.")] = False,
        session: Annotated[int | None, typer.Option("--session", help="Judged pairs of this session.")] = None,
        verdict: Annotated[str | None, typer.Option(
            "--verdict", help="Judged pairs with these verdicts, e.g. a,b,edited.")] = None,
        since: Annotated[str | None, typer.Option("--since", help="Judged on or after this date.")] = None,
        until: Annotated[str | None, typer.Option("--until", help="Judged on or before this date.")] = None,
        heldout: Annotated[int | None, typer.Option("--heldout", help="The held-out pairs of this run.")] = None,
        with_tests: Annotated[bool, typer.Option(
            "--test-prompts", help="Also write the datasets' test prompts to <out>_test_prompts.")] = False,
        kind: Annotated[str | None, typer.Option(
            "--kind", help="What to export: pairs (TRL preference), labels (TRL unpaired: KTO), demonstrations "
            "(TRL prompt-completion, or messages with --conversational: SFT), ratings (HelpSteer columns), "
            "rankings (prompt, responses, ranking). Default: the named datasets' kind, else pairs.")] = None,
        from_judgements: Annotated[bool, typer.Option(
            "--from-judgements", help="--kind labels: also the labels comparisons imply (chosen good, rejected "
            "bad, both/all bad).")] = False,
    ) -> None:
        """Export pairs in TRL's preference format (datasets, judged pairs, a run's held-out pairs), or another
        feedback kind (--kind) from datasets of that kind and the studio's own feedback (--judged).

        --session, --verdict, --since and --until select judged pairs (they imply --judged). Rankings as pairs:
        --judged --verdict ranked.
        """
        fmt = fmt or _default_export_format(out)
        if fmt not in EXPORT_FORMATS:
            raise fail(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
        if kind is not None and kind not in ("pairs", *FEEDBACK_KINDS):
            raise fail(f"--kind must be one of pairs, {', '.join(FEEDBACK_KINDS)}, not {kind!r}")
        if kind is None and datasets and not all_:
            with user_errors(db=get_db(), reading=True), open_store() as store:
                kinds = {store.get_dataset(name).kind for name in datasets}
            feedback_kinds = kinds & set(FEEDBACK_KINDS)
            if feedback_kinds and len(kinds) > 1:
                raise fail(f"the named datasets hold {', '.join(sorted(kinds))}: export one kind at a time")
            kind = feedback_kinds.pop() if feedback_kinds else None
        if kind in FEEDBACK_KINDS:
            pairs_only = [name for name, given in (("--verdict", verdict), ("--since", since), ("--until", until),
                                                   ("--heldout", heldout)) if given is not None]
            if with_tests:
                pairs_only.append("--test-prompts")
            _export_feedback(kind, out, fmt, datasets or [], all_, judged or session is not None, session,
                             from_judgements, conversational, pairs_only)
            return
        if from_judgements:
            raise fail("--from-judgements goes with --kind labels")
        judged = judged or any(v is not None for v in (session, verdict, since, until))
        if not (datasets or all_ or judged or heldout is not None):
            raise fail("nothing to export: name datasets, or pass --all, --judged or --heldout RUN")
        if prefer not in PREFER:
            raise fail(f"--prefer must be one of {', '.join(PREFER)}, not {prefer!r}")
        with user_errors(out, db=get_db()):
            # Before any work: never write over a file or into a folder this export did not write.
            check_export_target(out, fmt)
            if with_tests:
                check_export_target(sibling_path(out, "test_prompts"), fmt)
        with user_errors(out, db=get_db()), open_store() as store:
            chosen = ([d for d in store.list_datasets() if d.kind in ("stance", "preference")] if all_
                      else [store.get_dataset(name) for name in datasets or []])  # --all: every pair dataset
            missing: list[str] = []
            if not judged and heldout is None:
                # Datasets only: streamed straight from the store (pair ids never repeat across datasets).
                if not any(record.n_items for record in chosen):
                    raise fail("no pairs matched: nothing written")
                count = write_dataset_pairs(store, chosen, out, fmt, conversational, prefer)
            else:
                sources: list[Iterable[ExportPair]] = [dataset_export_pairs(store, d, prefer) for d in chosen]
                if judged:
                    verdicts = [v.strip() for v in verdict.split(",") if v.strip()] if verdict else None
                    sources.append(judged_export_pairs(store, session, verdicts, since, until))
                if heldout is not None:
                    from trainers.recorded_pairs import heldout_export_pairs

                    found, missing = heldout_export_pairs(store, heldout)
                    sources.append(found)
                pairs = _peeked(_unique(p for source in sources for p in source))
                if pairs is None:
                    raise fail("no pairs matched: nothing written")
                count = write_pairs(pairs, out, fmt, conversational)
            tests_written = None
            if with_tests:

                prompts = [t for d in chosen for t in store.test_prompts(d)]
                if prompts:
                    tests_out = sibling_path(out, "test_prompts")
                    tests_written = (write_test_prompts(prompts, tests_out, fmt), tests_out)
        style = "conversational" if conversational else "standard"
        typer.echo(f"wrote {count} pair(s) to {visible(out)} ({fmt}, TRL {style})")
        if missing:
            typer.echo(f"warning: {len(missing)} held-out pair id(s) of run {heldout} no longer found: "
                       f"{visible(', '.join(missing[:10]), keep='')}", err=True)
        if with_tests:
            if tests_written:
                typer.echo(f"wrote {tests_written[0]} test prompt(s) to {tests_written[1]}")
            else:
                typer.echo("warning: the exported datasets have no test prompts", err=True)

    def _export_feedback(kind: str, out: Path, fmt: str, names: list[str], all_: bool, studio: bool,
                         session: int | None, from_judgements: bool, conversational: bool,
                         pairs_only: list[str]) -> None:
        from store.datasets.feedback_export import dataset_feedback, studio_feedback, write_feedback

        if pairs_only:
            raise fail(f"{', '.join(pairs_only)} select pairs, not {kind}")
        if from_judgements and kind != "labels":
            raise fail("--from-judgements goes with --kind labels")
        if not (names or all_ or studio):
            raise fail(f"nothing to export: name {kind} datasets, or pass --all or --judged (the studio's own)")
        with user_errors(out, db=get_db()):
            check_export_target(out, fmt)
        with user_errors(out, db=get_db()), open_store() as store:
            chosen = ([d for d in store.list_datasets() if d.kind == kind] if all_
                      else [store.get_dataset(name) for name in names])
            items = list(dataset_feedback(store, chosen, kind))
            if studio:
                items += studio_feedback(store, kind, session, from_judgements)
            if not items:
                raise fail(f"no {kind} matched: nothing written")
            count = write_feedback(items, kind, out, fmt, conversational)
        style = {"labels": "TRL unpaired preference", "demonstrations": "TRL messages" if conversational
                 else "TRL prompt-completion", "ratings": "HelpSteer columns", "rankings": "raw rankings"}[kind]
        if kind == "labels" and conversational:
            style += ", conversational"
        typer.echo(f"wrote {count} {kind} to {visible(out)} ({fmt}, {style})")

    return app
