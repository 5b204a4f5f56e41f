"""llama.cpp's log callback and model loads from several threads at once (the TUI loads engines in workers)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# Three threads each load and close the second bundled model three times, then the script prints where its
# stdout and stderr point. Before the fix this died with a segmentation fault within a second (each load
# replaced the log callback, freeing the one another thread was calling), and once that was fixed, stdout
# and stderr were left on /dev/null (two constructors saving each other's redirection).
_SCRIPT = textwrap.dedent("""
    import sys, threading
    from studio.inference.engine import ChatEngine, EngineConfig
    from studio.inference.llama_log import installed_callback
    from studio.inference.model_files import bundled_model_path

    path = bundled_model_path("smollm2")
    errors, callbacks = [], set()

    def load_three_times():
        try:
            for _ in range(3):
                engine = ChatEngine(EngineConfig(model_path=path, n_ctx=256))
                callbacks.add(id(installed_callback()))
                engine.close()
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=load_three_times) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("callbacks", len(callbacks), "errors", errors)
    print("stderr still here", file=sys.stderr)
""")


def test_engines_loaded_from_three_threads_at_once_keep_one_log_callback_and_the_process_output():
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "callbacks 1 errors []" in proc.stdout
    assert "stderr still here" in proc.stderr
