"""``prefstudio attributes annotate --run N``: an attribute model's predictions for replies nobody rated.

SteerLM's step 2. The run (a finished ``--method attributes`` run on the served model) reads every stored
candidate without a human rating, every demonstration and edit, and the demonstration and label items of an
imported dataset (``--dataset NAME``), and its predicted values are stored in ``predicted_ratings`` with the
run's id — never in ``candidate_ratings``, so no training method mistakes them for the user's. Prediction runs
in a torch worker process (``studio.attributes_model.AttributePredictor``); each batch is stored in its own
transaction, so Ctrl-C stops between batches with everything stored so far whole, and running the command
again continues with the replies the run has not predicted yet.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from store.predicted_ratings import TargetKind
from store.studio_store import Store
from studio.attributes_model import AttributeModelError, AttributePredictor
from studio.cli.context import resolve_model_path, settings
from studio.cli.errors import fail, user_errors
from studio.cli.terminal_text import visible

attributes_app = typer.Typer(help="SteerLM attribute models: annotate replies nobody rated.", no_args_is_help=True)

BATCH = 16


@dataclass
class AnnotationTally:
    """How many replies of each kind were annotated now, and whether it stopped early."""

    annotated: dict[str, int] = field(default_factory=dict)
    stopped: bool = False

    @property
    def total(self) -> int:
        return sum(self.annotated.values())


def annotate_targets(store: Store, predictor: AttributePredictor, kinds: Sequence[TargetKind],
                     dataset_id: int | None = None,
                     progress: Callable[[str, int, int], None] | None = None) -> AnnotationTally:
    """Predict and store, batch by batch, every reply of ``kinds`` the run may still annotate
    (``Store.annotation_targets``). ``progress(kind, done, total)`` after each batch. A KeyboardInterrupt
    between or during a batch stops it: the batches stored stay, the one in flight is not stored."""
    tally = AnnotationTally()
    try:
        for kind in kinds:
            targets = store.annotation_targets(predictor.run_id, kind, dataset_id)
            tally.annotated[kind] = 0
            if progress is not None:
                progress(kind, 0, len(targets))
            for start in range(0, len(targets), BATCH):
                batch = targets[start:start + BATCH]
                values = predictor.predict([t.text for t in batch], [t.prompt for t in batch])
                store.record_predicted_ratings(predictor.run_id, kind,
                                               {t.target_id: v for t, v in zip(batch, values, strict=True)})
                tally.annotated[kind] += len(batch)
                if progress is not None:
                    progress(kind, start + len(batch), len(targets))
    except KeyboardInterrupt:
        tally.stopped = True
    return tally


def _served_sha256(run_model: dict, served: Path) -> str | None:
    """The sha256 the run must have been trained on: the served GGUF's (None: nothing to compare, the run and
    the served model are both plain model folders)."""
    if served.is_file():
        from studio.inference.model_files import file_sha256

        return file_sha256(served)
    return None if not run_model.get("sha256") else "(a model folder, not a GGUF)"


@attributes_app.command("annotate")
def annotate(
    run: Annotated[int, typer.Option("--run", help="The attributes run whose model predicts.")],
    dataset: Annotated[str | None, typer.Option("--dataset", help="Annotate this imported dataset's "
                                                "demonstration or label items.")] = None,
    demonstrations: Annotated[bool, typer.Option("--demonstrations", help="Annotate demonstrations and "
                                                 "edits.")] = False,
    candidates: Annotated[bool, typer.Option("--candidates", help="Annotate candidates without a human "
                                             "rating.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Store the run's predicted attribute values for replies without human ratings (default: candidates and
    demonstrations; name kinds to choose). Ctrl-C keeps what was stored; run again to continue."""
    kinds: list[TargetKind] = []
    if candidates or not (demonstrations or dataset):
        kinds.append("candidate")
    if demonstrations or not (candidates or dataset):
        kinds += ["demonstration", "edit"]
    with user_errors(db=settings().db), Store.open(settings().db) as store:
        record = store.get_run(run)
        dataset_id = None
        if dataset is not None:
            found = store.get_dataset(dataset)
            if found.kind not in ("demonstrations", "labels"):
                raise fail(f"dataset '{found.name}' is a {found.kind} dataset: annotate a demonstrations or labels "
                           "dataset (a ratings dataset's items are rated already)")
            dataset_id = found.id
            kinds.append("dataset_item")
        served = resolve_model_path()
        trained = (record.summary or {}).get("model") or {}
        try:
            predictor = AttributePredictor(record, db_path=settings().db,
                                           expected_sha256=_served_sha256(trained, served), served_name=served.name,
                                           threads=settings().threads or 2)
        except AttributeModelError as exc:
            raise fail(str(exc)) from None
        try:
            typer.echo(visible(f"run {run} predicts {', '.join(predictor.attributes)}"), err=True)
            tally = annotate_targets(store, predictor, kinds, dataset_id, progress=_echo_progress)
        except AttributeModelError as exc:
            raise fail(str(exc)) from None
        finally:
            predictor.close()
    if as_json:
        typer.echo(json.dumps({"run": run, "annotated": tally.annotated, "stopped": tally.stopped}))
    else:
        counts = ", ".join(f"{n} {kind}(s)" for kind, n in tally.annotated.items())
        typer.echo(visible(f"annotated {counts} with run {run}'s predictions (stored apart from human ratings)"))
    if tally.stopped:
        typer.echo("stopped: what was annotated so far is stored; run the command again to continue", err=True)
        raise typer.Exit(130)


def _echo_progress(kind: str, done: int, total: int) -> None:
    typer.echo(f"{kind}: {done}/{total}", err=True)
