"""Base against tuned, headless: side-by-side answers, blind ordering and tally, and where prompts come from.

The compare screen and ``prefstudio compare`` are thin clients of this module.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store.pairs import PreferencePair
from trainers.prompt_format import ChatTurn
from trainers.prompt_stops import stops_for_prompt

if TYPE_CHECKING:
    from store.records import RunRecord
    from store.studio_store import Store
    from studio.inference.engine import ChatEngine, Generation, SamplingSettings

# The 97.5th percentile of the standard normal: two-sided 95 %.
Z_95 = 1.959963984540054
VOTES = ("a", "b", "tie")  # a = the left answer, b = the right one


class ComparisonError(ValueError):
    """Nothing to compare (no held-out pairs, an unusable prompts file); the message says what to do."""


@dataclass(frozen=True)
class ComparisonPrompt:
    """A prompt to compare on: ``text`` is what the user reads; ``rendered`` is the exact engine prompt.

    Without ``rendered`` the text is rendered as a single user turn under the comparison's system prompt.
    Held-out pairs carry their own rendered prompt (with its conversation), so both models see what the
    judged candidates saw.
    """

    text: str
    rendered: str | None = None


@dataclass(frozen=True)
class ComparisonRow:
    """One prompt answered by the base model and by the tuned one, with the same seed and settings."""

    prompt: str
    base_text: str
    tuned_text: str
    seed: int
    rendered_prompt: str = ""  # the exact text both models were given


def _render(engine: ChatEngine, prompt: str | ComparisonPrompt, system: str, max_tokens: int) -> tuple[str, str]:
    if isinstance(prompt, ComparisonPrompt):
        if prompt.rendered is not None:
            return prompt.text, prompt.rendered
        prompt = prompt.text
    return prompt, engine.fit_prompt(system, [ChatTurn("user", prompt)], max_tokens).text


def side_by_side(
    engine: ChatEngine,
    prompts: Sequence[str | ComparisonPrompt],
    system: str,
    sampling: SamplingSettings,
    seed: int,
    activate: Callable[[str | None], None],
    adapter: str,
    on_answer: Callable[[int, str, Generation], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[ComparisonRow]:
    """Answer every prompt with the base model, then every prompt with ``adapter`` active.

    Row ``i`` uses seed ``seed + i`` for both answers (so rows differ from each other, but base and tuned
    of one row start from the same random state). ``activate(None)`` / ``activate(adapter)`` are called
    once each: all base answers come first so the adapter switches only twice; the tuned adapter is left
    active. ``on_answer(i, "base" | "tuned", generation)`` reports progress; when ``should_stop()`` turns
    true the rows finished so far (both answers) are returned, and the tuned adapter may never have been
    activated. Each answer stops where its prompt's own format ends a reply (``stops_for_prompt``): a stored
    HH prompt at the next ``Human:`` turn, not only at the engine's ``User:``.
    """
    if not prompts:
        raise ComparisonError("no prompts to compare")
    rendered = [_render(engine, p, system, sampling.max_tokens) for p in prompts]
    stops = [stops_for_prompt(engine.prompt_format, text) for _, text in rendered]
    seeds = [(seed + i) % 2**31 for i in range(len(rendered))]
    answers: dict[str, list[str]] = {"base": [], "tuned": []}
    todo = len(rendered)
    for side, name in (("base", None), ("tuned", adapter)):
        if todo == 0 or (should_stop and should_stop()):
            break
        activate(name)
        for i in range(todo):
            if should_stop and should_stop():
                break
            generation = engine.generate(rendered[i][1], sampling, seeds[i], should_stop=should_stop,
                                         stop=stops[i])
            if generation.cancelled:
                break
            answers[side].append(generation.text)
            if on_answer:
                on_answer(i, side, generation)
        todo = len(answers[side])  # after a stop, the tuned side answers only what the base side did
    return [
        ComparisonRow(rendered[i][0], base, tuned, seeds[i], rendered[i][1])
        for i, (base, tuned) in enumerate(zip(answers["base"], answers["tuned"], strict=False))
    ]


def blind_order(n: int, seed: int) -> list[bool]:
    """Per row, whether the tuned answer is shown on the left, from ``seed``.

    Balanced rather than a coin per row: exactly half the rows (one more either way when ``n`` is odd) put
    the tuned answer left, so a voter who leans towards one side adds as many false wins as false losses.
    """
    rng = random.Random(seed)
    left = n // 2 + (rng.random() < 0.5 if n % 2 else 0)
    order = [True] * left + [False] * (n - left)
    rng.shuffle(order)
    return order


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion; ``None`` when ``n`` is 0.

    Chosen over the normal (Wald) interval because vote counts are small and often lopsided: Wald
    collapses to a zero-width interval at 10/10 and leaves [0, 1]; Wilson stays inside and stays honest.
    """
    if n <= 0:
        return None
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class BlindTally:
    """Blind votes counted from the tuned model's side.

    The win rate is wins / (wins + losses): a tie says neither is better, so it neither helps nor hurts
    the tuned model and is reported next to the rate rather than counted as half a win.
    """

    wins: int = 0
    ties: int = 0
    losses: int = 0

    @staticmethod
    def outcome(vote: str, tuned_on_left: bool) -> str:
        """'win', 'tie' or 'loss' for the tuned model, from a vote 'a' (left), 'b' (right) or 'tie'."""
        if vote not in VOTES:
            raise ValueError(f"unknown vote {vote!r}; expected one of {', '.join(VOTES)}")
        if vote == "tie":
            return "tie"
        return "win" if (vote == "a") == tuned_on_left else "loss"

    def add(self, vote: str, tuned_on_left: bool) -> str:
        """Count one vote and return its outcome for the tuned model."""
        result = self.outcome(vote, tuned_on_left)
        if result == "win":
            self.wins += 1
        elif result == "loss":
            self.losses += 1
        else:
            self.ties += 1
        return result

    @classmethod
    def from_votes(cls, votes: Iterable[tuple[str, bool]]) -> BlindTally:
        """A tally of ``(vote, tuned_on_left)`` pairs."""
        tally = cls()
        for vote, tuned_on_left in votes:
            tally.add(vote, tuned_on_left)
        return tally

    @property
    def total(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def decided(self) -> int:
        return self.wins + self.losses

    @property
    def win_rate(self) -> float | None:
        return self.wins / self.decided if self.decided else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """95 % Wilson interval of the win rate; ``None`` before the first decided vote."""
        return wilson_interval(self.wins, self.decided)

    def describe(self) -> str:
        """One line for a status bar or the CLI."""
        line = f"tuned {self.wins} win(s), {self.ties} tie(s), {self.losses} loss(es)"
        if self.win_rate is None or self.interval is None:
            return line + "; no decided votes yet"
        low, high = self.interval
        return line + f"; win rate {self.win_rate:.0%} (95 % CI {low:.0%}–{high:.0%})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "win_rate": self.win_rate,
            "interval_95": list(self.interval) if self.interval else None,
        }


def _prompt_from_json(value: object, where: str) -> str:
    if isinstance(value, dict):
        if "prompt" not in value:
            raise ComparisonError(f"{where}: an object without a \"prompt\" field")
        value = value["prompt"]
    if not isinstance(value, str):
        raise ComparisonError(f"{where}: the prompt must be text, not {type(value).__name__}")
    if not value.strip():
        raise ComparisonError(f"{where}: the prompt is empty")
    return value.strip()


def load_prompts_file(path: Path | str) -> list[str]:
    """The prompts of a ``--prompts`` file.

    Accepted: one prompt per line (blank lines skipped); JSON Lines, each line an object with a
    ``prompt`` field or a JSON string (``.jsonl``, or any file whose first line starts with ``{``); a
    ``.json`` file holding an array of such items. Anything else raises ``ComparisonError`` naming the file
    and, where it applies, the line.
    """
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ComparisonError(f"cannot read prompts file {path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ComparisonError(f"{path} line {line} is not UTF-8 text; save the file as UTF-8") from None
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    if not first:
        raise ComparisonError(f"{path} is empty: put one prompt per line")
    suffix = path.suffix.lower()
    prompts: list[str] = []
    if suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ComparisonError(f"{path} line {exc.lineno} is not valid JSON: {exc.msg}") from None
        if not isinstance(items, list):
            raise ComparisonError(f"{path}: expected a JSON array of prompts")
        prompts = [_prompt_from_json(item, f"{path} item {i}") for i, item in enumerate(items, start=1)]
    elif suffix in (".jsonl", ".ndjson") or first.startswith("{"):
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ComparisonError(f"{path} line {number} is not valid JSON: {exc.msg}") from None
            prompts.append(_prompt_from_json(item, f"{path} line {number}"))
    else:
        prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ComparisonError(f"{path} holds no prompts")
    return prompts


def heldout_pairs(store: Store, run: RunRecord) -> list[PreferencePair]:
    """The run's held-out pairs, in the run's order, as the trainer saw them (read back by
    ``trainers.recorded_pairs.heldout_preference_pairs``); ``ComparisonError`` when it held none out or they
    cannot be read now.

    Runs trained on a ``--dataset`` (a file, or a dataset in the store) read it again; their pairs have
    ``verdict`` "dataset", ``prompt_text`` equal to the rendered prompt and ``session_id``/``judgement_id`` -1.
    """
    from trainers.pair_selection import PairSelectionError
    from trainers.recorded_pairs import heldout_preference_pairs

    if not run.heldout_ids:
        fraction = (run.config or {}).get("heldout_fraction")
        raise ComparisonError(
            f"run {run.id} has no held-out pairs (held-out fraction {fraction}); train with "
            "--heldout-fraction above 0 and enough pairs, or compare on --prompts FILE"
        )
    try:
        return heldout_preference_pairs(store, run)
    except PairSelectionError as exc:
        raise ComparisonError(str(exc)) from exc


def comparison_prompts(pairs: Iterable[PreferencePair]) -> list[ComparisonPrompt]:
    """One comparison prompt per distinct rendered prompt of ``pairs`` (an edit yields several pairs)."""
    seen: set[str] = set()
    prompts: list[ComparisonPrompt] = []
    for pair in pairs:
        if pair.prompt in seen:
            continue
        seen.add(pair.prompt)
        prompts.append(ComparisonPrompt(text=pair.prompt_text, rendered=pair.prompt))
    return prompts
