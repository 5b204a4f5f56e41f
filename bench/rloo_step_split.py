"""Where an RLOO step's time goes: generation, reward, update; measured the same way on both sides of
``bench/rlhf_speed.py``.

``instrument()`` wraps, on every ``RLOOTrainer`` built afterwards (TRL's own, or a subclass such as the studio's
llama.cpp one), the methods TRL calls for each part of a step: ``_generate_single_turn`` (the rollouts; the
studio's includes syncing the adapter into llama.cpp), ``_calculate_rewards`` (the reward functions) and
``training_step`` (the whole step: it prepares the inputs, i.e. generates and scores, then the log-prob passes,
the loss and the backward). Update = step - generation - reward. The wrappers are instance attributes, so a
subclass's overrides are the ones timed. At exit the split is written as JSON to ``$RLOO_SPLIT_OUT``.

Run as a script, it is the studio's trainer process (``python -m trainers.run.cli ARGS``) instrumented::

    RLOO_SPLIT_OUT=split.json python bench/rloo_step_split.py --db bench.db --run-id 2
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import runpy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SPLIT_ENV = "RLOO_SPLIT_OUT"
PARTS = ("generation", "reward", "update")


class StepSplit:
    """Seconds per optimizer step, split into generation, reward and the rest (update)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self._pending = {"generation": 0.0, "reward": 0.0}

    def add(self, part: str, seconds: float) -> None:
        self._pending[part] += seconds

    def end_step(self, total: float) -> None:
        generation, reward = self._pending["generation"], self._pending["reward"]
        self.steps.append({"total": total, "generation": generation, "reward": reward,
                           "update": total - generation - reward})
        self._pending = {"generation": 0.0, "reward": 0.0}

    def summary(self, skip_first: bool = True) -> dict[str, Any]:
        """Means per step (the first step left out when there are others: it pays one-off warm-up costs)."""
        steps = self.steps[1:] if skip_first and len(self.steps) > 1 else self.steps
        means = {key: statistics.fmean(s[key] for s in steps) if steps else 0.0 for key in ("total", *PARTS)}
        return {"steps": len(self.steps), "steps_averaged": len(steps), "mean": means,
                "first_step": self.steps[0] if self.steps else None}


def _timed(method: Callable[..., Any], on_done: Callable[[float], None]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            on_done(time.perf_counter() - started)

    return wrapper


def instrument(split: StepSplit) -> None:
    """Time every RLOOTrainer built from now on into ``split`` (one optimizer step per ``training_step``: the
    benches use no gradient accumulation)."""
    from trl import RLOOTrainer

    original_init = RLOOTrainer.__init__

    @functools.wraps(original_init)
    def init(self: RLOOTrainer, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._generate_single_turn = _timed(self._generate_single_turn, lambda s: split.add("generation", s))
        self._calculate_rewards = _timed(self._calculate_rewards, lambda s: split.add("reward", s))
        self.training_step = _timed(self.training_step, split.end_step)

    RLOOTrainer.__init__ = init


def write_at_exit(split: StepSplit, path: Path) -> None:
    atexit.register(lambda: path.write_text(json.dumps(split.summary()), encoding="utf-8"))


def read_split(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def describe(name: str, summary: dict[str, Any]) -> str:
    mean = summary["mean"]
    return (f"{name}: {mean['total']:6.2f} s/step = generation {mean['generation']:.2f} + reward {mean['reward']:.2f}"
            f" + update {mean['update']:.2f} (mean of {summary['steps_averaged']} of {summary['steps']} steps; "
            f"first step {summary['first_step']['total']:.2f} s)" if summary.get("first_step") else f"{name}: no steps")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import trainers  # noqa: F401  (the Hugging Face stack kept offline, before TRL is imported)

    split_out = Path(os.environ[SPLIT_ENV])
    SPLIT = StepSplit()
    instrument(SPLIT)
    write_at_exit(SPLIT, split_out)
    sys.argv = ["trainers.run.cli", *sys.argv[1:]]
    runpy.run_module("trainers.run.cli", run_name="__main__", alter_sys=True)
