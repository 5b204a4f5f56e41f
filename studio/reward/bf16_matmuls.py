"""A scoring model's matmuls in bf16 and the rest in float32: what a bf16-autocast training run computed.

A reward run trained under bf16 autocast on a CPU with native bf16 (AVX512-BF16, AMX; ``trainers.run.device``)
computed every linear layer with bf16 inputs and weights (fp32 accumulation, a bf16 result) and kept the
residual stream, the norms and attention in float32. ``use_bf16_matmuls`` gives a merged decoder the same
arithmetic: each ``nn.Linear`` becomes a ``Bf16Linear`` (the weight rounded to bf16 once; the input rounded on
the way in, the result widened to float32 on the way out). Storing the whole decoder in bf16 instead (the
residual stream too) was less exact (mean score difference from float32 0.0069 against 0.0026 here, over the
bench's 50 replies) for no speed gain.

Where oneDNN can, the bf16 weight is also packed once into its blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``, what torch's inductor does for a frozen CPU model): a plain bf16
``F.linear`` repacks the weight at every call, which on 2 cores made the 126 matmuls of a scoring pass 53 ms
instead of 39 ms, and a one-token pass slower than in float32. Where those ops are missing (another torch build),
the plain bf16 ``F.linear`` computes the same numbers.

Imports torch: only the scoring worker process (and tests) load this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention
from torch import nn

# The row count oneDNN's packed layout is chosen for: about two ~60-token replies, a scoring pass's usual size.
PACKING_ROWS = 128
# oneDNN builds (JIT-compiles) a kernel per matrix shape and caches it. Every scoring pass has another token count,
# so each would pay for new kernels (~12 ms of a ~45 ms pass's matmuls); rows padded to a multiple of this reuse
# the kernels of earlier passes, for at most 15 rows of extra work.
ROW_BUCKET = 16


def _packed_ops_work() -> bool:
    """Whether this torch build packs bf16 weights for oneDNN (tried on a tiny matrix, compared with F.linear)."""
    ops = getattr(torch.ops, "mkldnn", None)
    if ops is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        weight = torch.randn(16, 32).to(torch.bfloat16)
        x = torch.randn(3, 32).to(torch.bfloat16)
        packed = ops._reorder_linear_weight(weight, PACKING_ROWS)
        got = ops._linear_pointwise(x, packed, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return bool(torch.allclose(got.float(), F.linear(x, weight).float(), atol=1e-2, rtol=1e-2))


class Bf16Linear(nn.Module):
    """``nn.Linear`` computed as bf16 autocast computes it; float32 in, float32 out. Inference only."""

    def __init__(self, linear: nn.Linear, packed: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().to(torch.bfloat16)
        self.packed = packed
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight, PACKING_ROWS) if packed
                             else weight)
        # autocast adds a bias in bf16 too; here it is added to the widened result (the layers scored have none)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.packed:
            y = F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)
            return y if self.bias is None else y + self.bias
        rows = x.numel() // self.in_features
        padded = -(-rows // ROW_BUCKET) * ROW_BUCKET
        low = torch.zeros(padded, self.in_features, dtype=torch.bfloat16)
        low[:rows] = x.reshape(rows, self.in_features)  # rounded to bf16 as it is copied
        y = torch.ops.mkldnn._linear_pointwise(low, self.weight, None, "none", [], "")[:rows]
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def use_bf16_matmuls(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` under ``module`` with a ``Bf16Linear`` (after any LoRA is merged); the count."""
    packed = _packed_ops_work()
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Bf16Linear(child, packed))
                replaced += 1
    return replaced
