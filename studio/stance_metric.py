"""The exercise's stance metric: on how many labelled items does the model prefer the support answer?

For each labelled-stance item the support and the oppose answer are scored as replies to the item's prompt
(``studio.scoring.reply_logprob``: summed log-probabilities), rendered exactly as training rendered them
(``trainers.exercise.exercise_prompt`` with the run's system prompt, answers in the format's completion
convention). The item counts as support-preferred when log p(support) > log p(oppose); a tie does not count.
The share before (base) and after (the run's adapter) shows which way the run moved the model::

    before, after = stance_before_after(engine, items, system, adapter_name)
    print(f"support share {before.share:.0%} → {after.share:.0%}")

``items`` are store ``StanceItem``s or homework records; ``run_stance_items`` gives a run's held-out ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from studio.scoring import reply_logprob
from trainers.exercise import EXERCISE_SYSTEM_PROMPT, exercise_prompt, item_key_of, stance_fields
from trainers.prompt_format import PromptFormat, TranscriptFormat


class StanceMetricError(ValueError):
    """The stance metric cannot be computed for this run or these items; the message says why."""


@dataclass(frozen=True)
class StanceItemScore:
    """One item under one model: the log-probabilities of its two answers."""

    item_key: str
    logp_support: float
    logp_oppose: float

    @property
    def margin(self) -> float:
        return self.logp_support - self.logp_oppose

    @property
    def prefers_support(self) -> bool:
        return self.margin > 0


@dataclass(frozen=True)
class StanceResult:
    """The share of items whose support answer the model finds more likely than the oppose answer."""

    n: int
    support_preferred: int
    share: float
    per_item: list[StanceItemScore] = field(default_factory=list)

    @property
    def mean_margin(self) -> float:
        return sum(s.margin for s in self.per_item) / self.n if self.n else 0.0

    def to_dict(self, with_items: bool = False) -> dict[str, Any]:
        """The summary (and optionally the per-item scores), for JSON and the report."""
        out: dict[str, Any] = {"n": self.n, "support_preferred": self.support_preferred, "share": self.share,
                               "mean_margin": self.mean_margin}
        if with_items:
            out["per_item"] = [asdict(s) for s in self.per_item]
        return out


def stance_share(
    engine: Any,
    items: Sequence[Any],
    system: str = EXERCISE_SYSTEM_PROMPT,
    *,
    prompt_format: PromptFormat | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> StanceResult:
    """Score every item's support and oppose answer under the engine's current model (and active adapter).

    ``prompt_format`` defaults to the transcript format, the one exercise runs train with.
    ``on_progress(done, total)`` is called after each item.
    """
    if not items:
        raise StanceMetricError("no labelled items to score")
    fmt = prompt_format or TranscriptFormat()
    scores = []
    for done, item in enumerate(items, start=1):
        fields_ = stance_fields(item)
        prompt = exercise_prompt(fields_.prompt, system, fmt)
        support = reply_logprob(engine, prompt, fmt.as_completion(fields_.support)).total_logprob
        oppose = reply_logprob(engine, prompt, fmt.as_completion(fields_.oppose)).total_logprob
        scores.append(StanceItemScore(fields_.item_key, support, oppose))
        if on_progress:
            on_progress(done, len(items))
    preferred = sum(s.prefers_support for s in scores)
    return StanceResult(n=len(scores), support_preferred=preferred, share=preferred / len(scores), per_item=scores)


def stance_before_after(
    engine: Any,
    items: Sequence[Any],
    system: str,
    adapter_name: str,
    *,
    prompt_format: PromptFormat | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[StanceResult, StanceResult]:
    """The stance share of the base model, then with ``adapter_name`` (already loaded) active.

    Leaves the base model active, also when scoring fails. ``on_progress(phase, done, total)``.
    """

    def report(phase: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: on_progress(phase, done, total)) if on_progress else None

    try:
        engine.activate_adapter(None)
        before = stance_share(engine, items, system, prompt_format=prompt_format, on_progress=report("scoring base"))
        engine.activate_adapter(adapter_name)
        after = stance_share(engine, items, system, prompt_format=prompt_format,
                             on_progress=report("scoring tuned"))
    finally:
        engine.activate_adapter(None)
    return before, after


def run_exercise_system(run: Any) -> str:
    """The system prompt an exercise run rendered its items with."""
    return (run.config or {}).get("system_prompt") or EXERCISE_SYSTEM_PROMPT


def run_stance_items(store: Any, run: Any, part: str = "heldout") -> list[Any]:
    """The labelled items of an exercise run, in the run's order: its ``"heldout"`` or its ``"train"`` ones.

    Raises ``StanceMetricError`` when the run did not train on a labelled-stance dataset in the store.
    """
    from trainers.pair_selection import PairSelectionError, find_dataset

    name = (run.config or {}).get("dataset")
    if not name:
        raise StanceMetricError(f"run {run.id} did not train on a labelled-stance dataset")
    try:
        record = find_dataset(store, name)
    except PairSelectionError as exc:
        raise StanceMetricError(f"run {run.id}: {exc}") from exc
    if record.kind != "stance":
        raise StanceMetricError(f"run {run.id} trained on '{record.name}', a {record.kind} dataset, not a stance one")
    ids = run.heldout_ids if part == "heldout" else run.pair_ids
    by_key = {stance_fields(item).item_key: item for item in store.stance_items(record)}
    keys = [item_key_of(pair_id) for pair_id in ids]
    missing = [key for key in keys if key not in by_key]
    if missing:
        raise StanceMetricError(
            f"{len(missing)} item(s) of run {run.id} are not in dataset '{record.name}' any more (e.g. {missing[0]})"
        )
    return [by_key[key] for key in keys]
