"""TRL's ``RLOOTrainer`` with DPO's CPU speed-ups: reply tokens alone scored, whole-tile LM head, log-probs only
in the passes that read nothing else, and one policy pass a step instead of two.

An RLOO step in TRL 1.16 runs three forwards over the batch (``batch_size`` prompts x ``num_generations``
replies): the policy without gradient (the log-probs the KL penalty and the ratio start from), the reference
(adapter off) without gradient, and the policy with gradient for the loss (whose entropy is a metric). On a CPU,
TRL scores every position of each pass -- prompt and padding included -- through Gemma's 262,144-token
vocabulary (``trainers.compact_logprobs``), folds each vocabulary tile element by element
(``trainers.cpu_logprob_head``), and computes entropy, mean logit and top-1 in the two gradient-free passes
although nothing reads them. Here, on a CPU, the passes use the compact path and the whole-tile head (as DPO and
KTO do), the reference pass asks the head for the log-probabilities alone, and each prompt runs once for its
group's replies (``trainers.shared_prompt_forward``, ``by="prompt"``: one packed row per prompt, as DPO's pairs).

One policy pass (``reuses_policy_pass``): when the batch is generated, scored and learnt from exactly once
(``num_iterations == 1``, ``steps_per_generation == 1``: the studio's settings), the gradient-free policy pass
and the loss's pass see the same weights, the same rows and the same chunking, so they compute the same numbers.
The first is then run with gradient (and the entropy metric), its detached log-probs go where TRL's went (the KL
in the reward, ``old_logps``), and the tensors that carry the graph ride in the batch dict under
``POLICY_PASS_KEYS`` -- through TRL's shuffle, which permutes every tensor in it -- to ``_compute_loss``, which
uses them instead of a second forward. TRL's loss then sees a ratio of exactly 1 (TRL's own is 1 up to float
noise) and the same gradient. Anything else (several iterations or accumulation steps over one generation,
gradient checkpointing, MoE auxiliary losses, evaluation, several processes: DDP's reducer is not driven with a
forward carried past other forwards) keeps TRL's two passes. CUDA keeps TRL's own kernel.

The reward callable (the studio's reward model and its extra terms) runs under the accelerator's autocast, as
TRL runs a reward model it is given directly.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import RLOOTrainer

from trainers.cpu_logprob_head import log_probs_only
from trainers.shared_prompt_forward import share_prompt_forward

# The private RLOOTrainer methods overridden here, with the parameters (after self) they have in TRL 1.16
# (checked with the llama-rollout trainer's own, trainers.rollout_trainer.check_trl_compatible).
OVERRIDDEN_SIGNATURES: dict[str, tuple[str, ...]] = {
    "_generate_and_score_completions": ("inputs",),
    "_get_per_token_logps_and_entropies": ("model", "input_ids", "attention_mask", "logits_to_keep"),
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
    "_compute_loss": ("model", "inputs"),
}
# The policy pass's per-token log-probs and entropies with their graph, carried from scoring to the loss.
POLICY_PASS_KEYS = ("studio_policy_logps", "studio_policy_entropies")


def enable_cpu_speedups() -> bool:
    """Install the compact positions and the whole-tile head for CPU tensors; whether both are in place."""
    from trainers.compact_logprobs import enable_compact_logprobs_on_cpu
    from trainers.cpu_logprob_head import enable_cpu_logprob_head

    compact = enable_compact_logprobs_on_cpu()
    whole_tile = enable_cpu_logprob_head()
    return compact and whole_tile


class StudioRLOOTrainer(RLOOTrainer):
    """``RLOOTrainer`` with the CPU speed-ups above installed when it trains on a CPU, and one policy pass a step
    where the settings allow it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cpu_speedups = self.accelerator.device.type == "cpu" and enable_cpu_speedups()
        # After TRL has added its fused LM head (in its __init__): each prompt once for its group's replies.
        self.shares_prompt = self.cpu_speedups and share_prompt_forward(self.model, by="prompt")
        self._capture_policy_pass = False  # set while scoring: the next pass is the policy's, run with gradient
        self._captured_pass: tuple[torch.Tensor, torch.Tensor | None] | None = None  # from scoring to the batch
        self._loss_pass: tuple[torch.Tensor, torch.Tensor | None] | None = None  # from the batch to the loss

    def reuses_policy_pass(self) -> bool:
        """Whether this step's loss can reuse the scoring's policy pass (see the module's docstring)."""
        return (self.model.training and self.num_iterations == 1 and self.args.steps_per_generation == 1
                and not self.args.gradient_checkpointing and not self.aux_loss_enabled
                and self.accelerator.num_processes == 1)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        # Everything scored in here is read for its log-probabilities only, but for a captured policy pass,
        # whose entropy is the loss pass's metric.
        self._capture_policy_pass = self.reuses_policy_pass()
        self._captured_pass = None
        try:
            with log_probs_only():
                output = super()._generate_and_score_completions(inputs)
        finally:
            self._capture_policy_pass = False
        captured, self._captured_pass = self._captured_pass, None
        if captured is not None:
            output[POLICY_PASS_KEYS[0]], output[POLICY_PASS_KEYS[1]] = captured
        return output

    def _get_per_token_logps_and_entropies(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                           logits_to_keep: int, *args: Any, **kwargs: Any):  # noqa: ANN201 - TRL's
        if self._capture_policy_pass:  # the scoring's first pass: the policy's, on the batch the loss will see
            self._capture_policy_pass = False
            kwargs["compute_entropy"] = True
            with torch.enable_grad(), log_probs_only(False):
                logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
            self._captured_pass = (logps, entropies)
            return logps.detach(), None, aux
        if self._loss_pass is not None:  # the loss's pass, already computed while scoring
            (logps, entropies), self._loss_pass = self._loss_pass, None
            return logps, entropies, None
        return super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)

    def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any
                           ) -> torch.Tensor:
        # TRL prepares a reward *model* with the accelerator, which scores it under the run's autocast (bf16 on
        # a CPU with native bf16); the studio's reward is a callable around its reward model, so it gets the same
        # precision here (half the time of float32 on the default model: 0.84 -> 0.43 s for 16 replies).
        with self.accelerator.autocast():
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if POLICY_PASS_KEYS[0] in inputs:
            inputs = dict(inputs)
            self._loss_pass = (inputs.pop(POLICY_PASS_KEYS[0]), inputs.pop(POLICY_PASS_KEYS[1]))
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._loss_pass = None


__all__ = ["POLICY_PASS_KEYS", "StudioRLOOTrainer", "enable_cpu_speedups"]
