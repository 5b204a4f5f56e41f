"""A reward model scored by transformers + PEFT in a long-lived worker process (exact: the trainer's own model).

The studio process never imports torch for it: ``TorchWorkerScorer`` starts ``python -m
studio.reward.torch_worker`` once, which loads the run's model (``load_trained_reward_model``) and then answers
one JSON line per request on stdin with one JSON line on stdout: ``{"prompt": str, "replies": [str]}`` →
``{"scores": [float], "cpu_s": float}`` (the worker's CPU seconds for the request) or ``{"error": str}``;
``{"prompt": str, "prepare": true}`` computes the prompt alone and keeps it (``"scores": []``). A crash
or an out-of-memory there never takes the UI down; its stderr goes to a log file quoted when it fails. It scores
with ``SharedPromptScorer`` (``torch_scoring``): the LoRA merged, the prompt's keys and values computed once and
kept for the next request, the replies in one batch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from studio.reward.head import RewardScorerError, split_conversation
from studio.worker_process import JsonLinesWorker
from trainers.prompt_format import ChatTurn

if TYPE_CHECKING:
    from studio.inference.engine import ChatEngine

READY = "ready"
# The merged decoder's arithmetic in the worker: fp32 (exactly the float32 model), bf16 (its matmuls in bf16, as a
# bf16-autocast run trained it: about 2x faster on a CPU with native bf16, AVX512-BF16 or AMX), or bf16 only
# where the CPU has native bf16 (elsewhere bf16 is emulated and slower than fp32), else fp32.
Precision = Literal["fp32", "bf16", "bf16-where-native"]


class TorchWorkerScorer:
    """``RewardScorer`` in a worker process with torch; the prompt rendered here, in the engine's format."""

    def __init__(self, engine: ChatEngine, run_id: int, output_dir: Path, train_model: str, threads: int,
                 precision: Precision = "fp32") -> None:
        self._engine = engine
        self._run_id = run_id
        self.last_cpu_seconds = 0.0  # the worker's CPU time for the last request (bench/reward_scoring.py)
        self._worker = JsonLinesWorker("studio.reward.torch_worker",
                                       [str(output_dir), train_model, str(threads), precision],
                                       f"reward-worker-{run_id}-")
        reply = self._worker.read()
        if reply.get(READY) is not True:
            self.close()
            raise RewardScorerError(f"the reward worker of run {run_id} did not start: "
                                    f"{reply.get('error') or self._worker.log_tail()}")
        self.precision = str(reply.get("precision", "fp32"))  # as the worker loaded it

    @property
    def run_id(self) -> int:
        return self._run_id

    def score(self, conversation: Sequence[ChatTurn], replies: Sequence[str]) -> list[float]:
        if not replies:
            return []
        reply = self._request(conversation, {"replies": list(replies)})
        scores = reply.get("scores")
        if not isinstance(scores, list) or len(scores) != len(replies):
            raise RewardScorerError(f"the reward worker of run {self._run_id} answered {reply!r}")
        self.last_cpu_seconds = float(reply.get("cpu_s", 0.0))
        return [float(s) for s in scores]

    def prepare(self, conversation: Sequence[ChatTurn]) -> None:
        self.last_cpu_seconds = float(self._request(conversation, {"prepare": True}).get("cpu_s", 0.0))

    def _request(self, conversation: Sequence[ChatTurn], fields: dict[str, object]) -> dict:
        """The worker's answer to ``fields`` about the conversation's prompt (rendered here); errors raised."""
        system, turns = split_conversation(conversation)
        prompt = self._engine.prompt_format.render(system, turns)
        with self._worker.lock:
            if self._worker.closed:
                raise RewardScorerError(f"the scorer of run {self._run_id} is closed")
            reply = self._worker.request({"prompt": prompt, **fields})
        if "error" in reply:
            raise RewardScorerError(f"the reward worker of run {self._run_id} failed: {reply['error']}")
        return reply

    def close(self) -> None:
        self._worker.close()

def serve(output_dir: Path, train_model: str, threads: int, precision: str) -> None:
    """The worker's loop: load once, then one JSON answer line per request line until stdin closes."""
    import time

    import torch

    from studio.reward.torch_scoring import SharedPromptScorer
    from trainers.methods.reward import load_trained_reward_model
    from trainers.model_source import resolve_model_source
    torch.set_num_threads(threads)
    try:
        if precision == "bf16-where-native":
            from trainers.run.device import cpu_has_native_bf16

            precision = "bf16" if cpu_has_native_bf16() else "fp32"
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {precision!r}")
        source = resolve_model_source(train_model, log=lambda _message: None)
        scorer = SharedPromptScorer(*load_trained_reward_model(output_dir, source.model_dir), precision=precision)
    except Exception as exc:  # noqa: BLE001 - every failure to load is reported to the studio as one line
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return
    print(json.dumps({READY: True, "precision": precision}), flush=True)
    for line in sys.stdin:
        started = time.process_time()
        try:
            request = json.loads(line)
            if request.get("prepare"):
                scorer.prepare(str(request["prompt"]))
                scores = []
            else:
                scores = scorer.score(str(request["prompt"]), [str(r) for r in request["replies"]])
            answer: dict[str, object] = {"scores": scores, "cpu_s": time.process_time() - started}
        except Exception as exc:  # noqa: BLE001 - a bad request is answered, the worker keeps serving
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4])
