"""The ``rloo`` method: online RL (REINFORCE leave-one-out, TRL's ``RLOOTrainer``) against the user's reward model.

Each step samples ``--num-generations`` replies (at most ``--max-completion-length`` tokens, ``--temperature``)
for ``--batch-size`` prompts (``trainers/rl_prompts.py``), scores them with ``StudioReward``
(``trainers/reward_functions.py``: a done ``--reward-run``'s model plus the ticked penalties), and moves the
LoRA towards the replies that beat their group's mean, with a KL penalty (``--beta``) to the start (PEFT's
adapter switched off: no second model). The run body is the example methods' (``example_training``: the model
converted and loaded, callbacks, metrics rows, cancel and resume, the adapter published atomically); this
module says what differs: the config, the trainer, the rows (prompts), the reward and the held-out evaluation
(the mean reward of a greedy reply to each held-out prompt, before and after).

Replies are sampled by the quantised engine with the current adapter (``--rollouts llama``, the default for a
.gguf train model: ``trainers/rollout_trainer.py``, a subclass of the trainer), or by transformers' ``generate``
(TRL's own path; the default for a model directory).
Every step's best and worst replies with their rewards go to ``samples.jsonl`` in the run's work directory
while it trains, and into the published folder at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.feedback_selection import ExampleReport, TrainingExample
from trainers.methods.example_training import ExampleMethod, common_training_arguments
from trainers.reward_functions import (
    SAMPLES_FILE,
    RewardModelScorer,
    SampleLog,
    StudioReward,
    reward_run_folder,
    safety_checker_for,
)
from trainers.rl_prompts import prompt_texts, run_prompts
from trainers.run.checkpoints import truncate_metrics
from trainers.run.errors import RunError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Trainer
    from trl import RLOOConfig, RLOOTrainer

    from store.records import RunRecord
    from store.studio_store import Store
    from trainers.model_source import ModelSource
    from trainers.run.outputs import RunPaths
    from trainers.run_config import RunConfig


def samples_path(paths: RunPaths) -> Path:
    """Where a training run's sampled replies are appended (the work directory, like the live metrics)."""
    return paths.work_dir / SAMPLES_FILE


def build_rloo_config(config: RunConfig, work_dir: Path, device: str, dtype: str) -> RLOOConfig:
    """TRL's ``RLOOConfig``: the common arguments, a batch of ``batch_size`` prompts x ``num_generations``
    replies, one generation per optimizer step."""
    from trl import RLOOConfig

    common = common_training_arguments(config, work_dir, device, dtype)
    common["per_device_train_batch_size"] = config.batch_size * config.num_generations
    common["per_device_eval_batch_size"] = config.batch_size * config.num_generations
    return RLOOConfig(
        **common,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.beta,
        disable_dropout=True,
        log_completions=False,
    )


def rollouts_of(config: RunConfig) -> str:
    """What samples this run's replies (``RunConfig.rollouts_for`` its train model)."""
    return config.rollouts_for(config.train_model)


def rloo_trainer_class(config: RunConfig) -> type[RLOOTrainer]:
    """TRL's trainer with the studio's CPU passes (``trainers.rloo_passes``), or with llama.cpp rollouts its
    subclass that samples in llama.cpp."""
    from trl import RLOOTrainer

    from trainers.rloo_passes import StudioRLOOTrainer

    if rollouts_of(config) != "llama":
        return StudioRLOOTrainer
    try:
        from trainers.rollout_trainer import llama_rollout_trainer
    except ImportError as exc:
        raise RunError(f"--rollouts llama is not available in this build ({exc}); use --rollouts transformers") \
            from None
    return llama_rollout_trainer(RLOOTrainer)


def greedy_replies(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                   max_new_tokens: int) -> tuple[list[str], list[int]]:
    """One greedy reply per prompt from the trainer's model as it is now, and each reply's token count."""
    import torch

    model = trainer.model
    replies, lengths = [], []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
            reply_ids = out[0, ids.shape[1]:].tolist()
            replies.append(tokenizer.decode(reply_ids, skip_special_tokens=True))
            lengths.append(len(reply_ids))
    model.train(was_training)
    return replies, lengths


class RLOOMethod(ExampleMethod):
    """RLOO against a reward run (the ``TrainingMethod`` registered as ``rloo``)."""

    name = "rloo"

    def trainer_args(self, config: RunConfig, work_dir: Path, device: str, dtype: str, has_eval: bool,
                     report: ExampleReport) -> RLOOConfig:
        return build_rloo_config(config, work_dir, device, dtype)

    def trainer_class(self) -> type[Trainer]:
        from trainers.rloo_passes import StudioRLOOTrainer

        return StudioRLOOTrainer  # transformers rollouts; trainer_class_for picks the llama.cpp subclass

    def trainer_class_for(self, config: RunConfig) -> type[Trainer]:
        return rloo_trainer_class(config)

    def read_examples(self, store: Store, run: RunRecord, config: RunConfig
                      ) -> tuple[list[TrainingExample], list[TrainingExample]]:
        return run_prompts(store, run, config)

    def training_rows(self, examples: Sequence[TrainingExample], config: RunConfig) -> list[dict[str, str | bool]]:
        return [{"prompt": text} for text in prompt_texts(examples)]

    def evaluation_rows(self, examples: Sequence[TrainingExample]) -> list[dict[str, str | bool]] | None:
        return None  # held out: the mean reward of greedy replies, measured by heldout_metrics

    def trainer_kwargs(self, store: Store, run: RunRecord, config: RunConfig, paths: RunPaths, source: ModelSource,
                       resume_step: int | None, log: Callable[[str], None]) -> dict[str, Any]:
        from trainers.methods.reward import load_trained_reward_model

        folder = reward_run_folder(store, config, source.origin)  # checked again: it may have gone since
        model, tokenizer = load_trained_reward_model(folder, source.model_dir)
        samples = samples_path(paths)
        if resume_step is None:
            samples.unlink(missing_ok=True)
        else:
            truncate_metrics(samples, resume_step)
        safety = safety_checker_for(config.safety_checker) if config.safety_penalty > 0 else None
        reward = StudioReward(RewardModelScorer(model, tokenizer), length_penalty=config.length_penalty,
                              length_target=config.length_target, safety=safety,
                              safety_penalty=config.safety_penalty, samples=SampleLog(samples))
        terms = ["reward run " + str(config.reward_run)]
        if config.length_penalty:
            terms.append(f"length penalty {config.length_penalty:g}/token over {config.length_target}")
        if safety is not None:
            terms.append(f"safety penalty {config.safety_penalty:g} ({safety.name})")
        log(f"rloo: reward = {' - '.join(terms)}; {config.num_generations} replies per prompt, at most "
            f"{config.max_completion_length} tokens, temperature {config.temperature:g}, KL beta {config.beta:g}, "
            f"rollouts by {rollouts_of(config)}")
        if rollouts_of(config) == "llama":  # the engine loads the GGUF the torch weights were converted from
            if config.importance_cap is not None:
                log(f"rloo: each reply's advantage weighted by its importance weight, capped at "
                    f"{config.importance_cap:g}")
            return {"reward_funcs": reward, "gguf_path": Path(source.origin), "importance_cap": config.importance_cap}
        return {"reward_funcs": reward}

    def extra_files(self, paths: RunPaths) -> dict[str, Path]:
        return {SAMPLES_FILE: samples_path(paths)}

    def extra_summary(self, run: RunRecord) -> dict[str, Any]:
        return {"reward_run": run.config.get("reward_run")}

    def _heldout_reward(self, trainer: Trainer, heldout: Sequence[TrainingExample], tokenizer: PreTrainedTokenizerBase,
                        config: RunConfig) -> dict[str, float]:
        reward = trainer.reward_funcs[0]
        if not isinstance(reward, StudioReward):
            return {}
        prompts = prompt_texts(heldout)
        replies, lengths = greedy_replies(trainer, tokenizer, prompts, config.max_completion_length)
        terms = reward.terms(prompts, replies, lengths)
        totals = reward.totals(terms)
        out = {"reward": sum(totals) / len(totals), "reward_model": sum(terms["model"]) / len(totals),
               "length": sum(lengths) / len(lengths)}
        if "flagged" in terms:
            out["flagged_rate"] = sum(terms["flagged"]) / len(totals)
        return out

    def before_training(self, trainer: Trainer, heldout: Sequence[TrainingExample], tokenizer: PreTrainedTokenizerBase,
                        config: RunConfig, report: ExampleReport) -> dict[str, float]:
        return self._heldout_reward(trainer, heldout, tokenizer, config)

    def heldout_metrics(self, trainer: Trainer, heldout: Sequence[TrainingExample], tokenizer: PreTrainedTokenizerBase,
                        config: RunConfig, report: ExampleReport) -> dict[str, float]:
        return self._heldout_reward(trainer, heldout, tokenizer, config)

    def describe_heldout(self, before: dict[str, float], after: dict[str, float]) -> str:
        if "reward" not in after:
            return ""
        start = f"{before['reward']:.3f} → " if "reward" in before else ""
        return f"mean reward {start}{after['reward']:.3f} (greedy replies)"


METHOD = RLOOMethod()
