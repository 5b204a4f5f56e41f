"""``prefstudio train``: the trainer's command line, its flags generated from ``RunConfig``'s fields.

    python -m trainers.train_cli --db DB --run-id N [--resume]     # train a prepared run
    python -m trainers.train_cli --db DB --train-model M --epochs 3  # prepare a run, then train it

``studio.train_command`` wraps the same function for ``prefstudio train`` (there the database and the
default model come from the studio's settings). SIGTERM or Ctrl-C stops at the next step boundary,
saves the adapter so far and leaves the run 'cancelled' (resumable).
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

import trainers  # noqa: F401  (HF offline env)
from trainers.run import native_env  # noqa: F401  (oneDNN's kernel cache capped before torch loads)
from trainers.run_config import RunConfig, flag

if TYPE_CHECKING:
    from store.studio_store import Store
    from trainers.pair_selection import SelectionReport

EXTRA_ALIASES = {"session_id": ["--session"], "train_model": []}
BeforePrepare = Callable[["Store", RunConfig, Callable[[str], None]], None]
"""Called with the store, the new run's config and the line printer before the run is counted or prepared."""
EXIT_CODES = {"done": 0, "failed": 1, "cancelled": 130}


def _base_type(annotation: Any) -> Any:
    """``int | None`` → int, ``list[str]`` → str (given comma-separated)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return str
    return annotation


def _default_text(f: Field[Any]) -> str:
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        return ""
    if value is None:
        return ""
    if isinstance(value, list):
        value = ",".join(value)
    return f" (default: {value})"


def config_parameters() -> list[inspect.Parameter]:
    """One keyword-only typer option per ``RunConfig`` field, all defaulting to None (= the field's default)."""
    hints = typing.get_type_hints(RunConfig)
    params = []
    for f in fields(RunConfig):
        base = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "") + _default_text(f)
        names = [flag(f.name), *EXTRA_ALIASES.get(f.name, [])]
        if base is bool:
            names = [f"{flag(f.name)}/--no-{flag(f.name)[2:]}"]
        option = typer.Option(*names, help=help_text, show_default=False, rich_help_panel="Run settings")
        params.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=Annotated[base | None, option])
        )
    return params


def config_from_flags(values: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """A RunConfig from the flags that were given (None = not given), on top of ``base``."""
    given = {k: v for k, v in values.items() if v is not None}
    return (base or RunConfig()).replace(**given)


def run_train(
    db_path: Path | None,
    run_id: int | None,
    resume: bool,
    flags: dict[str, Any],
    default_model: Callable[[], Path] | None = None,
    echo: Callable[[str], None] = print,
    prepare_only: bool = False,
    dry_run: bool = False,
    escape: Callable[[str], str] | None = None,
    before_prepare: BeforePrepare | None = None,
) -> int:
    """Prepare (when no run id is given) and train a run in this process; return the exit code.

    ``prepare_only`` records the run and stops: ``accelerate launch -m trainers.train_cli --run-id N``
    then trains it on several GPUs (every process must train the same prepared run). ``dry_run`` prints
    what a run would train on (the counts a prepared run records) and records nothing. ``escape`` makes
    each printed line safe for a terminal (the studio passes its control-character escaper: dataset names
    and paths in these lines are user text). ``before_prepare`` runs before a new run is counted (the studio
    checks the chosen replies with its safety checkers there, for ``--drop-flagged``)."""
    from store.studio_store import Store
    from trainers.run.lifecycle import prepare_run
    from trainers.run.outputs import checked_run_paths, runs_roots
    from trainers.run.process import CancelController, RunCancelled, execute_run
    from trainers.run.ranks import under_launcher

    shown = escape or (lambda text: text)

    def say(line: str) -> None:
        echo(shown(line))

    def warn(line: str) -> None:
        typer.echo(shown(line), err=True)

    cancel = CancelController()
    cancel.install()
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        with Store.open(db_path) as store:
            if run_id is None:
                if resume:
                    raise ValueError("--resume needs --run-id (the run to continue)")
                config = config_from_flags(given)
                model = config.train_model or _default_model_path(default_model)
                if before_prepare is not None:
                    before_prepare(store, config, say)
                if dry_run:
                    from trainers.run.lifecycle import plan_for_config

                    if not model:
                        raise ValueError("no model to train: pass --train-model (a .gguf file or an HF model "
                                         "directory)")
                    say(f"method: {config.method}")
                    say(f"would train: {plan_for_config(store, config, model).report.describe()}")
                    return 0
                prepared = prepare_run(store, config, model_path=model)
                say(f"run {prepared.run_id}: {prepared.selection.report.describe()}")
                note = data_size_note(prepared.config, prepared.selection.report)
                if note:
                    warn(f"note: {note}")
                say(f"output: {prepared.output_dir}")
                run_id = prepared.run_id
                if prepare_only:
                    say(f"prepared run {run_id}; train it with: accelerate launch -m trainers.train_cli "
                         f"--db {store.path} --run-id {run_id}")
                    return 0
            elif given:
                raise ValueError(
                    f"{', '.join(flag(k) for k in sorted(given))} cannot change prepared run {run_id}; its settings "
                    "are fixed when it is prepared (start a new run without --run-id)"
                )
            # Refused before the run is touched: its folder comes from the runs folder, not from the row.
            checked_run_paths(store.get_run(run_id).output_dir, runs_roots(store.path))
            processes = RunConfig.from_dict(store.get_run(run_id).config).num_processes
            if processes > 1 and not under_launcher():  # this process starts the ranks and waits for them
                from trainers.run.launcher import launch_ranks

                cancel.uninstall()  # a cancel now goes to rank 0 (trainers.run.launcher)
                return launch_ranks(store, run_id, processes, resume=resume, echo=say)
            outcome = execute_run(store, run_id, resume=resume, cancel=cancel, log=say)
    except RunCancelled:
        say("cancelled before the run was prepared")
        return EXIT_CODES["cancelled"]
    except Exception as exc:
        from store.errors import StoreError
        from trainers.model_source import ModelSourceError
        from trainers.run.errors import RunError

        if isinstance(exc, ValueError | StoreError | RunError | ModelSourceError):
            warn(f"error: {exc}")
            return 1
        raise
    finally:
        cancel.uninstall()
    if outcome.status == "failed":
        warn(f"error: {outcome.message}")
    elif outcome.output_dir:
        say(f"adapter: {outcome.output_dir}")
    return EXIT_CODES.get(outcome.status, 1)


def data_size_note(config: RunConfig, report: SelectionReport) -> str | None:
    """A note when ``--data-size`` asks for more preference pairs than there are (all are used, not silently)."""
    stance = bool(report.dataset) and report.dataset.get("kind") == "stance"
    if config.data_size is None or stance or config.data_size <= report.used:
        return None
    return (f"--data-size {config.data_size} is more than the {report.used} usable pair(s) in {report.source}; "
            f"training uses all {report.used}")


def _default_model_path(default_model: Callable[[], Path] | None) -> str | None:
    if default_model is None:
        return None
    from trainers.model_source import ModelSourceError

    try:
        return str(default_model())
    except Exception as exc:  # the studio's ModelFileError and the like: one clear line, not a traceback
        raise ModelSourceError(f"cannot find the model to train: {exc}") from exc


def make_train_command(
    get_db: Callable[[], Path | None] | None = None,
    default_model: Callable[[], Path] | None = None,
    with_db_option: bool = False,
    escape: Callable[[str], str] | None = None,
    before_prepare: BeforePrepare | None = None,
) -> Callable[..., None]:
    """Build the ``train`` typer command: ``--run-id``, ``--resume`` and one flag per RunConfig field.

    ``get_db`` and ``default_model`` are called when the command runs (the studio passes its settings);
    ``escape`` is applied to every printed line (see ``run_train``).
    """

    def train(**kwargs: Any) -> None:
        """Train a LoRA adapter on your feedback, --method dpo / sft / kto (prepares a run unless --run-id is given)."""
        run_id = kwargs.pop("run_id")
        resume = kwargs.pop("resume")
        prepare_only = kwargs.pop("prepare_only")
        dry_run = kwargs.pop("dry_run")
        db = kwargs.pop("db", None) if with_db_option else (get_db() if get_db else None)
        code = run_train(db, run_id, resume, kwargs, default_model=default_model, prepare_only=prepare_only,
                         dry_run=dry_run, escape=escape, before_prepare=before_prepare)
        raise typer.Exit(code)

    params = [
        inspect.Parameter("run_id", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            int | None, typer.Option("--run-id", help="Train this prepared run (its settings are stored with it).")]),
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option("--resume", help="Continue --run-id from its last checkpoint.")]),
        inspect.Parameter("prepare_only", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option("--prepare-only", help="Record the run and stop (then `accelerate launch -m "
                               "trainers.train_cli --run-id N` trains it on several GPUs).")]),
        inspect.Parameter("dry_run", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
            bool, typer.Option("--dry-run", help="Print what a run would train on (pairs used, dropped per split "
                               "and why, max length, steps; the model's tokenizer alone) and record nothing.")]),
    ]
    if with_db_option:
        params.append(inspect.Parameter("db", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Path | None, typer.Option("--db", help="SQLite file to use (default: user data dir).")]))
    train.__signature__ = inspect.Signature(params + config_parameters())  # type: ignore[attr-defined]
    return train


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command(name="train")(make_train_command(with_db_option=True))


def main() -> None:
    app(prog_name="prefstudio-train")


if __name__ == "__main__":
    sys.exit(main())
