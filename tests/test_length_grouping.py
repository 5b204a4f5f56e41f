"""DPO's and the reward model's batches hold rows of similar length (less padding); where the rows' lengths
cannot be read, or several processes share the data, TRL's own sampler stays."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from datasets import Dataset

from trainers.length_grouping import length_grouped_sampler

ARGS = SimpleNamespace(world_size=1, train_batch_size=2, gradient_accumulation_steps=1)


def pairs_dataset() -> Dataset:
    # 40 pairs in a scrambled order; the longer side (here the chosen, 1..40 tokens) decides a pair's length.
    lengths = [(n, n // 2) for n in ((i * 17) % 40 + 1 for i in range(40))]
    return Dataset.from_list([{"chosen_ids": [1] * c, "rejected_ids": [2] * r} for c, r in lengths])


def padded_tokens(lengths: list[int], batch: int) -> int:
    """What TRL's padding makes of these rows in batches of ``batch``: each row padded to its batch's longest."""
    return sum(batch * max(lengths[i:i + batch]) for i in range(0, len(lengths), batch))


def test_pairs_are_batched_by_their_longer_side() -> None:
    dataset = pairs_dataset()
    torch.manual_seed(0)
    sampler = length_grouped_sampler(ARGS, dataset, ("chosen_ids", "rejected_ids"),
                                     lambda chosen, rejected: max(len(chosen), len(rejected)))
    assert sampler is not None
    order = list(sampler)
    assert sorted(order) == list(range(len(dataset)))  # every pair once
    lengths = [len(dataset[i]["chosen_ids"]) for i in order]
    given = [len(row) for row in dataset["chosen_ids"]]
    # Mega-batches of ten pairs, each sorted by length: within 10 % of a global sort's padding, far below the
    # order the pairs came in.
    assert padded_tokens(lengths, 2) <= 1.1 * padded_tokens(sorted(given), 2)
    assert padded_tokens(lengths, 2) < padded_tokens(given, 2) - 100


def test_trls_sampler_stays_without_the_columns_or_with_several_processes() -> None:
    dataset = pairs_dataset()
    assert length_grouped_sampler(ARGS, dataset, ("prompt_ids", "chosen_ids"), lambda *_: 0) is None
    ranks = SimpleNamespace(world_size=2, train_batch_size=2, gradient_accumulation_steps=1)
    assert length_grouped_sampler(ranks, dataset, ("chosen_ids", "rejected_ids"), lambda *_: 0) is None
