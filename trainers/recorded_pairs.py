"""A run's recorded pair ids, read back: the one place that turns them into pairs or stance items.

A run records the ids of its training and held-out pairs (``store/pair_ids.py`` names their kinds). They are
read back here, and nowhere else, for:

- the run process: its training and held-out pairs as TRL sees them, checked against the dataset hash
  (``run_pairs``);
- the comparison: the held-out pairs scored before and after, as the trainer saw them, with the judged
  question for display (``heldout_preference_pairs``), and the sessions its questions come from
  (``recorded_sessions``); the stance metric: an exercise run's items by key (``run_stance_items``);
- ``prefstudio datasets export --heldout``: the held-out pairs as stored, whatever mix of kinds
  (``heldout_export_pairs``).

Every failure is a ``PairSelectionError`` (a ValueError) whose message names the run and what is missing;
evaluation re-raises it as its own error type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from store.datasets.store_mixin import ExportPair, StanceItem
from store.errors import RecordNotFoundError
from store.pair_ids import PairId, PairIdError, pair_kind, parse_pair_id, stance_item_key, stance_pair_id
from store.pairs import PreferencePair
from trainers.dataset_selection import dataset_pairs
from trainers.exercise import stance_fields
from trainers.methods.registry import feedback_of
from trainers.pair_selection import (
    PairSelectionError,
    TrainingPair,
    dataset_file,
    dataset_hash,
    find_dataset,
    from_store_pairs,
)
from trainers.run_config import RunConfig

if TYPE_CHECKING:
    from store.records import RunRecord
    from store.studio_store import Store

DATASET_VERDICT = "dataset"


def available_pairs(store: Store, config: RunConfig) -> list[TrainingPair]:
    """Every pair a run on ``config`` may name, as the trainer sees it: its ``--dataset``'s (a file, a stored
    dataset, a stance dataset's exercise pairs) or the store's judged pairs (one session's with ``--session``)."""
    if config.dataset:
        return dataset_pairs(store, config)
    return from_store_pairs(store.pairs(session_id=config.session_id))


def pairs_by_ids(available: Sequence[TrainingPair], ids: Sequence[str]) -> list[TrainingPair]:
    """The pairs with these ids, in this order; raises when some are gone."""
    by_id = {p.pair_id: p for p in available}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise PairSelectionError(
            f"{len(missing)} pair(s) of this run are no longer available (e.g. {missing[0]}); start a new run"
        )
    return [by_id[i] for i in ids]


def run_pairs(store: Store, run: RunRecord, config: RunConfig) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """The run's recorded train and held-out pairs, checked against its dataset hash."""
    available = available_pairs(store, config)
    train = pairs_by_ids(available, run.pair_ids)
    heldout = pairs_by_ids(available, run.heldout_ids)
    if run.dataset_hash and dataset_hash(train + heldout) != run.dataset_hash:
        raise PairSelectionError(f"the pairs of run {run.id} changed since it was prepared; start a new run")
    if not train:
        raise PairSelectionError(f"run {run.id} has no training pairs")
    return train, heldout


def heldout_preference_pairs(store: Store, run: RunRecord) -> list[PreferencePair]:
    """The run's held-out pairs, in the run's order, as the trainer saw them (an edit with the model's leading
    space, a conversational prompt rendered), as store ``PreferencePair``s.

    Judged pairs keep their question (``prompt_text``), session and verdict. Pairs of a ``--dataset`` (a file, or
    a dataset in the store) are read again; they have ``verdict`` "dataset", ``prompt_text`` equal to the
    rendered prompt and ``session_id``/``judgement_id`` -1.
    """
    config = run.config or {}
    method = config.get("method", "dpo")
    if feedback_of(method) != "pairs":  # SFT, KTO: the run held out demonstrations or labels
        raise PairSelectionError(
            f"run {run.id} is a {method} run: it held out {feedback_of(method)}, not preference pairs; its held-out "
            "results are in its summary.json, and a comparison answers other prompts")
    if config.get("dataset"):
        what = "dataset file" if dataset_file(config["dataset"]) is not None else "dataset"
        try:  # a named stance dataset's pairs depend on the run's exercise settings, hence the whole config
            available = available_pairs(store, RunConfig.from_dict(config))
        except ValueError as exc:  # PairSelectionError, RunConfigError
            raise PairSelectionError(f"run {run.id} trained on a {what} that cannot be read now: {exc}") from exc
        stored: dict[str, PreferencePair] = {}
    else:
        judged = store.pairs(session_id=config.get("session_id"))
        available = from_store_pairs(judged)
        stored = {p.pair_id: p for p in judged}
    by_id = {p.pair_id: p for p in available}
    missing = [pair_id for pair_id in run.heldout_ids if pair_id not in by_id]
    if missing:
        raise PairSelectionError(
            f"{len(missing)} of run {run.id}'s {len(run.heldout_ids)} held-out pair(s) are no longer "
            f"available (e.g. {missing[0]}); is this the store the run was trained from?"
        )
    return [_as_preference(by_id[pair_id], stored.get(pair_id)) for pair_id in run.heldout_ids]


def _as_preference(pair: TrainingPair, judged: PreferencePair | None) -> PreferencePair:
    if judged is not None:
        return dataclasses.replace(judged, prompt=pair.prompt, chosen=pair.chosen, rejected=pair.rejected)
    return PreferencePair(pair_id=pair.pair_id, prompt=pair.prompt, prompt_text=pair.prompt, chosen=pair.chosen,
                          rejected=pair.rejected, session_id=-1, judgement_id=-1, verdict=DATASET_VERDICT,
                          created_at="")


def recorded_sessions(store: Store, run: RunRecord) -> list[int]:
    """The chat sessions a run's judged pairs (training and held out) were judged in, in order."""
    wanted = set(run.pair_ids) | set(run.heldout_ids)
    if "judged" not in {pair_kind(pair_id) for pair_id in wanted}:
        return []
    return sorted({p.session_id for p in store.pairs() if p.pair_id in wanted})


def run_stance_items(store: Store, run: RunRecord, part: str = "heldout") -> list[StanceItem]:
    """The labelled items of an exercise run, in the run's order: its ``"heldout"`` or its ``"train"`` ones.

    Raises ``PairSelectionError`` when the run did not train on a labelled-stance dataset in the store, or
    names items the dataset no longer holds.
    """
    name = (run.config or {}).get("dataset")
    if not name:
        raise PairSelectionError(f"run {run.id} did not train on a labelled-stance dataset")
    try:
        record = find_dataset(store, name)
    except PairSelectionError as exc:
        raise PairSelectionError(f"run {run.id}: {exc}") from exc
    if record.kind != "stance":
        raise PairSelectionError(f"run {run.id} trained on '{record.name}', a {record.kind} dataset, not a stance one")
    ids = run.heldout_ids if part == "heldout" else run.pair_ids
    by_key = {stance_fields(item).item_key: item for item in store.stance_items(record)}
    keys = [stance_item_key(pair_id) for pair_id in ids]
    missing = [key for key in keys if key not in by_key]
    if missing:
        raise PairSelectionError(
            f"{len(missing)} item(s) of run {run.id} are not in dataset '{record.name}' any more (e.g. {missing[0]})"
        )
    return [by_key[key] for key in keys]


def heldout_export_pairs(store: Store, run_id: int) -> tuple[list[ExportPair], list[str]]:
    """A run's held-out pairs as stored (judged ones, imported dataset ones, and an exercise's held-out stance
    items with support chosen, as the stance metric scores them), and the ids no longer found."""
    run = store.get_run(run_id)
    ids = run.heldout_ids
    kinds = {pair_kind(pair_id) for pair_id in ids}  # an id no kind reads is reported missing, like a gone one
    judged = {pair.pair_id: pair for pair in store.pairs()} if "judged" in kinds else {}
    row_ids = [parsed.row_id for parsed in map(_parsed, ids) if parsed and parsed.row_id is not None]
    from_datasets = {pair.pair_id: pair for pair in store.dataset_pairs_by_row_ids(row_ids)}
    stance = _stance_items_by_id(store, run.config or {}) if "stance" in kinds else {}
    found, missing = [], []
    for pair_id in ids:
        if pair_id in judged:
            pair = judged[pair_id]
            found.append(ExportPair(pair.pair_id, pair.prompt, pair.chosen, pair.rejected))
        elif pair_id in from_datasets:
            found.append(from_datasets[pair_id])
        elif pair_id in stance:
            item = stance[pair_id]
            found.append(ExportPair(pair_id, item.prompt, item.support, item.oppose))
        else:
            missing.append(pair_id)
    return found, missing


def _parsed(pair_id: str) -> PairId | None:
    try:
        return parse_pair_id(pair_id)
    except PairIdError:
        return None


def _stance_items_by_id(store: Store, config: dict[str, Any]) -> dict[str, StanceItem]:
    """The stance items of an exercise run's dataset, by the ids ("stance:<item key>") its pairs have."""
    name = config.get("dataset")
    if not name:
        return {}
    try:
        items = store.stance_items(name)
    except (RecordNotFoundError, ValueError):  # the dataset is gone, or is not a stance dataset
        return {}
    return {stance_pair_id(item.item_key): item for item in items}
