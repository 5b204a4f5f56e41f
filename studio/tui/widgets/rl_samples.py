"""The latest sampled replies of an RL run (method ``rloo``) with the reward each got, on the train screen.

The run's trainer appends a few of each step's rollouts to ``samples.jsonl`` (one JSON object per line:
``step``, ``prompt``, ``reply``, ``reward``) in the run's work directory while it trains; the published run
folder keeps a copy. The panel tails that file the way the screen tails the run's log: only whole new lines
are read at each poll, and it shows the newest step's samples. Prompts and replies are the model's and the
user's text, so they are shown as plain ``Content``, never as markup.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from textual.content import Content
from textual.widgets import Static

from trainers.reward_functions import SAMPLES_FILE  # the file the run's SampleLog appends to
from trainers.run.outputs import RunPaths

PROMPT_CHARS = 80  # a prompt is context here: its start is enough
REPLY_CHARS = 240


@dataclass(frozen=True)
class RolloutSample:
    """One sampled reply of one training step, with the reward the run's reward terms gave it."""

    step: int
    prompt: str
    reply: str
    reward: float | None

    @classmethod
    def from_line(cls, line: str) -> RolloutSample | None:
        """The sample a line holds, or None for a line that is not one (the panel skips it, never fails)."""
        try:
            data = json.loads(line)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("step"), int):
            return None
        reward = data.get("reward")
        number = isinstance(reward, int | float) and not isinstance(reward, bool) and math.isfinite(reward)
        return cls(data["step"], str(data.get("prompt", "")), str(data.get("reply", "")),
                   float(reward) if number else None)


def samples_file(paths: RunPaths) -> Path | None:
    """Where the run's samples are now: the work directory while it trains, the run folder once published."""
    for folder in (paths.work_dir, paths.output_dir):
        if (folder / SAMPLES_FILE).is_file():
            return folder / SAMPLES_FILE
    return None


class SampleTail:
    """New whole lines of a run's samples file since the last read; starts over when the file moves (published)
    or shrinks (a resumed run rewrote it)."""

    def __init__(self, paths: RunPaths) -> None:
        self.paths = paths
        self.path: Path | None = None
        self.offset = 0

    def read_new(self) -> tuple[list[RolloutSample], bool]:
        """(samples added since the last read, whether the earlier ones are to be forgotten)."""
        path = samples_file(self.paths)
        if path is None:
            return [], False
        restart = path != self.path
        try:
            with path.open("rb") as fh:
                size = fh.seek(0, 2)
                if restart or size < self.offset:
                    self.path, self.offset, restart = path, 0, True
                fh.seek(self.offset)
                chunk = fh.read()
        except OSError:  # moved between the check and the open (publishing): the next poll finds it
            return [], False
        cut = chunk.rfind(b"\n") + 1  # a partial last line waits for the next poll
        self.offset += cut
        lines = chunk[:cut].decode("utf-8", "replace").splitlines()
        return [s for s in (RolloutSample.from_line(line) for line in lines) if s is not None], restart


def _short(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def describe_samples(samples: Sequence[RolloutSample]) -> Content:
    """The newest step's samples, best reward first: a heading line, then reward, prompt and reply per sample."""
    if not samples:
        return Content("Sampled replies appear here after the first step.")
    step = max(s.step for s in samples)
    latest = sorted((s for s in samples if s.step == step),
                    key=lambda s: -math.inf if s.reward is None else s.reward, reverse=True)
    parts = [Content.styled(f"Sampled replies at step {step}", "bold")]
    for sample in latest:
        reward = "reward —" if sample.reward is None else f"reward {sample.reward:+.3f}"
        parts.append(Content.assemble((reward, "bold"), " · ", (_short(sample.prompt, PROMPT_CHARS), "dim")))
        parts.append(Content("  " + _short(sample.reply, REPLY_CHARS)))
    return Content("\n").join(parts)


class RLSamplesPanel(Static):
    """A few of the latest step's rollouts with their rewards; ``follow(paths)`` for each run shown."""

    DEFAULT_CSS = """
    RLSamplesPanel {
        height: auto;
        max-height: 12;
        border: round $panel;
        padding: 0 1;
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__("", markup=False, **kwargs)
        self.tail: SampleTail | None = None
        self.samples: list[RolloutSample] = []  # the newest step's (older steps are dropped as they come)

    def follow(self, paths: RunPaths | None) -> None:
        """Show the samples of the run whose files are at ``paths`` from its first step (None: nothing)."""
        self.tail = SampleTail(paths) if paths is not None else None
        self.samples = []
        self.update(describe_samples(self.samples))

    def poll(self) -> None:
        if self.tail is None:
            return
        new, restart = self.tail.read_new()
        if not new and not restart:
            return
        kept = [] if restart else self.samples
        newest = max(s.step for s in [*kept, *new]) if kept or new else None
        self.samples = [s for s in [*kept, *new] if s.step == newest]
        self.update(describe_samples(self.samples))
