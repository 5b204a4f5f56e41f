"""``prefstudio safety check FILE|--run N``: replies through the configured safety checkers, headless.

FILE is JSON Lines of replies (``studio/safety/reply_file.py`` lists the shapes: prompt or messages with a reply,
TRL prompt-completion or preference rows); ``--run N`` checks the base and tuned answers the run's comparison
stored (``prefstudio compare --run N`` makes them). The checkers are the settings' (``safety = [...]`` in the
config, ``--safety`` before the command); a checker that cannot load is named and the others run. Verdicts are
stored, so checking the same replies again reads them back instead of running the checkers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from store.studio_store import Store
from studio.cli.context import settings
from studio.cli.errors import fail, user_errors
from studio.cli.terminal_text import json_visible, visible
from studio.safety.reply_file import ReplyFileError, ReplyToCheck, read_reply_file
from studio.safety.tally import SafetyTally
from trainers.prompt_format import ChatTurn

safety_app = typer.Typer(help="Safety checks on replies, headless (the checkers: --safety or the config's "
                         "`safety` list).", no_args_is_help=True)

MAX_FLAGGED_SHOWN = 20


def comparison_replies(store: Store, run_id: int) -> list[ReplyToCheck]:
    """The base and tuned answers of a run's stored comparison, each after its prompt as the user's turn (the
    conversation the comparison's own safety metrics check, so their stored verdicts are shared)."""
    from studio.evaluation.compare_session import stored_comparison

    store.get_run(run_id)  # a missing run is named as such
    result = stored_comparison(store, run_id)
    if result is None or not result.rows:
        raise ValueError(f"run {run_id} has no stored comparison answers; make them with "
                         f"`prefstudio compare --run {run_id}`")
    replies = []
    for number, row in enumerate(result.rows, start=1):
        conversation = (ChatTurn("user", row.prompt),)
        replies += [ReplyToCheck(f"prompt {number}", "base", conversation, row.base_text),
                    ReplyToCheck(f"prompt {number}", "tuned", conversation, row.tuned_text)]
    return replies


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def tally_lines(tally: SafetyTally) -> list[str]:
    """The table: one row per checker (and label), then the flagged replies."""
    rows = [("checker", "which", "checked", "flagged", "rate", "95 % interval (Wilson)")]
    for counts in tally.tallies:
        interval = counts.interval
        rows.append((counts.checker, counts.label, str(counts.checked), str(counts.flagged), _percent(counts.rate),
                     "–" if interval is None else f"{_percent(interval[0])} – {_percent(interval[1])}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    if tally.flagged:
        lines.append("")
        lines.append("flagged:")
        for flagged in tally.flagged[:MAX_FLAGGED_SHOWN]:
            what = ", ".join(flagged.categories) or "unsafe"
            score = "" if flagged.score is None else f" (score {flagged.score:.2f})"
            lines.append(f"  {flagged.where} {flagged.label}: {flagged.checker}: {what}{score}")
        if len(tally.flagged) > MAX_FLAGGED_SHOWN:
            lines.append(f"  … and {len(tally.flagged) - MAX_FLAGGED_SHOWN} more (--json lists them all)")
    lines.append("")
    lines.append(f"{tally.computed} check(s) run now, {tally.cached} read back from the store")
    return lines


@safety_app.command("check")
def check(
    file: Annotated[Path | None, typer.Argument(help="JSON Lines of replies: {prompt or messages, reply}, TRL "
                                                "prompt-completion or preference rows.", show_default=False)] = None,
    run: Annotated[int | None, typer.Option("--run", help="Check the base and tuned answers of this run's "
                                            "stored comparison instead.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (every flagged reply included).")] = False,
) -> None:
    """Check replies with the configured safety checkers: flagged count and rate per checker."""
    from studio.safety.guard import GuardChecker
    from studio.safety.registry import load_checkers
    from studio.safety.tally import check_replies

    if (file is None) == (run is None):
        raise fail("give a JSON Lines FILE of replies or --run N (one of the two)")
    specs = settings().safety
    if not specs:
        raise fail("no safety checkers are configured (--safety none); name one with --safety, e.g. "
                   "--safety profanity")
    with user_errors(file, reading=True, db=settings().db):
        try:
            replies = read_reply_file(file.expanduser()) if file is not None else None
        except ReplyFileError as exc:
            raise fail(str(exc)) from None
        loaded = load_checkers(specs, threads=settings().threads)
        for problem in loaded.problems:
            typer.echo(f"warning: {visible(problem)}", err=True)
        if not loaded.checkers:
            raise fail("none of the configured safety checkers could load (see the warnings above)")
        with Store.open(settings().db) as store:
            if replies is None:
                replies = comparison_replies(store, run)  # type: ignore[arg-type]
            source = str(file) if file is not None else f"run {run}'s comparison"
            tally = check_replies(store, loaded.checkers, replies, source)
    speeds = {checker.name: checker.tokens_per_s for checker in loaded.checkers
              if isinstance(checker, GuardChecker) and checker.tokens_per_s}
    if as_json:
        data = tally.to_dict() | {"warnings": list(loaded.problems), "guard_tokens_per_s": speeds}
        typer.echo(json_visible(json.dumps(data, ensure_ascii=False, indent=2)))
        return
    for problem in tally.problems:
        typer.echo(f"warning: {visible(problem)}", err=True)
    typer.echo(visible(f"{len(replies)} repl{'y' if len(replies) == 1 else 'ies'} from {source}"))
    for line in tally_lines(tally):
        typer.echo(visible(line))
    for name, speed in speeds.items():
        typer.echo(visible(f"{name}: {speed:.0f} tokens/s (its prompt and answer, over the checks run now)"))
