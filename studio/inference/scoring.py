"""How likely the loaded model finds a fixed reply, and preference metrics built on that.

Scoring evaluates the prompt and the reply in one llama.cpp batch and asks for logits only at the
positions that predict a reply token. The two shortcuts llama-cpp-python offers are far worse here:
``logits_all=True`` reserves an n_ctx × 262k score array (~2 GiB at n_ctx 2048), and
``create_completion(echo=True, logprobs=...)`` sorts the whole vocabulary per token in Python (~10 s for a
short reply against ~0.3 s this way). See docs/ARCHITECTURE.md and the field notes.

The scores are sums of natural-log probabilities, as DPO uses them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import ctypes

    from llama_cpp import Llama

    from studio.inference.engine import ChatEngine

# Logit rows llama.cpp keeps per decode grow its output buffer for good (n_vocab floats each, ~1 MiB
# with Gemma's 262k vocabulary) and the buffer never shrinks; 32 rows bound it at ~32 MiB while the
# output projection, not the number of decodes, stays the cost.
MAX_OUTPUTS_PER_DECODE = 32


class ScoringError(ValueError):
    """A reply cannot be scored (it does not fit the context, or llama.cpp refused the batch)."""


@dataclass(frozen=True)
class ReplyScore:
    """Log-probability of a reply given its prompt: the sum over its tokens, their count and mean."""

    total_logprob: float
    n_tokens: int
    mean_logprob: float
    token_logprobs: tuple[float, ...] = ()


def _reply_tokens(engine: ChatEngine, prompt_tokens: list[int], prompt_text: str, reply: str) -> list[int]:
    full = engine.tokenize(prompt_text + reply)
    if full[: len(prompt_tokens)] == prompt_tokens:
        return full[len(prompt_tokens) :]
    # A merge across the boundary (rare: the prompt's last piece and the reply's first fuse into one
    # token) leaves no clean split. Generation appends tokens after the prompt's own tokens, so the
    # reply tokenised on its own (no BOS) is then the closer match to what the engine would produce.
    return engine.llama.tokenize(reply.encode("utf-8"), add_bos=False, special=True)


def _row_logprob(logits_ptr: ctypes._Pointer[ctypes.c_float], n_vocab: int, target: int) -> float:
    row = np.ctypeslib.as_array(logits_ptr, shape=(n_vocab,))  # a view: llama.cpp owns the memory
    top = float(row.max())
    # float64 accumulation: 262k float32 exponentials summed in float32 drift in the 5th digit.
    log_sum = top + math.log(float(np.exp(row - top).sum(dtype=np.float64)))
    return float(row[target]) - log_sum


def _decode_scores(llama: Llama, tokens: list[int], first_output: int) -> list[float]:
    """Decode ``tokens[:-1]`` and return log p(tokens[i+1] | tokens[:i+1]) for i ≥ first_output."""
    import llama_cpp

    ctx = llama.ctx
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llama.model))
    inputs = tokens[:-1]  # the last reply token is only ever a target, never an input
    capacity = max(1, int(llama.n_batch))
    batch = llama_cpp.llama_batch_init(capacity, 0, 1)
    scores: list[float] = []
    try:
        start = 0
        while start < len(inputs):
            end = min(len(inputs), start + capacity)
            if end > first_output:  # cap the logit rows this decode asks for
                end = min(end, max(start, first_output) + MAX_OUTPUTS_PER_DECODE)
            for slot, pos in enumerate(range(start, end)):
                batch.token[slot] = inputs[pos]
                batch.pos[slot] = pos
                batch.n_seq_id[slot] = 1
                batch.seq_id[slot][0] = 0
                batch.logits[slot] = 1 if pos >= first_output else 0
            batch.n_tokens = end - start
            status = llama_cpp.llama_decode(ctx, batch)
            if status != 0:
                raise ScoringError(f"llama.cpp could not evaluate the reply (llama_decode returned {status})")
            for slot, pos in enumerate(range(start, end)):
                if pos >= first_output:
                    ptr = llama_cpp.llama_get_logits_ith(ctx, slot)
                    scores.append(_row_logprob(ptr, n_vocab, tokens[pos + 1]))
            start = end
    finally:
        llama_cpp.llama_batch_free(batch)
    return scores


def _clear_memory(llama: Llama) -> None:
    import llama_cpp

    memory = llama_cpp.llama_get_memory(llama.ctx)
    if memory:
        llama_cpp.llama_memory_clear(memory, True)


def reply_logprob(engine: ChatEngine, prompt_text: str, reply: str) -> ReplyScore:
    """Score ``reply`` as a continuation of ``prompt_text`` under the engine's model (and active adapter).

    The prompt is tokenised as generation tokenises it (with BOS); the reply's tokens are those of
    prompt + reply after the prompt's. An empty reply scores 0 (log 1) with ``n_tokens`` 0.

    Holds the engine's lock, so it never interleaves with a generation, and resets the engine's prompt
    cache afterwards: the KV cache no longer holds what llama-cpp-python believes it does.
    """
    prompt_tokens = engine.tokenize(prompt_text)
    reply_tokens = _reply_tokens(engine, prompt_tokens, prompt_text, reply)
    if not reply_tokens:
        return ReplyScore(0.0, 0, 0.0)
    tokens = prompt_tokens + reply_tokens
    n_ctx = engine.n_ctx
    if len(tokens) > n_ctx:
        raise ScoringError(
            f"prompt + reply are {len(tokens)} tokens, more than the {n_ctx}-token context; "
            "raise --n-ctx or score a shorter reply"
        )
    with engine.exclusive() as llama:
        _clear_memory(llama)
        try:
            logprobs = _decode_scores(llama, tokens, first_output=len(prompt_tokens) - 1)
        finally:
            _clear_memory(llama)
            llama.reset()
    total = float(sum(logprobs))
    return ReplyScore(total, len(logprobs), total / len(logprobs), tuple(logprobs))


class PairLike(Protocol):
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class PairScore:
    """One pair under the current model; ``implicit_margin`` only when a reference was given."""

    logp_chosen: float
    logp_rejected: float
    implicit_margin: float | None = None

    @property
    def margin(self) -> float:
        return self.logp_chosen - self.logp_rejected


@dataclass(frozen=True)
class PreferenceMetrics:
    """How the current model ranks the chosen and rejected replies of some pairs.

    - ``raw_accuracy``: share of pairs where the model itself gives the chosen reply a higher
      log-probability, logπ(c) − logπ(r) > 0. Meaningful for any model, base included; biased by reply
      length (a shorter reply has fewer negative terms). ``mean_margin`` is the mean of logπ(c) − logπ(r).
    - ``implicit_reward_accuracy``: DPO's own measure (TRL's ``rewards/accuracies``): share of pairs where
      β·[(logπ(c) − logπref(c)) − (logπ(r) − logπref(r))] > 0, with πref the base model's scores passed as
      ``reference``. ``mean_implicit_margin`` is the mean of that bracket times β (``rewards/margins``).
      ``None`` without a reference; the base model against itself scores 0 margins and 0 accuracy, as
      TRL does at step 1, so compare the base's *raw* accuracy with the tuned model's.

    A margin of exactly 0 counts as not preferring the chosen reply.
    """

    n: int
    raw_accuracy: float
    mean_margin: float
    implicit_reward_accuracy: float | None = None
    mean_implicit_margin: float | None = None
    beta: float | None = None
    per_pair: list[PairScore] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """The implicit-reward accuracy when a reference was given, else the raw accuracy."""
        if self.implicit_reward_accuracy is not None:
            return self.implicit_reward_accuracy
        return self.raw_accuracy

    def as_reference(self) -> list[tuple[float, float]]:
        """The per-pair (logp_chosen, logp_rejected), to pass as ``reference`` when scoring a tuned model."""
        return [(p.logp_chosen, p.logp_rejected) for p in self.per_pair]

    def to_dict(self) -> dict[str, float | int | None]:
        """The summary numbers (no per-pair rows), for JSON output and the report."""
        return {
            "n": self.n,
            "raw_accuracy": self.raw_accuracy,
            "mean_margin": self.mean_margin,
            "implicit_reward_accuracy": self.implicit_reward_accuracy,
            "mean_implicit_margin": self.mean_implicit_margin,
            "beta": self.beta,
        }


def preference_metrics(
    engine: ChatEngine,
    pairs: Sequence[PairLike],
    reference: Sequence[tuple[float, float]] | None = None,
    beta: float = 0.1,
    on_progress: Callable[[int, int], None] | None = None,
) -> PreferenceMetrics:
    """Score every pair's chosen and rejected reply under the engine's current model.

    ``reference`` is the base model's (logp_chosen, logp_rejected) per pair, in the same order (e.g.
    ``base_metrics.as_reference()``); with it the DPO implicit-reward numbers are filled in, scaled by
    ``beta`` (use the run's β). ``on_progress(done, total)`` is called after each pair.
    """
    if not pairs:
        raise ValueError("no pairs to score")
    if reference is not None and len(reference) != len(pairs):
        raise ValueError(f"reference has {len(reference)} score pairs for {len(pairs)} pairs")
    per_pair: list[PairScore] = []
    for i, pair in enumerate(pairs):
        logp_c = reply_logprob(engine, pair.prompt, pair.chosen).total_logprob
        logp_r = reply_logprob(engine, pair.prompt, pair.rejected).total_logprob
        implicit = None
        if reference is not None:
            ref_c, ref_r = reference[i]
            implicit = beta * ((logp_c - ref_c) - (logp_r - ref_r))
        per_pair.append(PairScore(logp_c, logp_r, implicit))
        if on_progress:
            on_progress(i + 1, len(pairs))
    n = len(per_pair)
    metrics = PreferenceMetrics(
        n=n,
        raw_accuracy=sum(p.margin > 0 for p in per_pair) / n,
        mean_margin=sum(p.margin for p in per_pair) / n,
        per_pair=per_pair,
    )
    if reference is None:
        return metrics
    implicit_margins = [p.implicit_margin or 0.0 for p in per_pair]
    return PreferenceMetrics(
        n=n,
        raw_accuracy=metrics.raw_accuracy,
        mean_margin=metrics.mean_margin,
        implicit_reward_accuracy=sum(m > 0 for m in implicit_margins) / n,
        mean_implicit_margin=sum(implicit_margins) / n,
        beta=beta,
        per_pair=per_pair,
    )


__all__ = [
    "MAX_OUTPUTS_PER_DECODE",
    "PairScore",
    "PreferenceMetrics",
    "ReplyScore",
    "ScoringError",
    "preference_metrics",
    "reply_logprob",
]
