"""TRL's ``KTOTrainer`` with DPO's CPU speed-ups: reply tokens alone scored, whole-tile LM head, log-probs only
where nothing else is read.

A KTO step runs four forwards: the policy on the batch (with gradient), the policy on the KL batch (each prompt
with another row's reply), and the reference (adapter off) on both. TRL 1.16 scores every position of each --
prompt and padding included -- through the full vocabulary on a CPU (``trainers.compact_logprobs``), folds each
vocabulary tile element by element (``trainers.cpu_logprob_head``), and computes the entropy and mean logit in all
four passes although only the policy pass's are read (its metrics). Here, on a CPU, the first two are switched to
the compact path and the whole-tile head (as DPO does), and the three gradient-free passes of a training step ask
the head for the log-probabilities alone. The loss is TRL's: the same log-probabilities (float-addition order
aside), the same formula.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from trl import KTOTrainer

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel
    from transformers.utils import ModelOutput

# Set for the length of a training step's loss: its gradient-free passes (KL, reference, reference KL) need the
# log-probabilities only. Not set in evaluation, whose gradient-free policy pass feeds the entropy metrics.
_in_training_loss: contextvars.ContextVar[bool] = contextvars.ContextVar("kto_training_loss", default=False)
_patched = False


@contextlib.contextmanager
def _training_loss() -> Iterator[None]:
    token = _in_training_loss.set(True)
    try:
        yield
    finally:
        _in_training_loss.reset(token)


def enable_log_probs_only_without_grad() -> bool:
    """Wrap the fused LM head (after ``enable_cpu_logprob_head``) so a gradient-free pass inside a KTO training
    loss computes the log-probabilities alone; return whether the wrapper is in place."""
    global _patched
    if _patched:
        return True
    import torch
    import trl.trainer.utils as trl_utils

    from trainers.cpu_logprob_head import log_probs_only

    inner = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if inner is None or not hasattr(inner, "apply"):
        return False

    class LogProbsOnlyWithoutGrad:
        """The head as installed, told to skip entropy / mean logit in a training step's no-grad passes."""

        @staticmethod
        def apply(hidden, *args):  # noqa: ANN001, ANN002, ANN205 - TRL's positional call
            if _in_training_loss.get() and not torch.is_grad_enabled():
                with log_probs_only():
                    return inner.apply(hidden, *args)
            return inner.apply(hidden, *args)

    trl_utils._ChunkedLogProbFunction = LogProbsOnlyWithoutGrad
    _patched = True
    return True


class StudioKTOTrainer(KTOTrainer):
    """``KTOTrainer`` with the CPU speed-ups above installed when it trains on a CPU."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.accelerator.device.type == "cpu":
            from trainers.compact_logprobs import enable_compact_logprobs_on_cpu
            from trainers.cpu_logprob_head import enable_cpu_logprob_head

            enable_compact_logprobs_on_cpu()
            enable_cpu_logprob_head()
            enable_log_probs_only_without_grad()

    def _compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool,
                      ) -> torch.Tensor | tuple[torch.Tensor, ModelOutput]:
        if not self.model.training:
            return super()._compute_loss(model, inputs, return_outputs)
        with _training_loss():
            return super()._compute_loss(model, inputs, return_outputs)
