"""What the fresh-process trainer probes share (``kto_loss_probe.py``, ``rloo_loss_probe.py``): running one and
reading its JSON line, and recording how the studio's CPU LM head is called.

A probe runs in its own process because TRL's own trainer must run before the studio's CPU speed-ups patch TRL
for the whole process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_probe(probe: Path) -> dict:
    """Run ``probe`` with this interpreter and return the last JSON line it printed."""
    proc = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1])


def record_head_calls() -> list[tuple[bool, tuple[str, ...]]]:
    """From now on, each call of the CPU LM head appends (whether the hidden states need a gradient, the outputs
    asked for) to the returned list."""
    import trainers.cpu_logprob_head as head

    calls: list[tuple[bool, tuple[str, ...]]] = []
    original = head.cpu_logprob_function()

    class Recording(original):  # type: ignore[misc, valid-type]
        @staticmethod
        def forward(ctx, hidden, *args):  # noqa: ANN001, ANN002, ANN205
            calls.append((ctx.needs_input_grad[0], tuple(args[-1])))
            return original.forward(ctx, hidden, *args)

    head._cpu_function_class = Recording
    return calls
