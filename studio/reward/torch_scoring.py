"""Replies to one prompt scored by a transformers reward model at the cost of the replies alone.

What ``transformers_reward_scores`` computes (each reply's ``reward_input_ids`` through the model, the head on the
last token), with the work a chat's candidates share done once (the worker process, ``torch_worker``, runs it):

- the LoRA merged into the base weights (one matmul per projection instead of base + A·B);
- the prompt's keys and values computed once, for every reply, and kept for the next call (the chat's next
  round, the next candidate of this one): only the tokens after what is cached go through the model;
- one forward pass per call: what is new of the prompt and every reply packed into one row, with an attention
  mask that lets each reply see the prompt and itself only and positions that restart where the prompt ends
  (``trainers.shared_prompt_forward.prepared_masks``, as DPO's and the reward trainer's packed rows). Each pass
  reads all the weights (~30-50 ms on 2 cores whatever its length), so a new prompt costs one pass, not two, and
  no reply is padded to the longest. Models whose attention takes no prepared mask get a prompt pass and then
  the replies as a right-padded batch;
- the head on each reply's last token only; ``torch.inference_mode`` (no autograd bookkeeping);
- ``precision="bf16"``: the matmuls in bf16, the rest in float32 (``bf16_matmuls``), as the trainer's bf16
  autocast computed them: ~2x faster on a CPU with native bf16, scores within a few thousandths of float32's.

Imports torch: only the worker process (and tests) load this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch

from studio.reward.bf16_matmuls import use_bf16_matmuls
from trainers.methods.reward import reward_input_ids
from trainers.pair_selection import at_token_boundary
from trainers.shared_prompt_forward import mask_kind, prepared_masks

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# A key and a value tensor per layer: (1, kv heads, tokens, head dim) each.
LayerKV = tuple[torch.Tensor, torch.Tensor]
# The decoder's arithmetic: float32 throughout, or its matmuls in bf16 (``bf16_matmuls``).
Precision = Literal["fp32", "bf16"]


class SharedPromptScorer:
    """Scores replies to a prompt like ``transformers_reward_scores`` does, the prompt computed once and kept.

    ``model`` is a loaded reward model (``load_trained_reward_model``: a PEFT model over a transformers
    sequence-classification model); its LoRA is merged in place, so the caller hands it over.
    ``precision``: "fp32" (exactly the float32 model) or "bf16" (its matmuls in bf16, see above)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 precision: Precision = "fp32") -> None:
        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        merged.eval()
        self._body = getattr(merged, merged.base_model_prefix)  # the decoder, without the classification head
        if precision == "bf16":
            use_bf16_matmuls(self._body)  # merged first: the LoRA's product is added in float32, then rounded once
        self.precision = precision
        self._head = merged.score
        self._mask_kind = mask_kind(self._body.config)
        self._tokenizer = tokenizer
        self._pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self._cached_ids: list[int] = []
        self._cached_kv: list[LayerKV] = []

    def token_ids(self, prompt: str, reply: str) -> list[int]:
        """The tokens a reply is scored on, as the trainer tokenised it (``reward_input_ids``)."""
        kept, moved, _ = at_token_boundary(prompt, reply, reply)
        return reward_input_ids(self._tokenizer, kept, moved)

    def prepare(self, prompt: str) -> None:
        """Compute the prompt's keys and values now and keep them: its tokens but the last (which may merge with
        a reply's first characters) are then cached for the replies scored next."""
        kept, _, _ = at_token_boundary(prompt, "", "")
        ids = list(self._tokenizer(kept)["input_ids"])[:-1]
        with torch.inference_mode():
            self._prefix_kv(ids, self._cached_agreement(ids))

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
            keep = self._cached_agreement(rows[0][:shared])
            last = self._packed_pass(rows, shared, keep) if self._mask_kind else None
            if last is None:
                prefix = self._prefix_kv(rows[0][:shared], keep)
                last = self._padded_pass([row[shared:] for row in rows], prefix)
            return [float(x) for x in self._head(last.to(self._head.weight.dtype))[:, 0]]

    def _cached_agreement(self, ids: list[int]) -> int:
        """How many leading tokens of ``ids`` the cache already holds."""
        keep = 0
        for cached, wanted in zip(self._cached_ids, ids, strict=False):
            if cached != wanted:
                break
            keep += 1
        return keep

    def _kept_kv(self, keep: int) -> list[LayerKV]:
        return [(k[:, :, :keep], v[:, :, :keep]) for k, v in self._cached_kv] if keep else []

    def _packed_pass(self, rows: list[list[int]], shared: int, keep: int) -> torch.Tensor | None:
        """One forward of ``prompt[keep:shared] | reply 1 | reply 2 | ...`` over the cached ``prompt[:keep]``: the
        final hidden state at each reply's last token, the prompt's keys and values cached; None where the model
        cannot be given the mask (then nothing is computed)."""
        from transformers import DynamicCache

        fresh = rows[0][keep:shared]
        suffixes = [row[shared:] for row in rows]
        tokens = fresh + [t for suffix in suffixes for t in suffix]
        segment = torch.tensor([0] * len(fresh) + [i for i, s in enumerate(suffixes, start=1) for _ in s])
        query_pos = torch.tensor(list(range(keep, shared)) + [shared + j for s in suffixes for j in range(len(s))])
        key_pos = torch.cat([torch.arange(keep), query_pos])
        order = torch.arange(len(tokens))
        packed_allowed = (order[None, :] <= order[:, None]) & (
            (segment[None, :] == 0) | (segment[None, :] == segment[:, None]))
        allowed = torch.cat([torch.ones(len(tokens), keep, dtype=torch.bool), packed_allowed], dim=1)
        masks = prepared_masks(self._body.config, allowed[None], query_pos[None], key_pos[None], self._mask_kind,
                               torch.float32)
        if masks is None:
            return None
        kv = self._kept_kv(keep)
        # A plain cache (no sliding-window layers: the masks apply each layer's window), read-only here.
        out = self._body(input_ids=torch.tensor([tokens]), position_ids=query_pos[None], attention_mask=masks,
                         cache=DynamicCache(kv) if kv else DynamicCache(), use_cache=True)
        self._cached_ids = rows[0][:shared]
        self._cached_kv = [(layer.keys[:, :, :shared], layer.values[:, :, :shared]) for layer in out.cache.layers]
        ends = torch.tensor([len(s) for s in suffixes]).cumsum(0) + len(fresh) - 1
        return out.last_hidden_state[0, ends]

    def _prefix_kv(self, ids: list[int], keep: int) -> list[LayerKV]:
        """Keys and values of ``ids`` (batch of one): the cache's first ``keep``, the rest computed."""
        from transformers import DynamicCache

        kv = self._kept_kv(keep)
        if keep < len(ids):
            cache = DynamicCache(kv) if kv else DynamicCache()
            out = self._body(input_ids=torch.tensor([ids[keep:]]), cache=cache, use_cache=True)
            kv = [(layer.keys, layer.values) for layer in out.cache.layers]
        self._cached_ids, self._cached_kv = list(ids), kv
        return kv

    def _padded_pass(self, suffixes: list[list[int]], prefix: list[LayerKV]) -> torch.Tensor:
        """The replies as a right-padded batch over the prompt's keys and values (a causal model's real tokens never
        see the padding after them): the final hidden state at each reply's last token."""
        from transformers import DynamicCache

        width = max(len(s) for s in suffixes)
        batch = torch.tensor([s + [self._pad] * (width - len(s)) for s in suffixes])
        n = len(suffixes)
        # The prompt's tensors are only read (expand is a view; the forward concatenates into new tensors).
        cache = DynamicCache([(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix]) if prefix \
            else DynamicCache()
        hidden = self._body(input_ids=batch, cache=cache, use_cache=True).last_hidden_state
        return hidden[torch.arange(n), torch.tensor([len(s) - 1 for s in suffixes])]
