"""Train one prepared run in several processes with ``accelerate launch``, and stay the run's one process.

A run whose config asks for ``--num-processes N`` (N > 1) is trained by this launcher wherever a run is
started (``prefstudio train``, the TUI's train screen, ``--resume``): the process that would have trained
it starts

    python -m accelerate.commands.launch --multi_gpu --num_processes N ... -m trainers.run.cli --db DB --run-id R

in its own session and waits for it. Every rank runs the ordinary run code (``execute_run``); rank 0 records
(see ``trainers.run.ranks``). ``--multi_gpu`` is accelerate's multi-process DDP launcher (torchrun): on CUDA
it reduces over NCCL; a run on the CPU (``--device cpu``, or ``auto`` with no GPU) tells accelerate
``use_cpu`` and the ranks reduce over gloo. (accelerate's ``--cpu --num_processes 2`` starts ONE process
unless an MPI hostfile is given, so it is not used here.)

Cancel: the signal this process gets (SIGTERM from the TUI's ``request_cancel``, Ctrl-C here) is passed to
rank 0 alone, found by the pid rank 0 records in the store; rank 0 tells the others at the next step
boundary, so all stop after the same step and rank 0 saves the adapter so far. Passing the signal to every
rank instead (what torchrun does with its own SIGTERM) would let each stop at its own step and would be
followed by a SIGKILL after torchrun's 30 s grace, mid-save for a large model. Before rank 0 has recorded
its pid (still loading) the whole launch is stopped, which cancels a run that has not trained yet.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from store.run_log import ACTIVE_RUN_STATUSES, process_alive

if TYPE_CHECKING:
    from store.studio_store import Store

POLL_S = 0.2
EXIT_CODES = {"done": 0, "failed": 1, "cancelled": 130}


def free_port() -> int:
    """A TCP port free now on this machine, for the ranks' rendezvous (two runs at once each get their own)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accelerate_command(run_id: int, db_path: Path | str, num_processes: int, resume: bool = False,
                       port: int | None = None) -> list[str]:
    """The ``accelerate launch`` command line that trains run ``run_id`` in ``num_processes`` processes.

    Every launcher setting is given, so a user's own accelerate config file cannot turn it into another
    kind of launch; mixed precision stays the run's own (``--dtype``), set by the trainer.
    """
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port or free_port()),
        "--module", "trainers.run.cli", "--db", str(db_path), "--run-id", str(run_id),
    ]
    return cmd + (["--resume"] if resume else [])


class _Signals:
    """SIGTERM/SIGINT noted (and counted) instead of ending this process; the wait loop passes them on."""

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._note)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]  # what signal.signal returned before
        self._previous.clear()

    def _note(self, signum, frame) -> None:  # noqa: ANN001
        self.received += 1


def launch_ranks(store: Store, run_id: int, num_processes: int, *, resume: bool = False,
                 echo: Callable[[str], None] = print) -> int:
    """Train prepared run ``run_id`` in ``num_processes`` processes and wait; the CLI's exit code.

    The rank processes write to this process's stdout/stderr (the run's log when the studio started it).
    """
    from trainers.run.process import check_startable

    before = store.get_run(run_id)
    check_startable(before, resume)  # refused here, with rank 0's message, before any process starts
    old_pid = before.pid  # rank 0 records its own pid once it starts; any other pid is not it
    cmd = accelerate_command(run_id, store.path, num_processes, resume)
    echo(f"run {run_id}: training in {num_processes} processes (accelerate launch, DDP)")
    signals = _Signals()
    signals.install()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=_end_with_parent)
        passed_on = 0
        while proc.poll() is None:
            if signals.received > passed_on:
                passed_on = signals.received
                _pass_cancel(store, run_id, old_pid, proc.pid, echo)
            time.sleep(POLL_S)
    finally:
        signals.uninstall()
    run = store.get_run(run_id)
    if run.status in ACTIVE_RUN_STATUSES:  # the ranks ended without recording an end (killed, or never started)
        if signals.received:
            store.set_run_status(run_id, "cancelled", "cancelled before training started; nothing to save")
        else:
            store.set_run_status(run_id, "failed", f"the training processes ended unexpectedly (accelerate "
                                 f"launch exit code {proc.returncode}); see the run's log")
        run = store.get_run(run_id)
    if run.status == "failed":
        echo(f"error: {run.message}")
    return EXIT_CODES.get(run.status, 1)


def _end_with_parent() -> None:
    """In the launch's child, before exec: a SIGTERM when this process dies, however it dies (Linux), so a
    launcher killed outright does not leave its ranks training on; torchrun passes it to every rank."""
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the ranks outlive a killed launcher until they finish


def _pass_cancel(store: Store, run_id: int, old_pid: int | None, launcher_pid: int,
                 echo: Callable[[str], None]) -> None:
    run = store.get_run(run_id)
    rank0 = run.pid if run.pid and run.pid != old_pid and process_alive(run.pid) else None
    if rank0 is not None:  # training: every rank stops after this step; loading: rank 0 ends, torchrun ends the rest
        echo(f"cancel: asking rank 0 (pid {rank0}) to stop every rank after the current step")
        os.kill(rank0, signal.SIGTERM)
        return
    echo("cancel: rank 0 has not started yet; stopping the launch")
    try:
        os.killpg(launcher_pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
