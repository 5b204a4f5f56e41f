"""Trainer callbacks: per-step metrics to the store and a JSONL log, cancel at a step boundary, and
checkpoints without pickles.

``on_log`` is TRL's seam for live metrics (loss, rewards/*, logps/*, …); the studio reads them from the
store, so nothing parses stdout.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Importing any trainers.* module runs trainers/__init__ first, which sets the HF offline env.
from transformers import TrainerCallback

from store.errors import StoreBusyError
from trainers.run.ranks import any_rank_asks, process_rank, world_size

# Each method's own numbers in the log's step line, when it logs them: DPO's margin and accuracy, KTO's KL and
# rewards, SFT's token accuracy, the reward model's accuracy and margin.
STEP_LINE_METRICS = (
    ("rewards/margins", "margin", "+.3f"), ("rewards/accuracies", "acc", ".2f"), ("kl", "kl", ".3f"),
    ("rewards/chosen", "chosen", "+.3f"), ("rewards/rejected", "rejected", "+.3f"),
    ("mean_token_accuracy", "token acc", ".2f"), ("accuracy", "acc", ".2f"), ("margin", "margin", "+.3f"),
)

# Keys TRL logs that a chart or the summary wants; anything numeric is kept, these are just renamed.
_END_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")


def _clean(logs: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in logs.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        value = float(value)
        if math.isfinite(value):
            out[key] = value
    return out


class MetricsRecorder(TrainerCallback):
    """Write each logged training step to ``add_metrics(step, epoch, metrics)`` and a JSONL file.

    Adds ``tokens_per_s`` and ``steps_per_s`` (measured between logs) and prints one readable line per
    step for the run's log file.
    """

    def __init__(
        self,
        add_metrics: Callable[[int, float | None, dict[str, float]], Any],
        jsonl_path: Path,
        total_steps: Callable[[], int] | None = None,
        echo: Callable[[str], None] | None = print,
    ) -> None:
        self.add_metrics = add_metrics
        self.jsonl_path = Path(jsonl_path)
        self.total_steps = total_steps
        self.echo = echo
        self.end_metrics: dict[str, float] = {}
        self.eval_metrics: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.first: dict[str, float] = {}
        self._last_time: float | None = None
        self._last_tokens: float | None = None
        self._last_step = 0
        self.step_seconds: list[float] = []
        self._unsaved: list[tuple[int, float | None, dict[str, float]]] = []

    def step_time_stats(self) -> dict[str, float]:
        """Median and worst seconds per step (spikes show up in the max)."""
        if not self.step_seconds:
            return {}
        ordered = sorted(self.step_seconds)
        return {"median": round(ordered[len(ordered) // 2], 3), "max": round(ordered[-1], 3)}

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self._last_time = time.monotonic()
        self._last_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        if not state.is_world_process_zero:  # under `accelerate launch`, one process records
            return
        logs = _clean(logs or {})
        if any(k in logs for k in _END_KEYS):
            self.end_metrics.update(logs)
            return
        if any(k.startswith("eval_") for k in logs):
            self.eval_metrics.update(logs)
            return
        if "loss" not in logs:
            return
        now = time.monotonic()
        step = int(state.global_step)
        elapsed = now - (self._last_time or now)
        tokens = logs.get("num_tokens")
        if elapsed > 0 and step > self._last_step:
            logs["steps_per_s"] = (step - self._last_step) / elapsed
            self.step_seconds.append(elapsed / (step - self._last_step))
            if tokens is not None and self._last_tokens is not None:
                logs["tokens_per_s"] = (tokens - self._last_tokens) / elapsed
            elif tokens is not None and self._last_step == 0:
                logs["tokens_per_s"] = tokens / elapsed
        self._last_time, self._last_tokens, self._last_step = now, tokens, step
        epoch = logs.get("epoch")
        self._unsaved.append((step, epoch, logs))
        self._save_metrics()
        if not self.first:
            self.first = dict(logs)
        self.last = dict(logs)
        with self.jsonl_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, **logs}, sort_keys=True) + "\n")
        if self.echo:
            total = self.total_steps() if self.total_steps else state.max_steps
            shown = "".join(f"{label} {logs[key]:{spec}} " for key, label, spec in STEP_LINE_METRICS if key in logs)
            self.echo(
                f"step {step}/{total} loss {logs['loss']:.4f} {shown}"
                f"{logs.get('tokens_per_s', 0.0):.0f} tok/s epoch {epoch or 0:.2f}"
            )


    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self._save_metrics()

    def _save_metrics(self) -> None:
        """Store the logged steps not stored yet, oldest first. A database another program kept locked
        past the store's own long retry does not end the run: the steps wait (they are in the JSONL log
        already) and go in with the next one."""
        while self._unsaved:
            try:
                self.add_metrics(*self._unsaved[0])
            except StoreBusyError as exc:
                if self.echo:
                    self.echo(f"warning: {exc} The step is kept and stored with the next one.")
                return
            self._unsaved.pop(0)


class CancelAtStepBoundary(TrainerCallback):
    """Stop cleanly when ``event`` is set (by a signal handler): finish the step, checkpoint, stop.

    Under ``accelerate launch`` the signal reaches rank 0 alone; each step end asks every rank whether one
    of them was told to stop (``any_rank_asks``, one int all-reduced) and sets ``event`` on all of them, so
    every rank stops, saves and skips evaluation after the same step (a rank that went on alone would wait
    in its next all-reduce for ever).
    """

    def __init__(self, event: threading.Event, echo: Callable[[str], None] | None = print) -> None:
        self.event = event
        self.echo = echo
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if any_rank_asks(self.event.is_set(), args.device) and self.stopped_at is None:
            self.event.set()  # this rank's run code sees the cancel too (no held-out evaluation, status)
            control.should_training_stop = True
            control.should_save = True  # a checkpoint at this step, so --resume continues from here
            self.stopped_at = int(state.global_step)
            if self.echo:
                ranks = f" (rank {process_rank()} of {world_size()})" if world_size() > 1 else ""
                self.echo(f"cancel: stopping after step {self.stopped_at}{ranks}")
        return control


class DropPickledArgs(TrainerCallback):
    """Delete the pickled ``training_args.bin`` the Trainer writes into each checkpoint.

    Resuming reads ``trainer_state.json``, the optimizer/scheduler/RNG states and the adapter, never
    that pickle; the run's JSON config is the record of its arguments.
    """

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        for path in Path(args.output_dir).glob("checkpoint-*/training_args.bin"):
            path.unlink(missing_ok=True)
