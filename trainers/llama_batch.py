"""One ``llama_decode`` call over rows of (token, position, sequence, wants logits): shared by the studio's
batched candidates (studio/inference/batched_generation.py) and RLOO's rollouts (trainers/llama_rollouts.py),
which both drive several sequences of one llama.cpp context at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # llama_cpp loads the native library: only when something decodes
    import llama_cpp

DecodeRow = tuple[int, int, int, bool]  # token, position, sequence id, whether its logits are read


def decode_rows(ctx: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch, rows: Sequence[DecodeRow]) -> int:
    """Fill ``batch`` (from ``llama_batch_init``, room for ``len(rows)``) with ``rows`` and decode them in one
    ``llama_decode``; llama.cpp's status (0 when every row was decoded)."""
    import llama_cpp

    for i, (token, pos, seq, logits) in enumerate(rows):
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = 1 if logits else 0
    batch.n_tokens = len(rows)
    return int(llama_cpp.llama_decode(ctx, batch))
