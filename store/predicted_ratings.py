"""An attribute model's predicted ratings (schema v7 ``predicted_ratings``), kept apart from human ratings.

A mixin of `Store` (like `RewardScores`). Human ratings live in ``candidate_ratings`` and are what
``feedback_yield.rated_responses`` (and so every training method) reads; predictions live here, one value per
(target, attribute, attributes run), and are read only by asking for them. A target is a candidate, a written
demonstration, an edited judgement's edit, or an imported dataset item. ``annotation_targets`` lists what a run
may still annotate: replies with no human rating that the run has not predicted yet, so an annotation that
stopped half-way continues where it stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlite_utils

from store import feedback_yield
from store.datasets.feedback_formats import DemonstrationItem, LabelItem, item_from_json
from store.transactions import StoreLock, serialized, utc_now, write_transaction

TargetKind = Literal["candidate", "demonstration", "edit", "dataset_item"]
TARGET_KINDS: tuple[TargetKind, ...] = ("candidate", "demonstration", "edit", "dataset_item")
VALUE_RANGE = (0.0, 4.0)


@dataclass(frozen=True)
class AnnotationTarget:
    """A reply an attribute model may annotate: what it is, the prompt it answers, and its text."""

    kind: TargetKind
    target_id: int
    prompt: str  # the rendered prompt where the store has it, else the prompt's text
    text: str


@dataclass(frozen=True)
class PredictedRating:
    """One predicted value (0–4, a float) of one attribute of one target, by one attributes run."""

    kind: TargetKind
    target_id: int
    attribute: str
    value: float
    run_id: int
    created_at: str


_UNPREDICTED = ("NOT EXISTS (SELECT 1 FROM predicted_ratings p WHERE p.target_kind = ? AND p.target_id = {id} "
                "AND p.run_id = ?)")


class PredictedRatings:
    """The predicted-rating methods of `Store` (mixed in)."""

    db: sqlite_utils.Database
    path: Path
    lock: StoreLock

    @serialized
    def record_predicted_ratings(self, run_id: int, kind: TargetKind,
                                 predictions: Mapping[int, Mapping[str, float]]) -> int:
        """Store run ``run_id``'s predictions for targets of ``kind`` (target id → {attribute: value}) in one
        transaction; a target the run predicted before gets the new values. Return the rows written. Raises
        ValueError naming an unknown run or kind, or a value that is not a number in 0–4 (nothing is stored)."""
        if kind not in TARGET_KINDS:
            raise ValueError(f"unknown prediction target {kind!r}; expected one of {', '.join(TARGET_KINDS)}")
        for target_id, values in predictions.items():
            for attribute, value in values.items():
                if not isinstance(value, int | float) or not math.isfinite(value) or \
                        not VALUE_RANGE[0] <= value <= VALUE_RANGE[1]:
                    raise ValueError(f"predicted {attribute} {value!r} for {kind} {target_id} is not a number "
                                     f"from {VALUE_RANGE[0]:g} to {VALUE_RANGE[1]:g}")
        written = 0
        with write_transaction(self.db):
            if self.db.execute("SELECT 1 FROM runs WHERE id = ?", [run_id]).fetchone() is None:
                raise ValueError(f"no run with id {run_id} in {self.path}")
            now = utc_now()
            for target_id, values in predictions.items():
                for attribute, value in values.items():
                    self.db.execute(
                        "INSERT INTO predicted_ratings (target_kind, target_id, attribute, value, run_id, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (target_kind, target_id, attribute, run_id) DO UPDATE "
                        "SET value = excluded.value, created_at = excluded.created_at",
                        [kind, int(target_id), attribute, float(value), run_id, now])
                    written += 1
        return written

    @serialized
    def predicted_ratings(self, run_id: int | None = None, kind: TargetKind | None = None) -> list[PredictedRating]:
        """Stored predictions, of one run and/or one target kind, in the order stored."""
        rows = self.db.execute(
            "SELECT target_kind, target_id, attribute, value, run_id, created_at FROM predicted_ratings "
            "WHERE (? IS NULL OR run_id = ?) AND (? IS NULL OR target_kind = ?) ORDER BY id",
            [run_id, run_id, kind, kind])
        return [PredictedRating(k, int(t), a, float(v), int(r), c) for k, t, a, v, r, c in rows]

    @serialized
    def annotation_targets(self, run_id: int, kind: TargetKind, dataset_id: int | None = None
                           ) -> list[AnnotationTarget]:
        """The replies of ``kind`` that run ``run_id`` may still annotate, in the order stored: candidates with
        no human rating, demonstrations and edits (never rated by hand), or the demonstration and label items
        of dataset ``dataset_id`` (a ratings dataset's items carry human ratings already) — each one the run
        has not predicted yet."""
        if kind == "candidate":
            rows = self.db.execute(
                "SELECT c.id, c.rendered_prompt, c.text FROM candidates c WHERE NOT EXISTS "
                "(SELECT 1 FROM candidate_ratings r WHERE r.candidate_id = c.id) AND "
                + _UNPREDICTED.format(id="c.id") + " ORDER BY c.id", [kind, run_id])
            return [AnnotationTarget(kind, int(i), prompt or "", text) for i, prompt, text in rows]
        if kind in ("demonstration", "edit"):
            done = {int(t) for (t,) in self.db.execute(
                "SELECT DISTINCT target_id FROM predicted_ratings WHERE target_kind = ? AND run_id = ?", [kind, run_id])}
            out = []
            for demo in feedback_yield.demonstrations(self.db):
                own_kind: TargetKind = "edit" if demo.demo_id.startswith("e") else "demonstration"
                target_id = int(demo.demo_id[1:])
                if own_kind == kind and target_id not in done:
                    out.append(AnnotationTarget(kind, target_id, demo.context.prompt, demo.text))
            return out
        if kind == "dataset_item":
            if dataset_id is None:
                raise ValueError("annotating dataset items needs a dataset")
            rows = self.db.execute(
                "SELECT f.id, d.kind, f.item_json FROM dataset_feedback_items f JOIN datasets d ON d.id = f.dataset_id "
                "WHERE f.dataset_id = ? AND (f.import_id IS NULL OR f.import_id NOT IN "
                "(SELECT id FROM dataset_imports WHERE state = 'staging')) AND "
                + _UNPREDICTED.format(id="f.id") + " ORDER BY f.id", [dataset_id, kind, run_id])
            out = []
            for item_id, dataset_kind, text in rows:
                item = item_from_json(dataset_kind, text)
                if isinstance(item, DemonstrationItem | LabelItem):
                    out.append(AnnotationTarget(kind, int(item_id), item.prompt, item.completion))
            return out
        raise ValueError(f"unknown prediction target {kind!r}; expected one of {', '.join(TARGET_KINDS)}")

    @serialized
    def predicted_counts(self, run_id: int) -> dict[str, int]:
        """How many targets of each kind run ``run_id`` has predicted."""
        rows = self.db.execute("SELECT target_kind, COUNT(DISTINCT target_id) FROM predicted_ratings WHERE run_id = ? "
                               "GROUP BY target_kind", [run_id])
        return {str(k): int(n) for k, n in rows}


def predictions_json(predictions: list[PredictedRating]) -> str:
    """The predictions as JSON lines (for ``prefstudio attributes list --json``)."""
    return "\n".join(json.dumps({"kind": p.kind, "target_id": p.target_id, "attribute": p.attribute,
                                 "value": p.value, "run_id": p.run_id}) for p in predictions)
