"""Replies to one prompt scored by a transformers reward model at the cost of the replies alone.

What ``transformers_reward_scores`` computes (each reply's ``reward_input_ids`` through the model, the head on the
last token), with the work a chat's candidates share done once (the worker process, ``torch_worker``, runs it):

- the LoRA merged into the base weights (one matmul per projection instead of base + A·B);
- the prompt's keys and values computed once, for every reply, and kept for the next call (the chat's next
  round, the next candidate of this one): only the tokens after what is cached go through the model;
- the replies in one forward as a batch sharing that prefix (right-padded: a causal model's real tokens never
  see the padding after them), the head on each reply's last real token only;
- ``torch.inference_mode`` (no autograd bookkeeping);
- optionally (``weights_dtype=torch.bfloat16``: the ``torch-bf16`` backend) the merged decoder stored and run in
  bf16, as the trainer ran it under bf16 autocast; the head stays float32. ~1.3x faster on a CPU with native bf16
  (AVX512-BF16, AMX), but not exact: scores moved by up to 0.008 (a fifth of their spread) on the bench.

Imports torch: only the worker process (and tests) load this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from trainers.methods.reward import reward_input_ids
from trainers.pair_selection import at_token_boundary

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# A key and a value tensor per layer: (1, kv heads, tokens, head dim) each.
LayerKV = tuple[torch.Tensor, torch.Tensor]


class SharedPromptScorer:
    """Scores replies to a prompt like ``transformers_reward_scores`` does, the prompt computed once and kept.

    ``model`` is a loaded reward model (``load_trained_reward_model``: a PEFT model over a transformers
    sequence-classification model); its LoRA is merged in place, so the caller hands it over.
    ``weights_dtype``: the decoder's dtype once merged (float32: exactly the trainer's model; bfloat16: see above)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 weights_dtype: torch.dtype = torch.float32) -> None:
        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        merged.eval()
        self._body = getattr(merged, merged.base_model_prefix)  # the decoder, without the classification head
        if weights_dtype != torch.float32:
            self._body.to(weights_dtype)  # merged first: the LoRA's product is added in float32, then rounded once
        self._head = merged.score
        self._tokenizer = tokenizer
        self._pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self._cached_ids: list[int] = []
        self._cached_kv: list[LayerKV] = []

    def token_ids(self, prompt: str, reply: str) -> list[int]:
        """The tokens a reply is scored on, as the trainer tokenised it (``reward_input_ids``)."""
        kept, moved, _ = at_token_boundary(prompt, reply, reply)
        return reward_input_ids(self._tokenizer, kept, moved)

    def score(self, prompt: str, replies: Sequence[str]) -> list[float]:
        if not replies:
            return []
        rows = [self.token_ids(prompt, reply) for reply in replies]
        # The prefix every row shares (each keeps at least its last token to read the head on).
        shared = min(len(row) - 1 for row in rows)
        for i in range(shared):
            if any(row[i] != rows[0][i] for row in rows):
                shared = i
                break
        with torch.inference_mode():
            prefix = self._prefix_kv(rows[0][:shared])
            return self._score_rows([row[shared:] for row in rows], prefix)

    def _prefix_kv(self, ids: list[int]) -> list[LayerKV]:
        """Keys and values of ``ids`` (batch of one), from the cache as far as it agrees, the rest computed."""
        from transformers import DynamicCache

        keep = 0
        for cached, wanted in zip(self._cached_ids, ids, strict=False):
            if cached != wanted:
                break
            keep += 1
        kv = [(k[:, :, :keep], v[:, :, :keep]) for k, v in self._cached_kv] if keep else []
        if keep < len(ids):
            cache = DynamicCache(kv) if kv else DynamicCache()
            out = self._body(input_ids=torch.tensor([ids[keep:]]), cache=cache, use_cache=True)
            kv = [(layer.keys, layer.values) for layer in out.cache.layers]
        self._cached_ids, self._cached_kv = list(ids), kv
        return kv

    def _score_rows(self, suffixes: list[list[int]], prefix: list[LayerKV]) -> list[float]:
        width = max(len(s) for s in suffixes)
        batch = torch.tensor([s + [self._pad] * (width - len(s)) for s in suffixes])
        n = len(suffixes)
        from transformers import DynamicCache

        # A plain cache (no sliding-window layers): the model's masks still apply each layer's window, and the
        # prompt's tensors are only read (expand is a view; the forward concatenates into new tensors).
        cache = DynamicCache([(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix]) if prefix \
            else DynamicCache()
        hidden = self._body(input_ids=batch, cache=cache, use_cache=True).last_hidden_state
        last = hidden[torch.arange(n), torch.tensor([len(s) - 1 for s in suffixes])]
        return [float(x) for x in self._head(last.to(self._head.weight.dtype))[:, 0]]
