"""SteerLM's attribute-conditioned SFT (method ``steerlm``): SFT on rated replies, the prompt carrying the values.

Each rated reply becomes one SFT row: the prompt the reply answered, with its ratings appended by the one rule
of ``trainers.steer_format`` (``…Assistant: [quality:4,humor:0]``), and the reply to learn, the loss on the reply
only (``SFTMethod``'s TRL config). At inference the user writes the values at the same place and the model
follows them. The rated replies are selected as for the attribute model (``trainers.rating_selection``): the
user's ratings or an imported ratings dataset, and with ``--ratings-from RUN`` the values an attributes run
predicted for replies nobody rated. The run records the attributes it was trained on (``steer_attributes``),
so the studio offers sliders for those only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from trainers.feedback_selection import TrainingExample
from trainers.methods.sft import SFTMethod
from trainers.rating_selection import RatedExample, planned_attributes, run_ratings
from trainers.steer_format import ATTRIBUTE_MAX, ATTRIBUTE_MIN, steered_prompt

if TYPE_CHECKING:
    from store.records import RunRecord
    from store.studio_store import Store
    from trainers.run_config import RunConfig


def steer_values(ratings: Mapping[str, float]) -> dict[str, int]:
    """A reply's ratings as the whole numbers the attribute string carries (predicted ones are fractional)."""
    return {name: min(ATTRIBUTE_MAX, max(ATTRIBUTE_MIN, round(value))) for name, value in ratings.items()}


def conditioned_example(example: RatedExample, format_name: str) -> TrainingExample:
    """One SFT row: the prompt with the reply's own values at the rule's place, and the reply."""
    return TrainingExample(example.example_id, steered_prompt(example.prompt, steer_values(example.ratings),
                                                              format_name), example.completion, None, example.origin)


def steer_attributes(run: RunRecord) -> list[str]:
    """The attributes a SteerLM run was trained on ([] for a run of another method)."""
    if (run.config or {}).get("method") != "steerlm":
        return []
    return list((run.summary or {}).get("steer_attributes") or planned_attributes(run))


class SteerLMMethod(SFTMethod):
    """LoRA SFT on attribute-conditioned prompts (the ``TrainingMethod`` registered as ``steerlm``)."""

    name = "steerlm"

    def read_examples(self, store: Store, run: RunRecord, config: RunConfig
                      ) -> tuple[list[TrainingExample], list[TrainingExample]]:
        from trainers.model_prompt_format import prompt_format_for_model

        format_name = prompt_format_for_model(config.train_model).name
        train, heldout = run_ratings(store, run, config)
        return ([conditioned_example(e, format_name) for e in train],
                [conditioned_example(e, format_name) for e in heldout])

    def extra_summary(self, run: RunRecord) -> dict[str, list[str]]:
        return {"steer_attributes": planned_attributes(run)}


METHOD = SteerLMMethod()
