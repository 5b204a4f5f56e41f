"""llama.cpp's log, kept in a ring buffer: ``verbose=False`` hides real errors but not noise.

The engine installs it; the engine and the adapter slots quote its last lines when llama.cpp refuses a
model or an adapter, which is where the actual reason is printed.
"""

from __future__ import annotations

import ctypes
import threading
from types import ModuleType

_log_lock = threading.Lock()
_last_log: list[str] = []


def install_quiet_logger(llama_cpp: ModuleType) -> None:
    """Route llama.cpp's log to a ring buffer: ``verbose=False`` hides real errors but not noise.

    The last lines are quoted when a load fails, which is where the actual reason is printed.
    """

    @llama_cpp.llama_log_callback
    def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        with _log_lock:
            _last_log.append(text.decode("utf-8", "replace"))
            del _last_log[:-40]

    # Keep a reference: the C side holds only the pointer.
    install_quiet_logger.callback = _callback  # type: ignore[attr-defined]
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


def recent_llama_log(lines: int = 6) -> str:
    with _log_lock:
        return "".join(_last_log[-lines:]).strip()
