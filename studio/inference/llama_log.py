"""llama.cpp's log, kept in a ring buffer: ``verbose=False`` hides real errors but not noise.

The engine loads its models through ``load_quietly``; the engine and the adapter slots quote the log's last
lines when llama.cpp refuses a model or an adapter, which is where the actual reason is printed.

The callback is installed once per process and lives as long as the process. llama.cpp holds only the
pointer, and logs from whichever thread loads or runs a model: a second install that replaced the callback
freed the first one's ctypes trampoline while another thread could still call it (a segmentation fault seen
when a chat screen loaded its engine while an earlier engine was still logging).

``load_quietly`` loads one model at a time: with ``verbose=False`` its constructor points
file descriptors 1 and 2 at /dev/null and back, saving whatever they point at first. Two loads at once could
save each other's /dev/null and leave the process's stdout and stderr there for good (the TUI's screen output
with them).
"""

from __future__ import annotations

import ctypes
import threading
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llama_cpp import Llama

_log_lock = threading.Lock()
_last_log: list[str] = []
# Held while the callback is installed and while a model loads: both touch process-wide llama.cpp state.
_load_lock = threading.Lock()
# The installed ctypes callback; never replaced or released once set.
_installed_callback: object | None = None


def _record(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    with _log_lock:
        _last_log.append(text.decode("utf-8", "replace"))
        del _last_log[:-40]


def _install_once(llama_cpp: ModuleType) -> None:
    """Route llama.cpp's log to the ring buffer, once per process (call with ``_load_lock`` held)."""
    global _installed_callback
    if _installed_callback is None:
        _installed_callback = llama_cpp.llama_log_callback(_record)
        llama_cpp.llama_log_set(_installed_callback, ctypes.c_void_p(0))


def load_quietly(llama_cpp: ModuleType, **llama_kwargs: object) -> Llama:
    """``llama_cpp.Llama(verbose=False, **llama_kwargs)`` with the log routed to the ring buffer, one load at a
    time in this process (see above)."""
    with _load_lock:
        _install_once(llama_cpp)
        return llama_cpp.Llama(verbose=False, **llama_kwargs)


def installed_callback() -> object | None:
    """The callback llama.cpp calls, or None before the first load."""
    return _installed_callback


def recent_llama_log(lines: int = 6) -> str:
    with _log_lock:
        return "".join(_last_log[-lines:]).strip()
