"""The reward-model seam: a finished ``reward`` run opened as a scorer of replies to a conversation.

The chat (each candidate's score, the model's pick), best-of-N and the comparison (mean reward of base and
tuned answers) only see ``RewardScorer``. ``score`` takes a while (a forward pass per reply): callers run it
off the UI thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from studio.reward.head import RewardHead, RewardScorerError, reward_files
from trainers.prompt_format import ChatTurn

if TYPE_CHECKING:
    from store.records import RunRecord
    from store.studio_store import Store
    from studio.inference.engine import ChatEngine

# Where a reward model runs: a torch worker process computing as the run trained (bf16 matmuls for a bf16 run on
# a CPU with native bf16, else float32), the same always in float32 (exact) or always in bf16, or the served
# llama.cpp model (approximate).
ScorerBackend = Literal["torch", "torch-fp32", "torch-bf16", "llama"]
BACKENDS: tuple[ScorerBackend, ...] = ("torch", "torch-fp32", "torch-bf16", "llama")
DEFAULT_BACKEND: ScorerBackend = "torch"

__all__ = ["RewardHead", "RewardScorer", "RewardScorerError", "checked_reward_run", "open_reward_scorer"]


class RewardScorer(Protocol):
    """A reward model ready to score. Blocking; safe to call from one worker thread at a time."""

    @property
    def run_id(self) -> int: ...

    def score(self, conversation: Sequence[ChatTurn], replies: Sequence[str]) -> list[float]:
        """One scalar reward per reply to ``conversation`` (a leading system turn, then turns ending with the
        user's), in the order given; higher is better. Replies are as stored (the model's own leading space)."""
        ...

    def prepare(self, conversation: Sequence[ChatTurn]) -> None:
        """Compute the prompt of ``conversation`` now and keep it, so that scoring replies to it later pays for the
        replies alone (the chat calls it when a round starts, while its candidates generate)."""
        ...

    def close(self) -> None:
        """Free what the scorer holds (its worker process, or its llama.cpp context and adapter). Idempotent."""
        ...


def open_reward_scorer(store: Store, run_id: int, engine: ChatEngine,
                       backend: ScorerBackend = DEFAULT_BACKEND) -> RewardScorer:
    """The scorer of reward run ``run_id`` for the model ``engine`` serves. Blocking (the torch worker takes
    seconds to load): open it off the UI thread; close it before the engine's model is closed or switched.

    ``backend``: "torch" (default) scores with transformers in a worker process, the LoRA merged, computing as
    the run trained: a run trained under bf16 autocast (the run summary's ``dtype``) with its matmuls in bf16 and
    the rest in float32 where this CPU has native bf16 (~2x faster than float32; scores within a few thousandths
    of it, see ``bench/reward_scoring.py``), else in float32; "torch-fp32" always in float32 (exactly the float32
    model); "torch-bf16" always with bf16 matmuls; "llama" in a second llama.cpp context on the engine's quantised
    model (no torch, no second copy of the weights, but approximate: see the bench for its Pearson against
    float32).
    Raises ``RewardScorerError`` (before anything is loaded) for a run that is not a finished reward run or
    that was trained on another base model than the engine's, and for a run whose files are missing.
    """
    run = checked_reward_run(store, run_id, engine)
    folder, head = reward_files(store, run)
    if backend in ("torch", "torch-fp32", "torch-bf16"):
        from studio.reward.torch_worker import Precision, TorchWorkerScorer

        precision: Precision
        if backend == "torch-fp32":
            precision = "fp32"
        elif backend == "torch-bf16":
            precision = "bf16"
        else:  # as the run trained: bf16 autocast runs in bf16 where this CPU does bf16 natively
            precision = "bf16-where-native" if (run.summary or {}).get("dtype") == "bf16" else "fp32"
        return TorchWorkerScorer(engine, run.id, folder, str(run.config.get("train_model")), engine.n_threads_batch,
                                 precision=precision)
    if backend != "llama":
        raise ValueError(f"unknown reward scorer backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    from studio.evaluation.run_adapters import RunAdapterError, gguf_adapter_for_run
    from studio.reward.llama_scorer import LlamaRewardScorer

    try:
        adapter = gguf_adapter_for_run(run, engine.info, store.path)
    except RunAdapterError as exc:
        raise RewardScorerError(str(exc)) from None
    return LlamaRewardScorer(engine, run.id, adapter, head)


def checked_reward_run(store: Store, run_id: int, engine: ChatEngine) -> RunRecord:
    """The run, if it is a finished reward run trained on the model ``engine`` serves; else RewardScorerError."""
    from store.errors import RecordNotFoundError

    try:
        run = store.get_run(run_id)
    except RecordNotFoundError:
        raise RewardScorerError(f"there is no run {run_id}; `prefstudio runs` lists them") from None
    method = (run.config or {}).get("method", "dpo")
    if method != "reward":
        raise RewardScorerError(
            f"run {run_id} is a {method} run, not a reward model; train one with `prefstudio train --method reward`"
        )
    if run.status != "done":
        detail = f" ({run.message})" if run.message else ""
        raise RewardScorerError(f"run {run_id} is {run.status}{detail}; only a finished reward run can score")
    trained = ((run.summary or {}).get("model") or {})
    trained_sha = trained.get("sha256")
    if trained_sha != engine.identity.sha256:
        trained_name = Path(str(trained.get("origin") or run.model_id)).name
        trained_desc = f"{trained_name} ({trained_sha[:12]})" if trained_sha else f"{trained_name} (not a GGUF)"
        raise RewardScorerError(
            f"run {run_id} was trained on {trained_desc}, but the chat serves {engine.identity.model_id} "
            f"({engine.identity.sha256[:12]}); switch to that model, or train a reward model on this one"
        )
    return run
