"""A reward model scored in the quantised llama.cpp model the chat serves: no torch, no second copy of the weights.

The reward run's LoRA is exported to a GGUF LoRA and applied to a second llama.cpp context on the engine's
own model (contexts share the weights; this one has its own KV cache and adapter, so the chat's context, its
adapter and its prompt cache are untouched and scoring need not hold the engine's lock). A reply's reward is
the final hidden state (after the output norm, what transformers' sequence-classification head reads) of
its last token, times the exported head: ``llama_get_embeddings_ith`` on a context switched to embeddings.

Cost: with embeddings on, llama.cpp outputs every token of a batch, and for a causal model that includes the
output head (262k rows on Gemma). So the tokens are decoded with embeddings off and nothing requested, and
only each reply's last token is decoded with embeddings on. The prompt is evaluated once per call for all
replies (sequence 0, copied to each reply's sequence) and kept for the next call on the same conversation.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from studio.inference import runtime_env  # noqa: F401  (OMP_WAIT_POLICY before llama_cpp is imported)
from studio.inference.batched_generation import common_prefix
from studio.inference.llama_log import recent_llama_log
from studio.reward.head import RewardHead, RewardScorerError, split_conversation
from trainers.pair_selection import at_token_boundary
from trainers.prompt_format import ChatTurn

if TYPE_CHECKING:
    from pathlib import Path

    from studio.inference.engine import ChatEngine

# Replies scored side by side in one call (more are scored in groups of this many); sequence 0 holds the prompt.
REPLIES_PER_BATCH = 8


class LlamaRewardScorer:
    """``RewardScorer`` on the engine's llama.cpp model: its own context, the run's LoRA, the exported head.

    One call at a time (a lock); close it before the engine's model is closed or switched."""

    def __init__(self, engine: ChatEngine, run_id: int, adapter_path: Path, head: RewardHead) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._engine = engine
        self._llm = engine.llama
        self._run_id = run_id
        self._head = head
        self._lock = threading.Lock()
        self._cached: list[int] = []  # the tokens sequence 0 holds
        n_embd = int(llama_cpp.llama_model_n_embd(self._llm.model))
        if head.weight.shape != (n_embd,):
            raise RewardScorerError(
                f"run {run_id}'s reward head has {head.weight.shape[0]} inputs but {engine.identity.model_id} "
                f"has hidden size {n_embd}; the run was trained on another model"
            )
        self._n_embd = n_embd
        params = llama_cpp.llama_context_default_params()
        self._n_ctx = engine.n_ctx
        params.n_ctx = self._n_ctx
        params.n_batch = params.n_ubatch = min(512, self._n_ctx)
        params.n_seq_max = REPLIES_PER_BATCH + 1
        params.kv_unified = True  # every sequence may use the whole context; copies of the prompt share cells
        params.embeddings = False  # on only for each reply's last token (see the module docstring)
        params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE
        params.n_threads = engine.n_threads_batch
        params.n_threads_batch = engine.n_threads_batch
        # Loading the adapter adds it to the model the chat decodes with: not while the chat's context runs.
        with engine.exclusive():
            self._adapter = llama_cpp.llama_adapter_lora_init(self._llm.model, str(adapter_path).encode("utf-8"))
            if not self._adapter:  # a NULL pointer object, never None
                raise RewardScorerError(f"llama.cpp could not load run {run_id}'s adapter {adapter_path}"
                                        f"{_llama_reason()}")
            self._ctx = llama_cpp.llama_init_from_model(self._llm.model, params)
            if not self._ctx:
                llama_cpp.llama_adapter_lora_free(self._adapter)
                raise RewardScorerError(f"llama.cpp could not make a scoring context for run {run_id}{_llama_reason()}")
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapter)
        scales = (ctypes.c_float * 1)(1.0)
        if llama_cpp.llama_set_adapters_lora(self._ctx, adapters, 1, scales) != 0:
            self.close()
            raise RewardScorerError(f"llama.cpp could not apply run {run_id}'s adapter{_llama_reason()}")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(params.n_batch, 0, params.n_seq_max)
        self._n_batch = int(params.n_batch)

    @property
    def run_id(self) -> int:
        return self._run_id

    def score(self, conversation: Sequence[ChatTurn], replies: Sequence[str]) -> list[float]:
        if not replies:
            return []
        system, turns = split_conversation(conversation)
        prompt = self._engine.prompt_format.render(system, turns)
        with self._lock:
            if self._ctx is None:
                raise RewardScorerError(f"the scorer of run {self._run_id} is closed")
            if getattr(self._llm, "_model", None) is None:
                raise RewardScorerError(f"the model run {self._run_id} scored with was closed")
            scores: list[float] = []
            for start in range(0, len(replies), REPLIES_PER_BATCH):
                scores.extend(self._score_group(prompt, replies[start:start + REPLIES_PER_BATCH]))
            return scores

    def prepare(self, conversation: Sequence[ChatTurn]) -> None:
        system, turns = split_conversation(conversation)
        prompt = self._engine.prompt_format.render(system, turns)
        # All of the prompt's tokens but the last, which may merge with a reply's first characters.
        ids = self._tokenize(at_token_boundary(prompt, "", "")[0])[:-1]
        with self._lock:
            if self._ctx is None or getattr(self._llm, "_model", None) is None:
                return  # scoring says why, if it is ever asked
            self._hold_prompt(ids)

    def _hold_prompt(self, ids: list[int]) -> None:
        """Sequence 0 holds ``ids``: what it holds already kept as far as it agrees, the rest decoded."""
        keep = common_prefix(self._cached, ids)
        self._lib.llama_memory_seq_rm(self._memory, 0, keep, -1)
        self._cached = self._cached[:keep]
        self._decode([(0, pos, ids[pos]) for pos in range(keep, len(ids))])
        self._cached = ids

    def token_ids(self, prompt: str, reply: str) -> list[int]:
        """What a reply is scored on, as the trainer tokenised it (``trainers.methods.reward.reward_input_ids``):
        ``prompt + reply`` with BOS, EOS appended, cut to the context keeping the last token."""
        prompt, reply, _ = at_token_boundary(prompt, reply, reply)
        ids = self._tokenize(prompt + reply)
        if self._head.append_eos and self._head.eos_token_id is not None:
            ids = [*ids[: self._n_ctx - 1], int(self._head.eos_token_id)]
        return ids[: self._n_ctx]

    def _tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def _score_group(self, prompt: str, replies: Sequence[str]) -> list[float]:
        lib = self._lib
        full = [self.token_ids(prompt, reply) for reply in replies]
        prompt_ids = self._tokenize(at_token_boundary(prompt, "", "")[0])
        # The shared prefix: the prompt's tokens all replies begin with (each keeps at least its last token).
        shared = min(common_prefix(prompt_ids, ids) for ids in full)
        shared = min(shared, *(len(ids) - 1 for ids in full))
        self._hold_prompt(full[0][:shared])
        for seq, _ids in enumerate(full, start=1):
            lib.llama_memory_seq_rm(self._memory, seq, -1, -1)
            if shared:
                lib.llama_memory_seq_cp(self._memory, 0, seq, 0, shared)
        try:
            body = [(seq, pos, ids[pos]) for seq, ids in enumerate(full, start=1) for pos in range(shared, len(ids) - 1)]
            self._decode(body)
            lib.llama_set_embeddings(self._ctx, True)
            try:
                lasts = [(seq, len(ids) - 1, ids[-1]) for seq, ids in enumerate(full, start=1)]
                self._decode(lasts, outputs=True)
                hidden = [
                    np.ctypeslib.as_array(lib.llama_get_embeddings_ith(self._ctx, i), shape=(self._n_embd,))
                    for i in range(len(lasts))
                ]
                return [float(np.dot(h.astype(np.float64), self._head.weight.astype(np.float64))) for h in hidden]
            finally:
                lib.llama_set_embeddings(self._ctx, False)
        finally:
            for seq in range(1, len(full) + 1):
                lib.llama_memory_seq_rm(self._memory, seq, -1, -1)

    def _decode(self, tokens: Sequence[tuple[int, int, int]], outputs: bool = False) -> None:
        """Decode (sequence, position, token) triples in batches; ``outputs``: every token's output kept (only
        one batch then, so ``llama_get_embeddings_ith`` indexes them in order)."""
        if outputs and len(tokens) > self._n_batch:
            raise RewardScorerError(f"{len(tokens)} replies at once is more than the batch holds")
        batch = self._batch
        for start in range(0, len(tokens), self._n_batch):
            chunk = tokens[start:start + self._n_batch]
            for i, (seq, pos, token) in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = outputs
            batch.n_tokens = len(chunk)
            status = self._lib.llama_decode(self._ctx, batch)
            if status != 0:
                self._cached = []
                self._lib.llama_memory_clear(self._memory, True)
                raise RewardScorerError(f"llama.cpp could not evaluate the replies (llama_decode returned {status})"
                                        f"{_llama_reason()}")

    def close(self) -> None:
        lib = self._lib
        with self._lock:
            if getattr(self, "_batch", None) is not None:
                lib.llama_batch_free(self._batch)
                self._batch = None
            if getattr(self, "_ctx", None) is not None:
                lib.llama_free(self._ctx)
                self._ctx = None
            adapter, self._adapter = getattr(self, "_adapter", None), None
            # llama.cpp frees the adapters left on a model with it; freeing it again afterwards is a double free.
            if adapter and getattr(self._llm, "_model", None) is not None:
                with self._engine.exclusive():
                    lib.llama_adapter_lora_free(adapter)


def _llama_reason() -> str:
    reason = recent_llama_log()
    return f": {reason}" if reason else ""
