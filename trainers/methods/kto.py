"""KTO: TRL ``KTOTrainer`` + LoRA on replies marked good or bad (thumbs, or labels comparisons imply).

The desirable / undesirable weights come from the training split's balance (``feedback_selection.kto_weights``,
shown when the run is prepared) unless given. TRL's KTO estimates its KL term from the other replies of each
batch and so reads the rows in order: they are shuffled here, with the run's seed, so batches mix good and bad.
Live metrics: loss, ``kl``, ``rewards/chosen`` (good) and ``rewards/rejected`` (bad); the run summary holds the
held-out implicit reward of good and bad replies and their margin, before and after training.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trainers.feedback_selection import ExampleReport, TrainingExample
from trainers.methods.example_training import ExampleMethod, common_training_arguments

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase, Trainer
    from trl import KTOConfig, KTOTrainer

    from trainers.run_config import RunConfig


class KTOMethod(ExampleMethod):
    """LoRA KTO with TRL (the ``TrainingMethod`` registered as ``kto``)."""

    name = "kto"

    def trainer_args(self, config: RunConfig, work_dir: Path, device: str, dtype: str, has_eval: bool,
                     report: ExampleReport) -> KTOConfig:
        from trl import KTOConfig

        return KTOConfig(
            **common_training_arguments(config, work_dir, device, dtype),
            max_length=report.max_length or config.max_length,
            beta=config.beta,
            desirable_weight=report.desirable_weight or 1.0,
            undesirable_weight=report.undesirable_weight or 1.0,
            do_eval=False,  # the held-out margin is measured here, per reply (heldout_metrics)
        )

    def trainer_class(self) -> type[KTOTrainer]:
        from trainers.kto_passes import StudioKTOTrainer  # TRL's, with DPO's CPU log-prob speed-ups

        return StudioKTOTrainer

    def training_rows(self, examples: Sequence[TrainingExample], config: RunConfig) -> list[dict[str, str | bool]]:
        rows = [e.to_trl() for e in examples]
        random.Random(config.seed).shuffle(rows)  # KTO samples in order: mix good and bad within each batch
        return rows

    def evaluation_rows(self, examples: Sequence[TrainingExample]) -> None:
        return None

    def before_training(self, trainer: Trainer, heldout: Sequence[TrainingExample], tokenizer: PreTrainedTokenizerBase,
                        config: RunConfig, report: ExampleReport) -> dict[str, float]:
        return reward_margin(trainer.model, tokenizer, heldout, config.beta, report.max_length)

    def heldout_metrics(self, trainer: Trainer, heldout: Sequence[TrainingExample], tokenizer: PreTrainedTokenizerBase,
                        config: RunConfig, report: ExampleReport) -> dict[str, float]:
        return reward_margin(trainer.model, tokenizer, heldout, config.beta, report.max_length)


    def describe_heldout(self, before: dict[str, float], after: dict[str, float]) -> str:
        if "margin" not in after:
            return ""
        return f"reward margin good - bad {after['margin']:+.3f}, ordered right {after['accuracy']:.0%}"


def completion_logprob(model: PeftModel, tokenizer: PreTrainedTokenizerBase, example: TrainingExample,
                       max_length: int | None) -> float:
    """log p(reply + EOS | prompt) as KTO scores it: the reply starts where prompt and prompt + reply tokenise
    apart, and the sequence is cut at ``max_length``."""
    import torch

    eos = tokenizer.eos_token or ""
    completion = example.completion if example.completion.endswith(eos) else example.completion + eos
    prompt_ids = tokenizer(example.prompt)["input_ids"]
    full_ids = tokenizer(example.prompt + completion)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    ids = full_ids[:max_length] if max_length else full_ids
    if start >= len(ids):
        return 0.0
    device = next(model.parameters()).device
    tensor = torch.tensor([ids], device=device)
    logits = model(input_ids=tensor).logits[0, :-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(1, tensor[0, 1:, None])[:, 0]
    return float(logps[max(0, start - 1):].sum())


def implicit_rewards(model: PeftModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[TrainingExample],
                     beta: float, max_length: int | None) -> list[float]:
    """KTO's implicit reward of each reply: beta x (log p_policy - log p_reference), the reference being the
    model with its adapter disabled."""
    import torch

    was_training = model.training
    model.eval()
    rewards = []
    with torch.no_grad():
        for example in examples:
            policy = completion_logprob(model, tokenizer, example, max_length)
            with model.disable_adapter():
                reference = completion_logprob(model, tokenizer, example, max_length)
            rewards.append(beta * (policy - reference))
    model.train(was_training)
    return rewards


def reward_margin(model: PeftModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[TrainingExample],
                  beta: float, max_length: int | None) -> dict[str, float]:
    """Mean implicit reward of the good and the bad replies, their margin, and the share of (good, bad)
    combinations the rewards order right."""
    rewards = implicit_rewards(model, tokenizer, examples, beta, max_length)
    good = [r for r, e in zip(rewards, examples, strict=True) if e.label]
    bad = [r for r, e in zip(rewards, examples, strict=True) if e.label is False]
    out: dict[str, float] = {}
    if good:
        out["reward_good"] = sum(good) / len(good)
    if bad:
        out["reward_bad"] = sum(bad) / len(bad)
    if good and bad:
        out["margin"] = out["reward_good"] - out["reward_bad"]
        out["accuracy"] = sum(g > b for g in good for b in bad) / (len(good) * len(bad))
    return out


METHOD = KTOMethod()
