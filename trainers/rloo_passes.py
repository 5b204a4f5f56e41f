"""TRL's ``RLOOTrainer`` with DPO's CPU speed-ups: reply tokens alone scored, whole-tile LM head, log-probs only
in the passes that read nothing else.

An RLOO step runs three forwards over the batch (``batch_size`` prompts x ``num_generations`` replies): the
policy without gradient (the log-probs the KL penalty and the ratio start from), the reference (adapter off)
without gradient, and the policy with gradient for the loss (whose entropy is a metric). On a CPU, TRL 1.16
scores every position of each pass -- prompt and padding included -- through Gemma's 262,144-token vocabulary
(``trainers.compact_logprobs``), folds each vocabulary tile element by element (``trainers.cpu_logprob_head``),
and computes entropy, mean logit and top-1 in the two gradient-free passes although nothing reads them. Here, on
a CPU, the first two are switched to the compact path and the whole-tile head (as DPO and KTO do), and
``_generate_and_score_completions`` (generation, the two gradient-free passes, the rewards) asks the head for
the log-probabilities alone. The loss is TRL's: the same log-probabilities (float-addition order aside), the same
formula. CUDA keeps TRL's own kernel.
"""

from __future__ import annotations

from typing import Any

from trl import RLOOTrainer

from trainers.cpu_logprob_head import log_probs_only


def enable_cpu_speedups() -> bool:
    """Install the compact positions and the whole-tile head for CPU tensors; whether both are in place."""
    from trainers.compact_logprobs import enable_compact_logprobs_on_cpu
    from trainers.cpu_logprob_head import enable_cpu_logprob_head

    compact = enable_compact_logprobs_on_cpu()
    whole_tile = enable_cpu_logprob_head()
    return compact and whole_tile


class StudioRLOOTrainer(RLOOTrainer):
    """``RLOOTrainer`` with the CPU speed-ups above installed when it trains on a CPU."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cpu_speedups = self.accelerator.device.type == "cpu" and enable_cpu_speedups()

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        # Everything scored in here (the policy's and the reference's gradient-free passes) is read for its
        # log-probabilities only; the entropy metric comes from the loss's own pass, outside this call.
        with log_probs_only():
            return super()._generate_and_score_completions(inputs)


__all__ = ["StudioRLOOTrainer", "enable_cpu_speedups"]
