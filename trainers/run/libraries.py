"""What every training method does with the Hugging Face libraries around a run: quiet logs, recorded versions."""

from __future__ import annotations

import platform


def quiet_progress_bars() -> None:
    """The run's log is read by people and tailed by the TUI: one line per step, no progress bars."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def library_versions() -> dict[str, str]:
    """The versions a run's summary records, so a result can be traced to the stack that produced it."""
    import peft
    import torch
    import transformers
    import trl

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__}
