"""Batches of examples of similar length (less padding), for the trainers whose rows TRL pads to the batch's
longest: ``transformers``' ``LengthGroupedSampler`` (random mega-batches, sorted by length within each)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.utils.data import Sampler
    from transformers import TrainingArguments


def length_grouped_sampler(args: TrainingArguments, dataset: Any, columns: Sequence[str],
                           length: Callable[..., int]) -> Sampler | None:
    """A sampler grouping rows by ``length(*row[columns])``, or None where TRL's own must stay: several
    processes (each rank's share is the distributed sampler's), or a dataset without those columns."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    names = set(getattr(dataset, "column_names", None) or [])
    if args.world_size > 1 or not set(columns) <= names:
        return None
    lengths = [length(*values) for values in zip(*(dataset[c] for c in columns), strict=True)]
    return LengthGroupedSampler(args.train_batch_size * args.gradient_accumulation_steps, lengths=lengths)
