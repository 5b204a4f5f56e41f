"""``--drop-flagged``: the chosen replies of a run's pairs checked with the studio's safety checkers before the run
is prepared, so the trainer (which reads the store but never imports the studio) can drop the flagged ones.

Each chosen reply is checked after its pair's prompt as one user turn (``store.safety_checks.prompt_reply_hash``,
the key the trainer looks up in ``trainers.pair_selection.flagged_pair_ids``): the text the pair trains on, the
rendered prompt included, whether the pair came from the chat, a dataset or a file. Verdicts are cached like every
other check, so a second run on the same pairs checks nothing again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from store.studio_store import Store
from studio.safety.cached_checks import check_with_cache
from studio.safety.checker import SafetyChecker
from studio.safety.specs import CheckerSpec
from trainers.dataset_selection import pairs_to_check
from trainers.prompt_format import ChatTurn
from trainers.run_config import RunConfig


@dataclass(frozen=True)
class ChosenCheck:
    """What checking a run's chosen replies found."""

    checkers: tuple[str, ...]
    replies: int
    flagged: int
    computed: int  # checks run now; the rest were read back from the store
    problems: tuple[str, ...] = ()

    def describe(self) -> str:
        return (f"safety: the chosen replies of {self.replies} pair(s) checked with {', '.join(self.checkers)} "
                f"({self.computed} check(s) run now, the rest read back from the store): {self.flagged} pair(s) with "
                "a flagged chosen reply, dropped from the run (--drop-flagged)")


def check_chosen_replies(store: Store, config: RunConfig, checkers: Sequence[SafetyChecker]) -> ChosenCheck:
    """Check the chosen reply of every pair ``config`` may train on; the verdicts are stored for the trainer."""
    flagged_keys: set[tuple[str, str]] = set()
    computed = 0
    problems: list[str] = []
    pairs = pairs_to_check(store, config)
    for pair in pairs:
        results = check_with_cache(store, checkers, [ChatTurn("user", pair.prompt)], pair.chosen)
        for result in results:
            computed += not result.cached and result.verdict is not None
            if result.error is not None:
                problems.append(f"{result.checker}: pair {pair.pair_id}: {result.error}")
            elif result.flagged:
                flagged_keys.add((pair.prompt, pair.chosen))
    flagged = sum(1 for pair in pairs if (pair.prompt, pair.chosen) in flagged_keys)
    return ChosenCheck(tuple(c.name for c in checkers), len(pairs), flagged, computed, tuple(problems))


def check_before_prepare(specs: Sequence[CheckerSpec], threads: int | None = None) -> Callable[..., None]:
    """The ``prefstudio train`` hook: with ``--drop-flagged``, load the configured checkers and check the chosen
    replies, printing what was found; a checker that cannot load is named, and with none at all the run is
    refused rather than started unfiltered."""

    def before_prepare(store: Store, config: RunConfig, say: Callable[[str], None]) -> None:
        if not config.drop_flagged:
            return
        from studio.safety.registry import load_checkers

        loaded = load_checkers(specs, threads=threads)
        for problem in loaded.problems:
            say(f"warning: {problem}")
        if not loaded.checkers:
            raise ValueError("--drop-flagged needs a safety checker, and none is configured or none could load "
                             "(--safety profanity, or `safety = [...]` in the config)")
        found = check_chosen_replies(store, config, loaded.checkers)
        for problem in found.problems[:5]:
            say(f"warning: {problem}")
        say(found.describe())

    return before_prepare
