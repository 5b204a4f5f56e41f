"""LoRA adapters loaded into a running llama.cpp model and switched without reloading the base.

Uses llama-cpp-python's low-level API: ``llama_adapter_lora_init`` (load: a few ms for a 6 MB adapter),
``llama_set_adapters_lora`` (switch: under a millisecond), ``llama_adapter_lora_free``. Three traps it closes:

- a failed load returns a NULL pointer *object*, not ``None``, so its truth value is what is tested;
- an adapter for another architecture loads and then segfaults at the first decode, so a file is validated
  against the base (``studio.inference.adapter_checks``) before llama.cpp opens it when the base's GGUFInfo is known;
- after a switch, llama-cpp-python would reuse the prompt prefix evaluated under the previous adapter and
  the output would mix both, so every switch drops the evaluated tokens, the KV memory and any state cache.

Not thread-safe, like the llama.cpp context itself: call it under the engine's lock. ``close()`` must run
before the ``Llama`` is closed (llama.cpp frees the remaining adapters with the model; freeing them again
afterwards would be a double free, so ``close()`` after the model is gone only forgets them).
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from studio.inference import runtime_env  # noqa: F401  (OMP_WAIT_POLICY before llama_cpp is imported)
from studio.inference.adapter_checks import AdapterInfo, validate_adapter
from studio.inference.llama_log import recent_llama_log
from studio.inference.model_files import GGUFInfo

if TYPE_CHECKING:
    from llama_cpp import Llama


class AdapterRuntimeError(RuntimeError):
    """llama.cpp could not load or apply an adapter. The message names the adapter and the reason."""


@dataclass
class LoadedAdapter:
    name: str
    path: Path
    handle: ctypes._Pointer[ctypes.c_void_p]  # what llama_adapter_lora_init returns; llama_adapter_lora_free frees it
    info: AdapterInfo | None
    load_s: float


class AdapterSlots:
    """Named LoRA adapters on one ``llama_cpp.Llama``; at most one active at a time.

    ``base`` is the base model's GGUFInfo; when given (the engine always has it), every file is validated
    against it before llama.cpp sees it.
    """

    def __init__(self, llm: Llama, base: GGUFInfo | None = None) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llm = llm
        self._base = base
        self._slots: dict[str, LoadedAdapter] = {}
        self._active: str | None = None
        self._active_scale = 1.0
        self.last_switch_s: float | None = None
        self.last_load_s: float | None = None

    # --- state ---

    @property
    def active(self) -> str | None:
        """The name of the adapter applied to the context, or None for the base model."""
        return self._active

    @property
    def active_scale(self) -> float:
        return self._active_scale if self._active else 0.0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._slots)

    def __contains__(self, name: object) -> bool:
        return name in self._slots

    def get(self, name: str) -> LoadedAdapter:
        try:
            return self._slots[name]
        except KeyError:
            raise KeyError(f"no adapter named {name!r} is loaded (loaded: {', '.join(self._slots) or 'none'})") from None

    # --- load / unload ---

    def load(self, name: str, path: Path) -> None:
        """Load the GGUF adapter at ``path`` under ``name`` (not activated).

        Raises AdapterFileError (ValueError) when the file does not fit the base, AdapterRuntimeError when
        llama.cpp refuses it, ValueError when ``name`` is already loaded (unload it first).
        """
        if not name:
            raise ValueError("an adapter needs a name")
        if name in self._slots:
            raise ValueError(f"an adapter named {name!r} is already loaded; unload it first")
        path = Path(path).expanduser()
        info = validate_adapter(path, self._base) if self._base is not None else None
        started = time.perf_counter()
        handle = self._lib.llama_adapter_lora_init(self._llm.model, str(path).encode("utf-8"))
        elapsed = time.perf_counter() - started
        if not handle:  # a NULL pointer object, never None
            raise AdapterRuntimeError(f"llama.cpp could not load adapter {path.name} ({path}){_llama_reason()}")
        self._slots[name] = LoadedAdapter(name, path, handle, info, elapsed)
        self.last_load_s = elapsed

    def unload(self, name: str) -> None:
        """Free an adapter; if it is active, the base model becomes active first."""
        slot = self.get(name)
        if self._active == name:
            self.activate(None)
        del self._slots[name]
        if self._model_alive():
            self._lib.llama_adapter_lora_free(slot.handle)

    def close(self) -> None:
        """Deactivate and free every adapter. Call before closing the ``Llama``."""
        alive = self._model_alive()
        if alive and self._active is not None:
            self.activate(None)
        slots, self._slots = self._slots, {}
        self._active = None
        if alive:
            for slot in slots.values():
                self._lib.llama_adapter_lora_free(slot.handle)

    def _model_alive(self) -> bool:
        return getattr(self._llm, "_model", None) is not None and self._llm.model is not None

    # --- switching ---

    def activate(self, name: str | None, scale: float = 1.0) -> None:
        """Apply adapter ``name`` at ``scale`` (llama.cpp multiplies by alpha / r), or the base with None.

        Drops the evaluated prompt so nothing computed under the previous adapter is reused. Re-activating
        what is already active changes nothing and keeps the prompt cache. Times the switch in
        ``last_switch_s``.
        """
        handle = self.get(name).handle if name is not None else None
        if name == self._active and (name is None or scale == self._active_scale):
            return
        lib = self._lib
        started = time.perf_counter()
        if handle is None:
            status = lib.llama_set_adapters_lora(self._llm.ctx, None, 0, None)
        else:
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(handle)
            scales = (ctypes.c_float * 1)(scale)
            status = lib.llama_set_adapters_lora(self._llm.ctx, adapters, 1, scales)
        if status != 0:
            # The context's adapter set is unknown now: fall back to the base so state and reality agree.
            lib.llama_set_adapters_lora(self._llm.ctx, None, 0, None)
            self._active = None
            self._forget_evaluated()
            raise AdapterRuntimeError(
                f"llama.cpp could not apply adapter {name!r} (status {status}){_llama_reason()}; the base model is active"
            )
        self._forget_evaluated()
        self._active, self._active_scale = name, float(scale)
        self.last_switch_s = time.perf_counter() - started

    def _forget_evaluated(self) -> None:
        """Make the next generation evaluate its whole prompt under the new adapter."""
        llm = self._llm
        llm.reset()  # n_tokens = 0: no prefix of the old evaluation is matched again
        memory = self._lib.llama_get_memory(llm.ctx)
        if memory:
            self._lib.llama_memory_clear(memory, True)
        cache = getattr(llm, "cache", None)
        if cache is not None:
            # A state cache (LlamaRAMCache/LlamaDiskCache) holds KV states computed under the old adapter.
            store = cache.cache_state if hasattr(cache, "cache_state") else getattr(cache, "cache", None)
            if hasattr(store, "clear"):
                store.clear()
            else:
                llm.set_cache(None)


def _llama_reason() -> str:
    """llama.cpp's own reason, from the engine's log buffer (empty when that logger is not installed)."""
    reason = recent_llama_log(3)
    return f": {reason}" if reason else ""
