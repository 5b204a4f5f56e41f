"""llama.cpp's log, kept in a ring buffer: ``verbose=False`` hides real errors but not noise.

The engine installs it; the engine and the adapter slots quote its last lines when llama.cpp refuses a
model or an adapter, which is where the actual reason is printed.

The callback is installed once per process and lives as long as the process. llama.cpp holds only the
pointer, and logs from whichever thread loads or runs a model: a second install that replaced the callback
freed the first one's ctypes trampoline while another thread could still call it (a segmentation fault seen
when a chat screen loaded its engine while an earlier engine was still logging).

``LOAD_LOCK`` serialises ``llama_cpp.Llama(...)`` across threads: with ``verbose=False`` its constructor points
file descriptors 1 and 2 at /dev/null and back, saving whatever they point at first. Two loads at once could
save each other's /dev/null and leave the process's stdout and stderr there for good (the TUI's screen output
with them).
"""

from __future__ import annotations

import ctypes
import threading
from types import ModuleType

_log_lock = threading.Lock()
_last_log: list[str] = []
_install_lock = threading.Lock()
LOAD_LOCK = threading.Lock()
# The installed ctypes callback; never replaced or released once set.
_installed_callback: object | None = None


def _record(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    with _log_lock:
        _last_log.append(text.decode("utf-8", "replace"))
        del _last_log[:-40]


def install_quiet_logger(llama_cpp: ModuleType) -> None:
    """Route llama.cpp's log to the ring buffer, once per process (later calls do nothing)."""
    global _installed_callback
    with _install_lock:
        if _installed_callback is not None:
            return
        callback = llama_cpp.llama_log_callback(_record)
        _installed_callback = callback
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def installed_callback() -> object | None:
    """The callback llama.cpp calls, or None before the first install."""
    return _installed_callback


def recent_llama_log(lines: int = 6) -> str:
    with _log_lock:
        return "".join(_last_log[-lines:]).strip()
