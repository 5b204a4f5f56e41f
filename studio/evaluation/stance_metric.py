"""The exercise's stance metric: on how many labelled items does the model prefer the support answer?

For each labelled-stance item the support and the oppose answer are scored as replies to the item's prompt
(``studio.inference.scoring.reply_logprob``: summed log-probabilities), rendered exactly as training rendered them
(``trainers.exercise.exercise_prompt`` with the run's system prompt, answers in the format's completion
convention). The item counts as support-preferred when log p(support) > log p(oppose); a tie does not count.
The share before (base) and after (the run's adapter) shows which way the run moved the model::

    before, after = stance_before_after(engine, items, system, adapter_name)
    print(f"support share {before.share:.0%} → {after.share:.0%}")

``items`` are store ``StanceItem``s or homework records; ``run_stance_items`` gives a run's held-out ones.

A run of the homework's own setting (data size 50 of 50 items) holds nothing out, so ``run_stance_metrics``
also measures the training items, clearly labelled as seen in training: on them a share moving toward the
run's support ratio shows the run learned what it was shown, not that it generalises. ``describe_stance``
gives the lines the CLI, the compare screen, the exercise screen and the report print.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from studio.inference.scoring import reply_logprob
from trainers.exercise import (
    EXERCISE_SYSTEM_PROMPT,
    exercise_prompt,
    stance_fields,
    support_count,
)
from trainers.prompt_format import PromptFormat

if TYPE_CHECKING:
    from store.datasets.store_mixin import StanceItem
    from store.records import RunRecord
    from store.studio_store import Store
    from studio.inference.engine import ChatEngine
    from trainers.exercise import LabelledItem


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
    engine: ChatEngine,
    items: Sequence[LabelledItem],
    system: str = EXERCISE_SYSTEM_PROMPT,
    *,
    prompt_format: PromptFormat | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> StanceResult:
    """Score every item's support and oppose answer under the engine's current model (and active adapter).

    ``prompt_format`` defaults to the engine's own (its model's chat template, or the transcript format), the
    one an exercise run on that model trains with (``trainers.model_prompt_format``).
    ``on_progress(done, total)`` is called after each item.
    """
    if not items:
        raise StanceMetricError("no labelled items to score")
    fmt = prompt_format or engine.prompt_format
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
    engine: ChatEngine,
    items: Sequence[LabelledItem],
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


def run_exercise_system(run: RunRecord) -> str:
    """The system prompt an exercise run rendered its items with."""
    return (run.config or {}).get("system_prompt") or EXERCISE_SYSTEM_PROMPT


def run_stance_items(store: Store, run: RunRecord, part: str = "heldout") -> list[StanceItem]:
    """The labelled items of an exercise run, in the run's order: its ``"heldout"`` or its ``"train"`` ones
    (read back by ``trainers.recorded_pairs``). Raises ``StanceMetricError`` when the run did not train on a
    labelled-stance dataset in the store, or names items it no longer holds.
    """
    from trainers.pair_selection import PairSelectionError
    from trainers.recorded_pairs import run_stance_items as recorded_stance_items

    try:
        return recorded_stance_items(store, run, part)
    except PairSelectionError as exc:
        raise StanceMetricError(str(exc)) from exc


# --- a run's stance metrics, held-out and training items ---

MAX_TRAIN_STANCE_ITEMS = 50
"""Training items scored at most (the first ones, in training order): the homework's whole data size, and
about 25 s of scoring on two cores; a 1000-item run would otherwise add minutes to every comparison."""

STANCE_PARTS = {"heldout": "held-out items", "train": "training items (seen in training)"}
"""The stance dict's parts and how every display names them."""


def run_stance_metrics(
    engine: ChatEngine,
    store: Store,
    run: RunRecord,
    system: str,
    adapter_name: str,
    *,
    prompt_format: PromptFormat | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """The stance before and after on the run's held-out items (when it has any) and on its training items.

    Returns ``{"heldout": {"before", "after"}, "train": {"before", "after", "total", "trained_support"}}``
    (``heldout`` absent when nothing was held out); ``train`` covers the first ``MAX_TRAIN_STANCE_ITEMS``
    training items of ``total``, of which ``trained_support`` were trained to prefer support.
    ``on_progress(phase, done, total)``. Raises ``StanceMetricError`` when the run's items cannot be found.
    """
    out: dict[str, Any] = {}
    heldout = run_stance_items(store, run, "heldout")
    trained = run_stance_items(store, run, "train")
    parts = (("heldout", heldout), ("train", trained[:MAX_TRAIN_STANCE_ITEMS]))
    for part, items in parts:
        if not items:
            continue

        def progress(phase: str, done: int, total: int, part: str = part) -> None:
            if on_progress:
                on_progress(f"stance on {STANCE_PARTS[part].split(' (')[0]}: {phase}", done, total)

        before, after = stance_before_after(engine, items, system, adapter_name, prompt_format=prompt_format,
                                            on_progress=progress)
        out[part] = {"before": before.to_dict(), "after": after.to_dict()}
    if "train" in out:
        ratio = (run.config or {}).get("support_ratio")
        n_support = support_count(len(trained), ratio) if ratio is not None else None
        # The first support_count items of the training order were trained toward support (the rule).
        shown = min(len(trained), MAX_TRAIN_STANCE_ITEMS)
        out["train"].update(total=len(trained),
                            trained_support=None if n_support is None else min(n_support, shown))
    return out


def stance_parts(stance: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{"heldout": ..., "train": ...}`` of a stored stance dict; an older one ({"before", "after"}, the
    held-out items only) reads as its held-out part."""
    if not stance:
        return {}
    if "before" in stance and "after" in stance:
        return {"heldout": stance}
    return {part: stance[part] for part in STANCE_PARTS if stance.get(part)}


def describe_stance(stance: dict[str, Any] | None) -> list[str]:
    """One line per measured part, e.g. "Stance on 10 held-out items (support answer more likely than
    oppose): base 8/10 (80%) → tuned 3/10 (30%)"; a note when nothing was held out."""
    parts = stance_parts(stance)
    lines = []
    for part, label in STANCE_PARTS.items():
        if part not in parts:
            continue
        b, a = parts[part]["before"], parts[part]["after"]
        extra = ""
        if part == "train":
            total, trained_support = parts[part].get("total", b["n"]), parts[part].get("trained_support")
            scope = f"the first {b['n']} of {total} " if total > b["n"] else f"{b['n']} "
            label_text = f"{scope}{label}"
            if trained_support is not None:
                extra = f"; {trained_support} of them trained toward support"
        else:
            label_text = f"{b['n']} {label}"
        lines.append(f"Stance on {label_text} (support answer more likely than oppose{extra}): "
                     f"base {b['support_preferred']}/{b['n']} ({b['share']:.0%}) → tuned "
                     f"{a['support_preferred']}/{a['n']} ({a['share']:.0%})")
    if parts and "heldout" not in parts:
        lines.append("No items were held out (data size is the whole dataset): the training items are the only "
                     "measure, and they show what the run learned, not how it generalises.")
    return lines
