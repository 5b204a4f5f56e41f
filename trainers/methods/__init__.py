"""Training methods, one module each; the run process looks a method up here by name.

Each method module has ``train_and_publish(store, run, config, paths, *, resume, cancel, log, facts) ->
RunOutcome``: it builds its TRL trainer from the run config and the selected pairs, trains, and publishes
the adapter. Adding a method = one module + one line in ``METHODS``. Methods import from
``trainers.run`` (errors, device, outputs, callbacks), never the run process itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

METHODS: dict[str, str] = {
    "dpo": "trainers.methods.dpo",  # TRL DPOTrainer + PEFT LoRA
}


def training_method(name: str) -> Callable[..., Any]:
    """The ``train_and_publish`` of method ``name``, imported only now (torch, TRL are heavy)."""
    try:
        module = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown training method {name!r}; known: {', '.join(sorted(METHODS))}") from None
    return importlib.import_module(module).train_and_publish
