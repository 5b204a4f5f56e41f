"""Execute one stored run: load the model, train LoRA DPO with TRL, publish the adapter, record status.

TRL's ``DPOTrainer`` with a PEFT ``LoraConfig`` and no reference model uses the adapter-disabled policy
as the reference, so there is one copy of the weights. Status moves queued → loading → training →
done / failed / cancelled, with this process's pid, and every expected failure ends as ``failed`` with
a message that says what to do.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import trainers  # noqa: F401  (HF offline env before transformers/TRL)
from store.run_log import ACTIVE_RUN_STATUSES as ACTIVE
from trainers.methods import training_method
from trainers.model_source import ModelSourceError
from trainers.pair_selection import PairSelectionError
from trainers.run.errors import RunCancelled, RunError, RunOutcome
from trainers.run.outputs import DiskFullError, RunPaths
from trainers.run.ranks import is_worker_process, process_rank
from trainers.run_config import RunConfig, RunConfigError

if TYPE_CHECKING:
    import subprocess

    from store.records import RunRecord
    from store.studio_store import Store


class CancelController:
    """Owned by the training process: SIGTERM/SIGINT become a stop at the next step boundary.

    While loading, a signal aborts at once (``RunCancelled``); while training it sets ``event`` and the
    callback stops after the current step; while saving it is noted and the save completes.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.phase = "loading"
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Take over SIGTERM and SIGINT (main thread only; elsewhere cancel by setting ``event``)."""
        import signal

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:  # noqa: ANN001
        self.event.set()
        if self.phase == "loading":
            raise RunCancelled()

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()


class ReadOnlyRuns:
    """A store seen by a worker process: it reads the run and its pairs, and writes nothing.

    The run writers every method calls do nothing here; any other write fails loudly, since the connection
    is switched to SQLite's ``query_only`` (so a method added later cannot write from a worker by mistake).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        store.db.execute("PRAGMA query_only = ON")

    def __getattr__(self, name: str) -> Any:  # any read of the Store passes through
        return getattr(self._store, name)

    # The Store's three run writers, same signatures, writing nothing.
    def set_run_status(self, run_id: int, status: str, message: str | None = None, pid: int | None = None) -> None:
        return None

    def set_run_summary(self, run_id: int, summary: dict[str, Any]) -> None:
        return None

    def add_run_metrics(self, run_id: int, step: int, epoch: float | None, metrics: dict[str, Any]) -> int:
        return 0

    def delete_run_metrics(self, run_id: int, after_step: int | None = None) -> int:
        return 0


def oom_message(config: RunConfig, device: str) -> str:
    fixes = [f"a shorter --max-length (now {config.max_length or 'auto'})",
             f"a smaller --batch-size (now {config.batch_size}"
             + (", raise --grad-accum to keep the effective batch)" if config.batch_size > 1 else ")")]
    if device == "cuda":
        if not config.four_bit:
            fixes.append("--four-bit (QLoRA)")
        if not (config.gradient_checkpointing or config.gradient_checkpointing is None):
            fixes.append("--gradient-checkpointing")
    else:
        fixes.append("closing other programs, or training on a CUDA GPU with --four-bit")
    return f"out of memory while training on {device}; try " + ", ".join(fixes)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC anywhere in the chain (torch and safetensors wrap it in their own errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "no space left on device" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    return False


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text
    )


def execute_run(
    store: Store,
    run_id: int,
    *,
    resume: bool = False,
    cancel: CancelController | None = None,
    log: Callable[[str], None] = print,
) -> RunOutcome:
    """Train run ``run_id`` to its end and record the outcome in the store. Never raises for a run error."""
    cancel = cancel or CancelController()
    run = store.get_run(run_id)
    if is_worker_process():
        store = cast("Store", ReadOnlyRuns(store))  # reads pass through; the three writers do nothing
    else:
        check_startable(run, resume)
    paths = RunPaths(Path(run.output_dir))
    config = None
    facts: dict[str, Any] = {"device": "cpu"}  # filled in as the run learns them (for error messages)
    try:
        config = RunConfig.from_dict(run.config)
        store.set_run_status(run_id, "loading", "loading the model", pid=os.getpid())
        method = training_method(config.method)  # RunConfig checked the name against the registry
        outcome = method.train_and_publish(store, run, config, paths, resume=resume, cancel=cancel, log=log,
                                           facts=facts)
        if is_worker_process():
            log(f"rank {process_rank()}: {outcome.status}")
        return outcome
    except RunCancelled:
        message = "cancelled before training started; nothing to save"
        store.set_run_status(run_id, "cancelled", message)
        return RunOutcome("cancelled", message)
    except DiskFullError as exc:
        return _fail(store, run_id, exc.strerror or str(exc), log)
    except (RunConfigError, PairSelectionError, ModelSourceError, RunError) as exc:
        return _fail(store, run_id, str(exc), log)
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the store as 'failed'
        if is_disk_full(exc):
            return _fail(store, run_id, f"the disk is full while writing the run's files under "
                         f"{paths.output_dir.parent}: free some space, then resume the run (--resume)", log)
        if config is not None and is_oom(exc):
            return _fail(store, run_id, oom_message(config, facts["device"]), log)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            _fail(store, run_id, f"interrupted ({type(exc).__name__})", log)
            raise
        log(traceback.format_exc())
        return _fail(store, run_id, f"training failed: {type(exc).__name__}: {exc}", log)


def _fail(store: Store, run_id: int, message: str, log: Callable[[str], None]) -> RunOutcome:
    log(f"error: {message}")
    try:
        store.set_run_status(run_id, "failed", message)
    except Exception as exc:  # noqa: BLE001 - the store itself may be the problem (disk full)
        # Left 'training' with this (soon dead) pid: the studio's next start, `report`, `compare` and the
        # train screen mark it failed once they see the process is gone (`Store.mark_stale_runs`).
        log(f"error: could not record the failure in the store: {exc}; run {run_id} is marked failed when the "
            "studio next sees that this process is gone")
    return RunOutcome("failed", message)


def check_startable(run: RunRecord, resume: bool) -> None:
    from store.run_log import process_alive

    if run.status in ACTIVE and run.pid and run.pid != os.getpid() and process_alive(run.pid, run.pid_started):
        raise RunError(f"run {run.id} is already running (pid {run.pid})")
    if resume:
        if run.status == "done":
            raise RunError(f"run {run.id} is already done; start a new run to train more")
        return
    if run.status != "queued":
        raise RunError(
            f"run {run.id} was already started (status {run.status}); continue it with --resume, or start a new run"
        )


def wait_for_exit(proc: subprocess.Popen, timeout: float | None = None) -> int | None:
    """Wait for a trainer process started with ``start_run_process``; its return code (None on timeout)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None:
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(0.1)
    return proc.returncode
