"""A long-lived worker process that answers one JSON object per line: the torch side of the reward scorer and of
the attribute model (the studio itself never imports torch). Its stderr goes to a temporary log, quoted in errors."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO


class JsonLinesWorker:
    """``python -m MODULE ARGS…`` kept running; ``request`` writes one JSON line and reads the answer."""

    def __init__(self, module: str, args: list[str], log_prefix: str, *, new_session: bool = False) -> None:
        # Imported here, not at the top: the worker processes import this module too, and importing runtime_env
        # would set its llama.cpp environment in them before they load torch.
        from studio.inference.runtime_env import torch_worker_env

        self.lock = threading.Lock()
        self._log: IO[str] = tempfile.NamedTemporaryFile("w+", prefix=log_prefix, suffix=".log", delete=False)
        self._process: subprocess.Popen[str] | None = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, encoding="utf-8",
            start_new_session=new_session, env=torch_worker_env(),
        )

    @property
    def closed(self) -> bool:
        return self._process is None or self._process.stdin is None

    def request(self, payload: dict) -> dict:
        """The worker's answer to ``payload``; ``{"error": …}`` when it stopped (the caller words the message)."""
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps(payload) + "\n")
            self._process.stdin.flush()
        except OSError:
            return {"error": f"the worker stopped: {self.log_tail()}"}
        return self.read()

    def read(self) -> dict:
        """The next answer. A library may print to stdout while the model loads: lines that are not a JSON object
        are skipped."""
        assert self._process is not None and self._process.stdout is not None
        for _ in range(1000):
            line = self._process.stdout.readline()
            if not line:
                return {"error": f"the worker exited: {self.log_tail()}"}
            try:
                answer = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(answer, dict):
                return answer
        return {"error": "the worker wrote 1000 lines that are not answers"}

    def log_tail(self) -> str:
        try:
            self._log.flush()
            text = Path(self._log.name).read_text(encoding="utf-8", errors="replace").strip()
        except (OSError, ValueError):
            return "(no log)"
        return text[-600:] or "(nothing on stderr)"

    def close(self) -> None:
        """End of requests (the worker exits), then drop its log. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                try:
                    process.stdin.close()
                except OSError:
                    pass
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if not self._log.closed:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
