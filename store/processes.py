"""Whether the process a row names is still the one that wrote it: its pid, and when it started.

A pid alone is not an identity: after a reboot, or on a busy machine, the number comes back for another
program, and a dead training run or import would then look alive for ever. Where the OS tells a
process's start time (Linux: field 22 of /proc/PID/stat, in clock ticks since boot), it is recorded next
to the pid and compared.
"""

from __future__ import annotations

import os


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat from field 3 (the state) on; None where there is no such file."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after the last one.
    return stat[stat.rfind(b")") + 2:].split()


def process_start_time(pid: int) -> str | None:
    """An opaque text that differs between two processes that had the same pid; None where unknown."""
    fields = _stat_fields(pid)
    try:
        return f"linux-ticks:{int(fields[19])}" if fields is not None else None
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, started: str | None = None) -> bool:
    """Whether a process with this id exists (it may belong to another user) and, when `started` (a
    `process_start_time` recorded with the pid) is given and the OS can tell, is that same process."""
    if os.name == "nt":
        # os.kill on Windows terminates the target whatever the signal, so it cannot be used to
        # probe; assume alive rather than kill a live trainer.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat_fields(pid)
    if fields and fields[0] == b"Z":  # exited, not yet reaped by its parent: it will never write again
        return False
    if started is None:
        return True
    now = process_start_time(pid)
    return now is None or now == started
