"""A reward model scored by transformers + PEFT in a long-lived worker process (exact: the trainer's own model).

The studio process never imports torch for it: ``TorchWorkerScorer`` starts ``python -m
studio.reward.torch_worker`` once, which loads the run's model (``load_trained_reward_model``) and then answers
one JSON line per request on stdin with one JSON line on stdout: ``{"prompt": str, "replies": [str]}`` →
``{"scores": [float]}`` or ``{"error": str}``. A crash or an out-of-memory there never takes the UI down;
its stderr goes to a log file quoted when it fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from studio.reward.head import RewardScorerError, split_conversation
from trainers.prompt_format import ChatTurn

if TYPE_CHECKING:
    from studio.inference.engine import ChatEngine

READY = "ready"


class TorchWorkerScorer:
    """``RewardScorer`` in a worker process with torch; the prompt rendered here, in the engine's format."""

    def __init__(self, engine: ChatEngine, run_id: int, output_dir: Path, train_model: str, threads: int) -> None:
        self._engine = engine
        self._run_id = run_id
        self._lock = threading.Lock()
        self._log: IO[str] = tempfile.NamedTemporaryFile("w+", prefix=f"reward-worker-{run_id}-", suffix=".log",
                                                         delete=False)
        self._process: subprocess.Popen[str] | None = subprocess.Popen(
            [sys.executable, "-m", "studio.reward.torch_worker", str(output_dir), train_model, str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, encoding="utf-8",
        )
        reply = self._read()
        if reply.get(READY) is not True:
            self.close()
            raise RewardScorerError(f"the reward worker of run {run_id} did not start: "
                                    f"{reply.get('error') or self._log_tail()}")

    @property
    def run_id(self) -> int:
        return self._run_id

    def score(self, conversation: Sequence[ChatTurn], replies: Sequence[str]) -> list[float]:
        if not replies:
            return []
        system, turns = split_conversation(conversation)
        prompt = self._engine.prompt_format.render(system, turns)
        with self._lock:
            if self._process is None or self._process.stdin is None:
                raise RewardScorerError(f"the scorer of run {self._run_id} is closed")
            try:
                self._process.stdin.write(json.dumps({"prompt": prompt, "replies": list(replies)}) + "\n")
                self._process.stdin.flush()
            except OSError:
                raise RewardScorerError(f"the reward worker of run {self._run_id} stopped: {self._log_tail()}") from None
            reply = self._read()
        if "error" in reply:
            raise RewardScorerError(f"the reward worker of run {self._run_id} failed: {reply['error']}")
        scores = reply.get("scores")
        if not isinstance(scores, list) or len(scores) != len(replies):
            raise RewardScorerError(f"the reward worker of run {self._run_id} answered {reply!r}")
        return [float(s) for s in scores]

    def _read(self) -> dict:
        assert self._process is not None and self._process.stdout is not None
        # A library may print to stdout while the model loads: lines that are not a JSON object are skipped.
        for _ in range(1000):
            line = self._process.stdout.readline()
            if not line:
                return {"error": f"the worker exited: {self._log_tail()}"}
            try:
                answer = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(answer, dict):
                return answer
        return {"error": "the worker wrote 1000 lines that are not answers"}

    def _log_tail(self) -> str:
        try:
            self._log.flush()
            text = Path(self._log.name).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return "(no log)"
        return text[-600:] or "(nothing on stderr)"

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                try:
                    process.stdin.close()  # end of requests: the worker exits
                except OSError:
                    pass
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)


def serve(output_dir: Path, train_model: str, threads: int) -> None:
    """The worker's loop: load once, then one JSON answer line per request line until stdin closes."""
    import torch

    from trainers.methods.reward import load_trained_reward_model, transformers_reward_scores
    from trainers.model_source import resolve_model_source

    torch.set_num_threads(threads)
    try:
        source = resolve_model_source(train_model, log=lambda _message: None)
        model, tokenizer = load_trained_reward_model(output_dir, source.model_dir)
    except Exception as exc:  # noqa: BLE001 - every failure to load is reported to the studio as one line
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return
    print(json.dumps({READY: True}), flush=True)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            scores = transformers_reward_scores(model, tokenizer, str(request["prompt"]),
                                                [str(r) for r in request["replies"]])
            answer: dict[str, object] = {"scores": scores}
        except Exception as exc:  # noqa: BLE001 - a bad request is answered, the worker keeps serving
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
