"""The reward an RLOO run maximises: the user's reward model, plus the penalties the user ticked.

``StudioReward`` is the one reward function handed to TRL's ``RLOOTrainer`` (its ``reward_funcs``): for each
sampled reply it adds

- the reward model's score (``RewardModelScorer``: a done ``reward`` run, scoring ``prompt + reply`` on exactly
  the tokens it was trained on, ``trainers.methods.reward.reward_input_ids``, batched),
- minus ``length_penalty`` per reply token over ``length_target``,
- minus ``safety_penalty`` when the safety checker (``trainers/safety_checks``: the bundled profanity
  classifier or a word list) flags the reply.

Each term's batch mean is logged as its own metric (``reward/model``, ``reward/length_penalty``,
``reward/safety_penalty``, ``reward/flagged``) beside TRL's ``reward`` (the total). A score that is NaN or
infinite stops the run with a ``RunError`` naming the prompt and reply (TRL would otherwise train on NaN
advantages). Every step, the best and worst replies of the batch go to ``samples.jsonl`` (``SampleLog``;
one JSON object a line: ``step``, ``prompt``, ``reply``, ``reward``), which the train screen shows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from store.errors import RecordNotFoundError
from trainers.chain import method_of, other_base
from trainers.run.errors import RunError
from trainers.run.outputs import RunFolderError, checked_run_paths, runs_roots
from trainers.run.ranks import is_worker_process
from trainers.run_config import RunConfig, RunConfigError
from trainers.safety_checks.checker import SafetyChecker, SafetyCheckerError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerState

    from store.studio_store import Store

SAMPLES_FILE = "samples.jsonl"
SAMPLES_PER_STEP = 2  # the best and the worst reply of each step's batch
REWARD_RUN_FILES = ("adapter_model.safetensors", "adapter_config.json", "reward_head.safetensors",
                    "reward_model.json")


class RewardRunError(RunConfigError):
    """``--reward-run`` names a run whose reward model cannot score this run's replies; the message says why."""


class RewardNotFiniteError(RunError):
    """The reward model scored a reply NaN or infinite: the run stops (training on it would poison the LoRA)."""


def reward_run_folder(store: Store, config: RunConfig, model: Path | str) -> Path:
    """The published folder of ``config.reward_run``, checked: a reward run, done, its files there, trained on
    ``model`` (the same GGUF by sha256). Reads the store, writes nothing; ``RewardRunError`` says what is wrong."""
    run_id = config.reward_run
    if run_id is None:
        raise RewardRunError("--method rloo needs --reward-run N: a done reward run (train one with "
                             "`prefstudio train --method reward`; `prefstudio runs` lists them)")
    where = f"--reward-run {run_id}"
    try:
        run = store.get_run(run_id)
    except RecordNotFoundError:
        raise RewardRunError(f"{where}: there is no run {run_id} in {store.path} (`prefstudio runs` lists them)") \
            from None
    if method_of(run) != "reward":
        raise RewardRunError(f"{where}: run {run_id} is a {method_of(run)} run, not a reward model; train one with "
                             "--method reward")
    if run.status != "done":
        detail = f" ({run.message})" if run.message else ""
        raise RewardRunError(f"{where}: run {run_id} is {run.status}{detail}; only a finished (done) reward run "
                             "can score replies")
    try:
        folder = checked_run_paths(run.output_dir, runs_roots(store.path)).output_dir
    except RunFolderError as exc:
        raise RewardRunError(f"{where}: {exc}") from None
    missing = [name for name in REWARD_RUN_FILES if not (folder / name).is_file()]
    if missing:
        raise RewardRunError(f"{where}: run {run_id} has no reward model in {folder} ({', '.join(missing)} missing)")
    problem = other_base(run, Path(model))
    if problem:
        raise RewardRunError(f"{where}: {problem.replace('its adapter', 'its reward model')}")
    return folder


def safety_checker_for(spec: str) -> SafetyChecker:
    """The checker ``--safety-checker`` names: ``profanity`` or ``wordlist:PATH`` (``RunConfigError`` otherwise,
    or when it cannot load)."""
    try:
        if spec == "profanity":
            from trainers.safety_checks.profanity import ProfanityChecker

            return ProfanityChecker()
        if spec.startswith("wordlist:"):
            from trainers.safety_checks.wordlist import WordListChecker

            return WordListChecker(Path(spec.removeprefix("wordlist:")).expanduser())
    except SafetyCheckerError as exc:
        raise RunConfigError(f"--safety-checker {spec}: {exc}") from None
    raise RunConfigError(f"--safety-checker must be profanity or wordlist:PATH (got {spec!r})")


def check_reward_terms(store: Store, config: RunConfig, model: Path | str) -> None:
    """What an RLOO run's reward needs, checked before anything is written: the reward run, the safety checker
    when its penalty is on, and a .gguf model for llama.cpp rollouts."""
    reward_run_folder(store, config, model)
    if config.safety_penalty > 0:
        safety_checker_for(config.safety_checker)
    if config.rollouts == "llama" and Path(model).suffix.lower() != ".gguf":
        raise RunConfigError(f"--rollouts llama samples in llama.cpp and needs a .gguf train model (got {model}); "
                             "use --rollouts transformers")
    if config.importance_cap is not None and config.rollouts_for(model) != "llama":
        raise RunConfigError("--importance-cap weighs replies sampled by llama.cpp; here transformers samples them "
                             "from the policy itself, so there is nothing to correct: leave it out")


class RewardModelScorer:
    """A trained reward model as a batched scorer of (prompt, reply): the tokens of ``reward_input_ids`` (the
    prompt's trailing spaces moved into the reply, as the pairs were), right-padded, the head on each one's last
    real token (the sequence-classification model finds it from the padding)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def __call__(self, prompts: Sequence[str], replies: Sequence[str]) -> list[float]:
        import torch

        from trainers.methods.reward import reward_input_ids
        from trainers.pair_selection import at_token_boundary

        rows = []
        for prompt, reply in zip(prompts, replies, strict=True):
            kept, moved, _ = at_token_boundary(prompt, reply, reply)
            rows.append(reward_input_ids(self.tokenizer, kept, moved))
        pad = int(self.tokenizer.pad_token_id)
        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start:start + self.batch_size]
                width = max(len(r) for r in batch)
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch])
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch])
                scores += [float(s) for s in self.model(input_ids=ids, attention_mask=mask).logits[:, 0]]
        return scores


class SampleLog:
    """``samples.jsonl``: a few replies of each step with their rewards, appended as the run samples them."""

    def __init__(self, path: Path, per_step: int = SAMPLES_PER_STEP) -> None:
        self.path = path
        self.per_step = per_step

    def write(self, step: int, prompts: Sequence[str], replies: Sequence[str], rewards: Sequence[float]) -> None:
        if is_worker_process():  # under `accelerate launch` rank 0 alone writes the run's files
            return
        order = sorted(range(len(rewards)), key=lambda i: rewards[i], reverse=True)
        picked = order[:1] + order[-1:] if self.per_step >= 2 and len(order) > 1 else order[:self.per_step]
        picked += [i for i in order if i not in picked][:max(0, self.per_step - len(picked))]
        with self.path.open("a", encoding="utf-8") as out:
            for i in picked:
                out.write(json.dumps({"step": step, "prompt": prompts[i], "reply": replies[i],
                                      "reward": round(float(rewards[i]), 6)}, ensure_ascii=False) + "\n")


@dataclass
class StudioReward:
    """The RLOO run's reward function (see the module docstring); TRL calls it with keyword arguments."""

    score: Callable[[Sequence[str], Sequence[str]], list[float]]
    length_penalty: float = 0.0
    length_target: int = 0
    safety: SafetyChecker | None = None
    safety_penalty: float = 0.0
    samples: SampleLog | None = None
    __name__ = "studio_reward"  # TRL names the per-function metrics after it

    def terms(self, prompts: Sequence[str], replies: Sequence[str], lengths: Sequence[int]) -> dict[str, list[float]]:
        """Each term per reply (the model's score; the penalties as negative numbers; 1.0 where flagged)."""
        from trainers.prompt_format import ChatTurn

        scores = self.score(prompts, replies)
        for prompt, reply, value in zip(prompts, replies, scores, strict=True):
            if not math.isfinite(value):
                raise RewardNotFiniteError(
                    f"the reward model scored a reply {value} (prompt {prompt[-80:]!r}, reply {reply[:80]!r}); the "
                    "run stops rather than train on it: check the reward run (retrain it, or a lower learning rate)")
        out = {"model": scores}
        if self.length_penalty:
            out["length_penalty"] = [-self.length_penalty * max(0, n - self.length_target) for n in lengths]
        if self.safety is not None and self.safety_penalty:
            flagged = [0.0 if self.safety.check([ChatTurn("user", p)], r).safe else 1.0
                       for p, r in zip(prompts, replies, strict=True)]
            out["flagged"] = flagged
            out["safety_penalty"] = [-self.safety_penalty * f for f in flagged]
        return out

    def totals(self, terms: dict[str, list[float]]) -> list[float]:
        parts = [v for k, v in terms.items() if k != "flagged"]
        return [sum(values) for values in zip(*parts, strict=True)]

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]] | None = None,
                 trainer_state: TrainerState | None = None, log_metric: Callable[[str, float], None] | None = None,
                 **_columns: object) -> list[float]:
        lengths = [len(ids) for ids in completion_ids] if completion_ids is not None else [0] * len(completions)
        terms = self.terms(prompts, completions, lengths)
        totals = self.totals(terms)
        if log_metric is not None:
            for name, values in terms.items():
                log_metric(f"reward/{name}", sum(values) / len(values))
        if self.samples is not None:
            step = int(trainer_state.global_step) + 1 if trainer_state is not None else 0
            self.samples.write(step, prompts, completions, totals)
        return totals
