"""Training methods, one module each; the run process looks a method up here by the run config's ``method``.

A method module defines ``METHOD``, an object with ``train_and_publish(store, run, config, paths, *, resume,
cancel, log, facts) -> RunOutcome`` (the ``TrainingMethod`` protocol): it builds its TRL trainer from the run
config and the selected pairs, trains, and publishes the adapter. Adding a method = one module + one line in
``registry.METHODS``. Methods import from ``trainers.run`` (errors, device, outputs, callbacks), never the run
process.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from trainers.methods.registry import DEFAULT_METHOD, METHODS, unknown_method_message

if TYPE_CHECKING:
    from store.records import RunRecord
    from store.studio_store import Store
    from trainers.run.errors import RunOutcome
    from trainers.run.outputs import RunPaths
    from trainers.run_config import RunConfig

__all__ = ["DEFAULT_METHOD", "METHODS", "CancelSignal", "TrainingMethod", "training_method"]


class CancelSignal(Protocol):
    """What a method reads of the run process's cancel controller (``trainers.run.process.CancelController``)."""

    event: threading.Event
    phase: str

    @property
    def cancelled(self) -> bool: ...


class TrainingMethod(Protocol):
    """One way to train a run: build the trainer from ``config`` and the run's pairs, train, publish."""

    def train_and_publish(
        self,
        store: Store,
        run: RunRecord,
        config: RunConfig,
        paths: RunPaths,
        *,
        resume: bool,
        cancel: CancelSignal,
        log: Callable[[str], None],
        facts: dict[str, Any],
    ) -> RunOutcome: ...


def training_method(name: str) -> TrainingMethod:
    """The method registered as ``name``, its module imported only now (torch, TRL are heavy)."""
    problem = unknown_method_message(name)
    if problem:
        raise ValueError(problem)
    return importlib.import_module(METHODS[name]).METHOD
