"""Score only the reply tokens on CPU, not every position of the batch.

TRL 1.16's fused LM head (``trl.trainer.utils.add_fused_lm_head``) projects hidden states through the
LM head in chunks, and on CUDA/XPU it keeps only the positions whose label is not -100 ("compact").
Elsewhere it scores every position — prompt and padding included — because on compiled backends
(Neuron) a changing number of positions would recompile each batch. A CPU does not compile, and with
Gemma's 262,144-token vocabulary that projection is a large share of each step: prompts are usually
longer than replies. This module turns the compact path on for CPU tensors as well. The kernel choice
(Triton or the PyTorch tiles) is decided elsewhere, in ``trl.kernels.chunked_logprob``, and is not
touched. If TRL changes the private name, nothing is patched and training runs as TRL ships it.
"""

from __future__ import annotations

_patched = False


def enable_compact_logprobs_on_cpu() -> bool:
    """Patch TRL's compact-position choice to include CPU; return whether the patch is in place."""
    global _patched
    if _patched:
        return True
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        return False
    original = getattr(trl_utils, "_use_triton", None)
    if original is None or not callable(original):
        return False

    def _compact_on_cpu_too(device):  # noqa: ANN001, ANN202 - mirrors TRL's private signature
        return device.type == "cpu" or original(device)

    trl_utils._use_triton = _compact_on_cpu_too
    _patched = True
    return True
