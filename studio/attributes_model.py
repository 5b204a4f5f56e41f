"""An attribute model at work: a finished ``attributes`` run predicting each attribute (0–4) of replies.

``predict_attributes(run, texts)`` is the one call the rest of the studio makes (annotate, the SteerLM
steerability bench, sliders' feedback). Prediction runs transformers + PEFT in a worker process
(``python -m studio.attributes_model``), as ``studio.reward.torch_worker`` does for reward models: the studio
process never imports torch, and a crash or an out-of-memory there never takes the UI down. Blocking: callers
run it off the UI thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from store.records import RunRecord


class AttributeModelError(Exception):
    """A run that cannot predict attributes (not a finished attributes run, another base model, files missing)
    or a predictor that stopped. The message names the run and what to do."""


def predict_attributes(run: RunRecord, texts: Sequence[str], *, prompts: Sequence[str] | None = None,
                       db_path: str | None = None, expected_sha256: str | None = None,
                       threads: int = 2) -> list[dict[str, float]]:
    """Each text's predicted value (0–4, a float) per attribute the run was trained on, in the order given.

    ``texts`` are replies as stored (the model's own leading space kept); ``prompts``, when given (one per
    text), are the rendered prompts they answer, read before the reply exactly as in training (the attribute
    model is trained on rendered prompt + reply). ``db_path`` locates the run folder (the ``runs`` folder
    beside the database); ``expected_sha256``, when given, is the served model's sha256, refused with a clear
    message when the run was trained on another base model. Raises ``AttributeModelError``.
    """
    raise NotImplementedError("filled in by T1 (issue 17): signature committed first for T2")
