"""An attribute model at work: a finished ``attributes`` run predicting each attribute (0–4) of replies.

``predict_attributes(run, texts)`` is the one call the rest of the studio makes (annotate, the SteerLM
steerability bench); ``AttributePredictor`` keeps one model loaded across many calls (annotate's batches).
Prediction runs transformers + PEFT in a worker process (``python -m studio.attributes_model``), as
``studio.reward.torch_worker`` does for reward models: the studio process never imports torch, a crash or an
out-of-memory there never takes the UI down, and the worker sits in its own session so a Ctrl-C meant for the
CLI does not kill it mid-answer. Blocking: callers run it off the UI thread.

Protocol: the worker prints ``{"ready": true, "attributes": [...]}`` once loaded, then answers each request
line ``{"prompts": [str], "replies": [str]}`` with ``{"values": [[float, ...], ...]}`` (one row per reply, one
value per attribute in the run's order) or ``{"error": str}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from studio.worker_process import JsonLinesWorker

if TYPE_CHECKING:
    from store.records import RunRecord

READY = "ready"
SPEC_FILE = "attribute_model.json"  # the name trainers/methods/attributes.py writes


class AttributeModelError(Exception):
    """A run that cannot predict attributes (not a finished attributes run, another base model, files missing)
    or a predictor that stopped. The message names the run and what to do."""


def checked_attribute_run(run: RunRecord, *, db_path: Path | str | None = None,
                          expected_sha256: str | None = None, served_name: str | None = None) -> Path:
    """The run's folder, if ``run`` is a finished attributes run (trained on the model ``expected_sha256``
    names, when given) whose files are there; else AttributeModelError saying what to do."""
    from trainers.run.outputs import RunFolderError, checked_run_paths, runs_roots

    method = (run.config or {}).get("method", "dpo")
    if method != "attributes":
        raise AttributeModelError(f"run {run.id} is a {method} run, not an attribute model; train one with "
                                  "`prefstudio train --method attributes`")
    if run.status != "done":
        detail = f" ({run.message})" if run.message else ""
        raise AttributeModelError(f"run {run.id} is {run.status}{detail}; only a finished attributes run predicts")
    trained = (run.summary or {}).get("model") or {}
    trained_sha = trained.get("sha256")
    if expected_sha256 is not None and trained_sha != expected_sha256:
        trained_name = Path(str(trained.get("origin") or run.model_id)).name
        trained_desc = f"{trained_name} ({trained_sha[:12]})" if trained_sha else f"{trained_name} (not a GGUF)"
        served = f"{served_name} ({expected_sha256[:12]})" if served_name else expected_sha256[:12]
        raise AttributeModelError(
            f"run {run.id}'s attribute model was trained on {trained_desc}, but the studio serves {served}: an "
            "attribute model reads replies with its own base model's weights; switch to that model "
            "(--model), or train an attribute model on this one")
    try:
        folder = checked_run_paths(run.output_dir, runs_roots(db_path)).output_dir
    except RunFolderError as exc:
        raise AttributeModelError(f"run {run.id}: {exc}") from None
    if not (folder / SPEC_FILE).is_file():
        raise AttributeModelError(f"run {run.id} has no attribute model files in {folder} ({SPEC_FILE} is missing)")
    return folder


class AttributePredictor:
    """One attributes run loaded in a worker process; ``predict`` may be called many times. Close it after."""

    def __init__(self, run: RunRecord, *, db_path: Path | str | None = None, expected_sha256: str | None = None,
                 served_name: str | None = None, threads: int = 2) -> None:
        folder = checked_attribute_run(run, db_path=db_path, expected_sha256=expected_sha256,
                                       served_name=served_name)
        self.run_id = run.id
        # A new session: a Ctrl-C in the CLI stops the CLI between batches, not the worker mid-answer.
        self._worker = JsonLinesWorker("studio.attributes_model",
                                       [str(folder), str(run.config.get("train_model")), str(threads)],
                                       f"attribute-worker-{run.id}-", new_session=True)
        reply = self._worker.read()
        if reply.get(READY) is not True:
            self.close()
            raise AttributeModelError(f"the attribute model of run {run.id} did not start: "
                                      f"{reply.get('error') or self._worker.log_tail()}")
        self.attributes: list[str] = [str(a) for a in reply.get("attributes", [])]

    def predict(self, texts: Sequence[str], prompts: Sequence[str] | None = None) -> list[dict[str, float]]:
        """Each text's predicted value per attribute (``predict_attributes``'s contract)."""
        if not texts:
            return []
        if prompts is not None and len(prompts) != len(texts):
            raise ValueError(f"{len(prompts)} prompts for {len(texts)} texts: give one prompt per text, or none")
        request = {"prompts": list(prompts) if prompts is not None else [""] * len(texts), "replies": list(texts)}
        with self._worker.lock:
            if self._worker.closed:
                raise AttributeModelError(f"the attribute model of run {self.run_id} is closed")
            reply = self._worker.request(request)
        if "error" in reply:
            raise AttributeModelError(f"the attribute worker of run {self.run_id} failed: {reply['error']}")
        values = reply.get("values")
        if not isinstance(values, list) or len(values) != len(texts):
            raise AttributeModelError(f"the attribute worker of run {self.run_id} answered {str(reply)[:200]}")
        return [{name: float(v) for name, v in zip(self.attributes, row, strict=True)} for row in values]

    def close(self) -> None:
        """Stop the worker (end of requests: it exits) and drop its log. Idempotent."""
        self._worker.close()

    def __enter__(self) -> AttributePredictor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def predict_attributes(run: RunRecord, texts: Sequence[str], *, prompts: Sequence[str] | None = None,
                       db_path: Path | str | None = None, expected_sha256: str | None = None,
                       threads: int = 2) -> list[dict[str, float]]:
    """Each text's predicted value (0–4, a float) per attribute the run was trained on, in the order given.

    ``texts`` are replies as stored (the model's own leading space kept); ``prompts``, when given (one per
    text), are the rendered prompts they answer, read before the reply exactly as in training (the attribute
    model is trained on rendered prompt + reply). ``db_path`` locates the run folder (the ``runs`` folder
    beside the database); ``expected_sha256``, when given, is the served model's sha256, refused with a clear
    message when the run was trained on another base model. Loads the model for this one call (seconds):
    for many calls keep an ``AttributePredictor``. Raises ``AttributeModelError``.
    """
    with AttributePredictor(run, db_path=db_path, expected_sha256=expected_sha256, threads=threads) as predictor:
        return predictor.predict(texts, prompts)


def serve(output_dir: Path, train_model: str, threads: int) -> None:
    """The worker's loop: load once, then one JSON answer line per request line until stdin closes."""
    import torch

    from trainers.methods.attributes import load_attribute_model, predicted_values
    from trainers.model_source import resolve_model_source

    torch.set_num_threads(threads)
    try:
        source = resolve_model_source(train_model, log=lambda _message: None)
        model, tokenizer, attributes = load_attribute_model(output_dir, source.model_dir)
    except Exception as exc:  # noqa: BLE001 - every failure to load is reported to the studio as one line
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return
    print(json.dumps({READY: True, "attributes": attributes}), flush=True)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            values = predicted_values(model, tokenizer, [str(p) for p in request["prompts"]],
                                      [str(r) for r in request["replies"]])
            answer: dict[str, object] = {"values": values}
        except Exception as exc:  # noqa: BLE001 - a bad request is answered, the worker keeps serving
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
