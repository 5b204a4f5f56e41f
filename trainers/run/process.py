"""Execute one stored run: load the model, train LoRA DPO with TRL, publish the adapter, record status.

TRL's ``DPOTrainer`` with a PEFT ``LoraConfig`` and no reference model uses the adapter-disabled policy
as the reference, so there is one copy of the weights. Status moves queued → loading → training →
done / failed / cancelled, with this process's pid, and every expected failure ends as ``failed`` with
a message that says what to do.
"""

from __future__ import annotations

import errno
import os
import resource
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trainers  # noqa: F401  (HF offline env before transformers/TRL)
from store.run_log import ACTIVE_RUN_STATUSES as ACTIVE
from trainers.model_source import ModelSourceError
from trainers.pair_selection import PairSelectionError
from trainers.run.outputs import DiskFullError, RunPaths
from trainers.run_config import RunConfig, RunConfigError


class RunCancelled(BaseException):  # noqa: N818 - a control-flow signal like KeyboardInterrupt
    """Raised by the signal handler while the run is still loading (nothing trained to save yet)."""


class RunError(Exception):
    """The run cannot start or continue; the message is for the user."""


@dataclass
class RunOutcome:
    status: str  # done / failed / cancelled
    message: str
    output_dir: Path | None = None
    summary: dict[str, Any] | None = None


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


def is_worker_process() -> bool:
    """Under `accelerate launch` (DDP/FSDP), every process but rank 0 trains without recording."""
    return int(os.environ.get("RANK", "0") or 0) != 0


class ReadOnlyRuns:
    """A store seen by a worker process: it reads the run and its pairs, and writes nothing."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def set_run_status(self, *args: Any, **kwargs: Any) -> None:
        return None

    def set_run_summary(self, *args: Any, **kwargs: Any) -> None:
        return None

    def add_run_metrics(self, *args: Any, **kwargs: Any) -> int:
        return 0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def resolve_device(config: RunConfig) -> str:
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise RunConfigError("--device cuda was asked for, but no CUDA GPU is visible to PyTorch")
    device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if config.four_bit:
        if device != "cuda":
            raise RunConfigError("--four-bit needs a CUDA GPU; no GPU is in use (drop --four-bit)")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise RunConfigError(
                "--four-bit needs bitsandbytes, which is not installed: pip install 'preference-studio[cuda]'"
            ) from exc
    if config.paged_adamw_8bit and device != "cuda":
        raise RunConfigError("--paged-adamw-8bit needs a CUDA GPU")
    return device


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls in hardware (elsewhere bf16 is emulated and slower than fp32)."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_dtype(config: RunConfig, device: str) -> str:
    """fp32 or bf16. CUDA: bf16 when supported. CPU: bf16 autocast where the CPU has native bf16.

    Measured on a 2-core AVX512-BF16 VM (Gemma 3 270M, batch 2, length <= 256, freed memory kept, see
    ``trainers.run.allocator``): bf16 autocast 1.8-2.5 s per step, fp32 3.1-3.9 s.
    """
    import torch

    if config.dtype != "auto":
        if config.dtype == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
            raise RunConfigError("--dtype bf16: this GPU does not support bfloat16; use --dtype fp32")
        return config.dtype
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


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
    store: Any,
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
        store = ReadOnlyRuns(store)
    else:
        check_startable(run, resume)
    paths = RunPaths(Path(run.output_dir))
    config = None
    facts: dict[str, Any] = {"device": "cpu"}  # filled in as the run learns them (for error messages)
    try:
        config = RunConfig.from_dict(run.config)
        store.set_run_status(run_id, "loading", "loading the model", pid=os.getpid())
        from trainers.methods.dpo import train_and_publish

        return train_and_publish(store, run, config, paths, resume=resume, cancel=cancel, log=log, facts=facts)
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


def _fail(store: Any, run_id: int, message: str, log: Callable[[str], None]) -> RunOutcome:
    log(f"error: {message}")
    try:
        store.set_run_status(run_id, "failed", message)
    except Exception as exc:  # noqa: BLE001 - the store itself may be the problem (disk full)
        # Left 'training' with this (soon dead) pid: the studio's next start, `report`, `compare` and the
        # train screen mark it failed once they see the process is gone (`Store.mark_stale_runs`).
        log(f"error: could not record the failure in the store: {exc}; run {run_id} is marked failed when the "
            "studio next sees that this process is gone")
    return RunOutcome("failed", message)


def check_startable(run: Any, resume: bool) -> None:
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


def wait_for_exit(proc: Any, timeout: float | None = None) -> int | None:
    """Wait for a trainer process started with ``start_run_process``; its return code (None on timeout)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None:
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(0.1)
    return proc.returncode
