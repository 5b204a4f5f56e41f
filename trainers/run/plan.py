"""The counts of a run, worked out once before it starts: which pairs fit, at what length, in how many steps.

A run's pairs are selected and split first (``trainers.pair_selection``), then each split is measured with
the model's tokenizer alone (no model weights needed): a pair whose prompt leaves no room for a reply is
dropped, and counted for the split it was in. The held-out split losing every pair only means a run with
nothing held out; only an empty *training* split stops a run.

``--max-length`` left unset ("auto") is chosen from the data: long enough for the longest selected pair
(prompt + the longer reply + EOS), rounded up to a multiple of 64, and never above ``AUTO_MAX_LENGTH_CAP``.
Why this and not cutting the oldest turns of long chats: every candidate is stored with the exact prompt the
engine evaluated (the engine already dropped old turns when its context was full), so training on that
text is training on what the model saw; a shorter, trimmed conversation would be a context the model never
saw. Longer sequences cost time and memory per step, hence the cap.

The resulting ``SelectionReport`` is the one record of the counts: the run header, the trainer's log,
``summary.json`` and ``report.md`` all show its numbers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from trainers.pair_selection import PairSelection, PairSelectionError, TrainingPair, dataset_hash

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from trainers.run_config import RunConfig

# TRL's own default. Measured with Gemma 3 270M, batch 2, pairs up to 1,024 tokens on a shared 2-core CPU:
# peak RSS 5.5 GB (the one-time GGUF conversion included), ~45 s per step against ~3 s at 256 tokens.
# The form and --dry-run show the chosen length and the steps before a run starts, so a shorter
# --max-length is one edit away when time matters more than the longest pairs.
AUTO_MAX_LENGTH_CAP = 1024
LENGTH_STEP = 64


@dataclass(frozen=True)
class PairLength:
    """Token counts of one pair as TRL tokenises it: the prompt (with BOS), each reply with its EOS."""

    prompt: int
    chosen: int
    rejected: int

    @property
    def longest(self) -> int:
        return self.prompt + max(self.chosen, self.rejected)


def measure(pairs: Sequence[TrainingPair], tokenizer: PreTrainedTokenizerBase) -> list[PairLength]:
    """Token counts of ``pairs``: the prompt as TRL tokenises it, each reply by what it adds to the prompt."""
    if not pairs:
        return []
    eos = tokenizer.eos_token or ""
    prompts = [p.prompt for p in pairs]
    prompt_ids = tokenizer(prompts)["input_ids"]
    chosen_ids = tokenizer([p.prompt + p.chosen + eos for p in pairs])["input_ids"]
    rejected_ids = tokenizer([p.prompt + p.rejected + eos for p in pairs])["input_ids"]
    return [PairLength(len(pr), len(ch) - len(pr), len(rj) - len(pr))
            for pr, ch, rj in zip(prompt_ids, chosen_ids, rejected_ids, strict=True)]


class Measured(Protocol):
    """Token counts of one training row (a pair, or an SFT/KTO example): its prompt and prompt + longest reply."""

    @property
    def prompt(self) -> int: ...

    @property
    def longest(self) -> int: ...


def auto_max_length(lengths: Sequence[Measured]) -> int:
    """The default max length for these pairs: the longest, rounded up to 64, at most the cap."""
    longest = max((n.longest for n in lengths), default=LENGTH_STEP)
    return min(AUTO_MAX_LENGTH_CAP, max(LENGTH_STEP, math.ceil(longest / LENGTH_STEP) * LENGTH_STEP))


def seeded_split(count: int, config: RunConfig) -> tuple[list[int], set[int], int]:
    """Indices ``0..count-1`` shuffled with the seed, cut to ``--data-size`` and split by ``--heldout-fraction``
    (at least one kept for training): the used ones in order, the held-out ones, and how many were left out."""
    order = list(range(count))
    random.Random(config.seed).shuffle(order)
    sampled_out = 0
    if config.data_size is not None and config.data_size < len(order):
        sampled_out = len(order) - config.data_size
        order = order[:config.data_size]
    n_heldout = min(int(len(order) * config.heldout_fraction), len(order) - 1)
    return sorted(order), set(order[:max(0, n_heldout)]), sampled_out


def planned_steps(train_pairs: int, config: RunConfig) -> int:
    """Optimizer steps the Trainer will take: ceil(pairs / batch / grad-accum / processes) per epoch × epochs
    (each of ``--num-processes`` ranks takes its own ``--batch-size`` pairs per forward pass)."""
    if config.max_steps:
        return int(config.max_steps)
    per_epoch = max(1, math.ceil(train_pairs / (config.batch_size * config.grad_accum * config.num_processes)))
    return per_epoch * int(config.epochs)


def fits(length: PairLength, max_length: int) -> bool:
    """A pair trains if its prompt leaves room for at least one reply token (TRL drops the others)."""
    return length.prompt < max_length


def plan_selection(selection: PairSelection, tokenizer: PreTrainedTokenizerBase, config: RunConfig) -> PairSelection:
    """The selection with too-long pairs dropped from each split, its report completed (max length, per-split
    drops, truncated replies, steps). Raises ``PairSelectionError`` only when no *training* pair fits."""
    train_lengths = measure(selection.train, tokenizer)
    heldout_lengths = measure(selection.heldout, tokenizer)
    auto = config.max_length is None
    max_length = auto_max_length(train_lengths + heldout_lengths) if auto else int(config.max_length)

    def keep(pairs: list[TrainingPair], lengths: list[PairLength]) -> tuple[list[TrainingPair], int, int]:
        kept = [p for p, n in zip(pairs, lengths, strict=True) if fits(n, max_length)]
        truncated = sum(1 for n in lengths if fits(n, max_length) and n.longest > max_length)
        return kept, len(pairs) - len(kept), truncated

    train, too_long_train, truncated_train = keep(selection.train, train_lengths)
    heldout, too_long_heldout, truncated_heldout = keep(selection.heldout, heldout_lengths)
    if not train:
        shortest = min(n.prompt for n in train_lengths)
        how = "the automatic length stops at its cap" if auto else "raise it"
        raise PairSelectionError(
            f"--max-length {max_length} is shorter than every training prompt (the shortest is {shortest} tokens), "
            f"so none of the {len(selection.train)} training pair(s) fits; {how}: --max-length {shortest + 64} "
            "or more"
        )
    report = selection.report
    report.max_length, report.max_length_auto = max_length, auto
    report.longest_tokens = max(n.longest for n in train_lengths + heldout_lengths)
    report.too_long_train, report.too_long_heldout = too_long_train, too_long_heldout
    report.too_long = too_long_train + too_long_heldout
    report.truncated = truncated_train + truncated_heldout
    report.train, report.heldout = len(train), len(heldout)
    report.steps = planned_steps(len(train), config)
    report.steps_per_epoch = None if config.max_steps else report.steps // int(config.epochs)
    return PairSelection(train=train, heldout=heldout, dataset_hash=dataset_hash(train + heldout), report=report,
                         extra=selection.extra)
