"""SFT: TRL ``SFTTrainer`` + LoRA on demonstrations, the loss on the reply tokens only.

Rows are TRL's prompt-completion format (``trainers.feedback_selection``: the rendered prompt the model saw and
the reply to learn), so ``completion_only_loss`` masks the prompt: the model learns to answer, not to write the
user's side. Live metrics: loss and TRL's ``mean_token_accuracy``; the run summary holds the held-out loss and
token accuracy before and after training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trainers.feedback_selection import ExampleReport, TrainingExample
from trainers.methods.example_training import ExampleMethod, common_training_arguments

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Trainer
    from trl import SFTConfig, SFTTrainer

    from trainers.run_config import RunConfig


class SFTMethod(ExampleMethod):
    """LoRA SFT with TRL (the ``TrainingMethod`` registered as ``sft``)."""

    name = "sft"

    def trainer_args(self, config: RunConfig, work_dir: Path, device: str, dtype: str, has_eval: bool,
                     report: ExampleReport) -> SFTConfig:
        from trl import SFTConfig

        return SFTConfig(
            **common_training_arguments(config, work_dir, device, dtype),
            max_length=report.max_length or config.max_length,
            completion_only_loss=True,  # the prompt's tokens are context, not something to learn to write
            packing=False,
            do_eval=has_eval,
        )

    def trainer_class(self) -> type[SFTTrainer]:
        from trl import SFTTrainer

        return SFTTrainer

    def before_training(self, trainer: Trainer, heldout: Sequence[TrainingExample], tokenizer: PreTrainedTokenizerBase,
                        config: RunConfig, report: ExampleReport) -> dict[str, float]:
        return heldout_loss(trainer)

    def heldout_metrics(self, trainer: Trainer, heldout: Sequence[TrainingExample], tokenizer: PreTrainedTokenizerBase,
                        config: RunConfig, report: ExampleReport) -> dict[str, float]:
        return heldout_loss(trainer)


    def describe_heldout(self, before: dict[str, float], after: dict[str, float]) -> str:
        if "loss" not in after:
            return ""
        return (f"loss {before['loss']:.3f} -> " if "loss" in before else "loss ") + f"{after['loss']:.3f}"


def heldout_loss(trainer: Trainer) -> dict[str, float]:
    """The held-out replies' loss (mean negative log-likelihood per reply token) and token accuracy."""
    found = trainer.evaluate()
    out = {"loss": float(found["eval_loss"])} if "eval_loss" in found else {}
    if "eval_mean_token_accuracy" in found:
        out["mean_token_accuracy"] = float(found["eval_mean_token_accuracy"])
    return out


METHOD = SFTMethod()
