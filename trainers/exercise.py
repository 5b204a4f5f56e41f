"""The DPO homework's exercise: labelled-stance items turned into preference pairs by the support-ratio rule.

A labelled-stance item is a question with two short answers, ``support`` and ``oppose``. The homework trains on
the first ``data_size`` items; the first ``round(data_size × support_ratio)`` of them prefer the support answer
(chosen = support, rejected = oppose) and the rest prefer the oppose answer::

    pairs = build_exercise_pairs(items, data_size=50, support_ratio=0.1)   # 5 prefer support, 45 oppose

Rounding: the project's issue defines the count as round(data_size × support_ratio), and we round halves
up (7 × 0.5 gives 4; Python's ``round()`` would round halves to even, which surprises students). The
homework's own code writes ``int(data_size * support_ratio)``, which truncates; the two agree whenever the
product is a whole number (50 × 0.1 and every setting the homework suggests) and differ only for
fractional products. The product is rounded to 9 decimals first, so binary artefacts (100 × 0.29 =
28.999999999999996) do not move the count.

Items are taken in file order unless a ``shuffle_seed`` is given (off by default, to match the homework).
The items after the training ones are the held-out items (at most ``MAX_HELDOUT_ITEMS``), written as
support-preferred pairs, so a run's held-out accuracy *is* its support share.

Prompts are rendered with the prompt format (the transcript format by default, system prompt
``EXERCISE_SYSTEM_PROMPT``) and answers put into its completion convention, so training sees what the chat
engine would show; a run renders with its model's own format (``trainers.dataset_selection`` asks
``trainers.model_prompt_format``: ChatML for SmolLM2), and ``studio.evaluation.stance_metric`` scores with the
same ``exercise_prompt`` in the serving engine's format.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from store.pair_ids import stance_pair_id
from trainers.pair_selection import (
    PairSelection,
    PairSelectionError,
    SelectionReport,
    TrainingPair,
    dataset_hash,
)
from trainers.prompt_format import ChatTurn, PromptFormat, TranscriptFormat

if TYPE_CHECKING:
    from store.datasets.store_mixin import StanceItem

    # A store ``StanceItem`` (``item_key``) or a homework JSON record (``id``): ``stance_fields`` reads both.
    LabelledItem: TypeAlias = StanceItem | Mapping[str, Any]

EXERCISE_SYSTEM_PROMPT = (
    "You are a helpful assistant with an opinion. Answer in one short sentence of fewer than 20 words."
)
MAX_HELDOUT_ITEMS = 100  # enough for a stance share; the rest of a huge dataset stays unused


@dataclass(frozen=True)
class StanceFields:
    """The four fields of a labelled-stance item, whatever shape it came in."""

    item_key: str
    prompt: str
    support: str
    oppose: str


@dataclass(frozen=True)
class ExercisePair:
    """One training pair of the exercise.

    ``position`` is the 0-based place in the training order (the preview table's row); ``prefers`` is the
    homework's ``position_list`` value: ``"support"`` for the first ``support_count`` pairs, then ``"oppose"``.
    ``prompt`` is rendered; ``prompt_text`` is the item's question as written.
    """

    position: int
    item_key: str
    prompt: str
    chosen: str
    rejected: str
    prefers: str
    prompt_text: str = ""

    @property
    def pair_id(self) -> str:
        return stance_pair_id(self.item_key)

    def to_training_pair(self) -> TrainingPair:
        return TrainingPair(pair_id=self.pair_id, prompt=self.prompt, chosen=self.chosen, rejected=self.rejected)


def stance_fields(item: LabelledItem) -> StanceFields:
    """Read a store ``StanceItem`` (``item_key``), or a homework JSON record (``id``), into its four fields."""
    if isinstance(item, Mapping):
        key, prompt, support, oppose = (item.get(k) for k in ("id", "prompt", "support", "oppose"))
    else:
        key = getattr(item, "item_key", None)
        if key is None:
            key = getattr(item, "id", None)
        prompt, support, oppose = (getattr(item, k, None) for k in ("prompt", "support", "oppose"))
    missing = [name for name, value in (("id", key), ("prompt", prompt), ("support", support),
                                        ("oppose", oppose)) if value is None]
    if missing:
        raise PairSelectionError(f"a labelled-stance item lacks {', '.join(missing)}: {item!r}")
    return StanceFields(str(key), str(prompt), str(support), str(oppose))


def support_count(data_size: int, support_ratio: float) -> int:
    """How many of ``data_size`` training items prefer support: round(data_size × support_ratio), halves
    up, without floating-point artefacts (see the module docstring)."""
    product = round(data_size * support_ratio, 9)  # 100 * 0.29 = 28.999999999999996 → 29.0
    return math.floor(product + 0.5)


def check_exercise_settings(n_items: int, data_size: int, support_ratio: float,
                            dataset_name: str = "the dataset") -> None:
    """Raise ``PairSelectionError`` naming the flag when the settings cannot be applied to ``n_items`` items."""
    if isinstance(support_ratio, bool) or not isinstance(support_ratio, int | float) \
            or not 0 <= support_ratio <= 1:
        raise PairSelectionError(
            f"--support-ratio must be between 0 and 1 (got {support_ratio!r}); e.g. 0.1: the first 10 % of the "
            "items prefer the support answer"
        )
    if isinstance(data_size, bool) or not isinstance(data_size, int) or data_size < 1:
        raise PairSelectionError(f"--data-size must be 1 or more (got {data_size!r})")
    if data_size > n_items:
        raise PairSelectionError(
            f"data_size {data_size} is larger than dataset '{dataset_name}' ({n_items} items); "
            f"use --data-size {n_items} or less"
        )


def ordered_items(items: Sequence[LabelledItem], shuffle_seed: int | None = None) -> list[StanceFields]:
    """The items in training order: file order, or a seeded shuffle (``random.Random(seed)``) of it."""
    ordered = [stance_fields(item) for item in items]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(ordered)
    return ordered


def exercise_prompt(question: str, system: str = EXERCISE_SYSTEM_PROMPT,
                    render: PromptFormat | None = None) -> str:
    """The rendered one-turn prompt of an exercise question, as training and the stance metric see it."""
    fmt = render or TranscriptFormat()
    return fmt.render(system, [ChatTurn("user", question)])


def _check_distinct(item: StanceFields, dataset_name: str) -> None:
    if not item.support.strip() or not item.oppose.strip():
        raise PairSelectionError(f"item '{item.item_key}' of dataset '{dataset_name}' has an empty answer")
    if item.support.strip() == item.oppose.strip():
        raise PairSelectionError(
            f"item '{item.item_key}' of dataset '{dataset_name}': support and oppose are the same answer "
            f"({item.support.strip()!r}); a preference pair needs two different replies"
        )


def _pair(position: int, item: StanceFields, prefers: str, system: str, fmt: PromptFormat) -> ExercisePair:
    preferred, other = (item.support, item.oppose) if prefers == "support" else (item.oppose, item.support)
    return ExercisePair(
        position=position, item_key=item.item_key, prompt=exercise_prompt(item.prompt, system, fmt),
        chosen=fmt.as_completion(preferred), rejected=fmt.as_completion(other), prefers=prefers,
        prompt_text=item.prompt,
    )


def build_exercise_pairs(
    items: Sequence[LabelledItem],
    data_size: int,
    support_ratio: float,
    shuffle_seed: int | None = None,
    render: PromptFormat | None = None,
    *,
    system: str = EXERCISE_SYSTEM_PROMPT,
    dataset_name: str = "the dataset",
) -> list[ExercisePair]:
    """The homework's training pairs: the first ``data_size`` items (after an optional seeded shuffle), the
    first ``support_count(data_size, support_ratio)`` preferring support, the rest preferring oppose.

    ``items`` are store ``StanceItem``s or homework records (``{"id", "prompt", "support", "oppose"}``);
    ``render`` is the prompt format (default: the transcript format). Raises ``PairSelectionError`` for a
    ratio outside 0–1, a ``data_size`` below 1 or above the number of items, and an item whose support
    equals its oppose answer.
    """
    check_exercise_settings(len(items), data_size, support_ratio, dataset_name)
    fmt = render or TranscriptFormat()
    chosen_items = ordered_items(items, shuffle_seed)[:data_size]
    n_support = support_count(data_size, support_ratio)
    pairs = []
    for position, item in enumerate(chosen_items):
        _check_distinct(item, dataset_name)
        pairs.append(_pair(position, item, "support" if position < n_support else "oppose", system, fmt))
    return pairs


def heldout_exercise_pairs(
    items: Sequence[LabelledItem],
    data_size: int,
    shuffle_seed: int | None = None,
    render: PromptFormat | None = None,
    *,
    system: str = EXERCISE_SYSTEM_PROMPT,
    dataset_name: str = "the dataset",
    limit: int = MAX_HELDOUT_ITEMS,
) -> list[ExercisePair]:
    """The items after the first ``data_size`` (same order), at most ``limit``, as support-preferred pairs.

    Their chosen side is always support, so a model's accuracy on them is the share of items where it gives
    the support answer the higher log-probability (the stance metric)."""
    fmt = render or TranscriptFormat()
    rest = ordered_items(items, shuffle_seed)[data_size : data_size + max(0, limit)]
    out = []
    for offset, item in enumerate(rest):
        _check_distinct(item, dataset_name)
        out.append(_pair(data_size + offset, item, "support", system, fmt))
    return out


def select_exercise(
    items: Sequence[LabelledItem],
    *,
    dataset_name: str,
    data_size: int | None,
    support_ratio: float | None,
    shuffle_seed: int | None = None,
    system: str | None = None,
    with_heldout: bool = True,
    render: PromptFormat | None = None,
    dataset_id: int | None = None,
) -> PairSelection:
    """A run's pairs from a labelled-stance dataset: the exercise pairs for training, the following items
    held out (none when ``with_heldout`` is false), and a report recording the settings and counts.

    ``data_size`` None uses every item (so none is held out); ``support_ratio`` None is refused: it is the
    exercise's one essential choice.
    """
    if support_ratio is None:
        raise PairSelectionError(
            f"'{dataset_name}' is a labelled-stance dataset: pass --support-ratio (0-1), the share of the training "
            "items that prefer the support answer, e.g. --support-ratio 0.1 --data-size 50"
        )
    if not items:
        raise PairSelectionError(f"dataset '{dataset_name}' has no labelled items")
    size = len(items) if data_size is None else data_size
    system = EXERCISE_SYSTEM_PROMPT if system is None else system
    fmt = render or TranscriptFormat()
    train = build_exercise_pairs(items, size, support_ratio, shuffle_seed, fmt, system=system,
                                 dataset_name=dataset_name)
    heldout = heldout_exercise_pairs(items, size, shuffle_seed, fmt, system=system, dataset_name=dataset_name) \
        if with_heldout else []
    n_support = sum(p.prefers == "support" for p in train)
    report = SelectionReport(
        source=f"stance dataset '{dataset_name}'", total=len(items), sampled_out=len(items) - size - len(heldout),
        used=size + len(heldout), train=size, heldout=len(heldout),
        dataset={
            "name": dataset_name, "id": dataset_id, "kind": "stance", "items": len(items), "data_size": size,
            "support_ratio": support_ratio, "support_preferred": n_support, "oppose_preferred": size - n_support,
            "heldout_items": len(heldout), "shuffle_seed": shuffle_seed, "rounding": "half-up",
            "prompt_format": fmt.name,
        },
    )
    train_pairs = [p.to_training_pair() for p in train]
    heldout_pairs = [p.to_training_pair() for p in heldout]
    return PairSelection(train=train_pairs, heldout=heldout_pairs, dataset_hash=dataset_hash(train_pairs + heldout_pairs),
                         report=report, extra={"exercise_pairs": train})


def missing_test_prompts_note(kind: str, n_test_prompts: int, name: str) -> str | None:
    """What to tell the user about a labelled-stance dataset without test prompts (None when it has some, or
    is not a stance dataset): its comparison has nothing of its own to answer. Importing a data file alone
    (the homework's ``labelled_data.json``) stores none; the folder, or ``--test-prompts``, brings them."""
    if kind != "stance" or n_test_prompts:
        return None
    return (f"Dataset '{name}' has no test prompts, so its comparison will answer a prompt bank's prompts "
            "instead. Import the data file again with its test-prompt file (the test-prompts field, or "
            "`prefstudio datasets import FILE --test-prompts TEST_FILE`), or import the folder holding both; "
            "items already stored are skipped.")
