"""The pairs a run names by ``--dataset``: a JSONL file, a preference dataset, or a labelled-stance one.

The one place that picks between the preference-pair selection (trainers/pair_selection.py) and the
exercise rule (trainers/exercise.py), so neither of those imports the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainers.exercise import select_exercise
from trainers.model_prompt_format import prompt_format_for_model
from trainers.pair_selection import (
    PairSelection,
    PairSelectionError,
    TrainingPair,
    dataset_file,
    find_dataset,
    flagged_pair_ids,
    from_store_pairs,
    read_dataset_file,
    select_pairs,
    store_dataset_pairs,
)

if TYPE_CHECKING:
    from store.studio_store import Store
    from trainers.run_config import RunConfig


def _check_stance_only(config: RunConfig, what: str) -> None:
    given = [flag for flag, value in (("--support-ratio", config.support_ratio),
                                      ("--shuffle-seed", config.shuffle_seed),
                                      ("--system-prompt", config.system_prompt)) if value is not None]
    if given:  # refused, not ignored: a student who set a ratio expects it to matter
        raise PairSelectionError(
            f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to a labelled-stance dataset "
            f"(--dataset NAME); {what}"
        )


def select_dataset(store: Store, config: RunConfig) -> PairSelection:
    """The pairs of ``config.dataset``: a JSONL file, or a named store dataset.

    A labelled-stance dataset gives the exercise's pairs (``trainers.exercise.select_exercise``: the first
    ``data_size`` items by the support-ratio rule, the following items held out, ``heldout_fraction`` 0 holding
    none out); a preference dataset gives its pairs, sampled and split like the store's.
    """
    path = dataset_file(config.dataset)
    if path is not None:
        _check_stance_only(config, f"{path} is a file of preference rows")
        pairs = read_dataset_file(path)
        return select_pairs(pairs, seed=config.seed, heldout_fraction=config.heldout_fraction,
                            data_size=config.data_size, source=str(path), flagged=_flagged(store, config, pairs))
    record = find_dataset(store, config.dataset)
    info = {"name": record.name, "id": record.id, "kind": record.kind}
    if record.kind == "stance":
        _check_not_flagged(config, record.name)
        # The items' prompts are rendered as the chat engine renders the trained model's (ChatML for SmolLM2).
        return select_exercise(
            store.stance_items(record), dataset_name=record.name, dataset_id=record.id, data_size=config.data_size,
            support_ratio=config.support_ratio, shuffle_seed=config.shuffle_seed, system=config.system_prompt,
            with_heldout=config.heldout_fraction > 0, render=prompt_format_for_model(config.train_model),
        )
    _check_stance_only(config, f"'{record.name}' is a {record.kind} dataset")
    pairs = store_dataset_pairs(store, record)
    selection = select_pairs(pairs, seed=config.seed, heldout_fraction=config.heldout_fraction,
                             data_size=config.data_size, source=f"{record.kind} dataset '{record.name}'",
                             flagged=_flagged(store, config, pairs))
    selection.report.dataset = info
    return selection


def _flagged(store: Store, config: RunConfig, pairs: list[TrainingPair]) -> set[str]:
    return flagged_pair_ids(store, pairs) if config.drop_flagged else set()


def _check_not_flagged(config: RunConfig, name: str) -> None:
    if config.drop_flagged:  # refused, not ignored: the exercise's items are the homework's, never dropped
        raise PairSelectionError(f"--drop-flagged applies to preference pairs; '{name}' is a labelled-stance "
                                 "dataset (the exercise's items are used as its rule picks them)")


def pairs_to_check(store: Store, config: RunConfig) -> list[TrainingPair]:
    """Every pair a run of ``config`` may train on, before selection: the studio checks their chosen replies with
    its safety checkers before it prepares a run with ``--drop-flagged``."""
    if config.dataset:
        record = None if dataset_file(config.dataset) is not None else find_dataset(store, config.dataset)
        if record is not None and record.kind == "stance":
            _check_not_flagged(config, record.name)
        return dataset_pairs(store, config)
    return from_store_pairs(store.pairs(session_id=config.session_id))


def dataset_pairs(store: Store, config: RunConfig) -> list[TrainingPair]:
    """Every pair a run on ``config.dataset`` may name (its training and held-out pairs among them)."""
    path = dataset_file(config.dataset)
    if path is not None:
        return read_dataset_file(path)
    record = find_dataset(store, config.dataset)
    if record.kind == "stance":
        selection = select_dataset(store, config)
        return selection.train + selection.heldout
    return store_dataset_pairs(store, record)
