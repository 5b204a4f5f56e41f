"""What every command shares: the settings the main callback loaded, the model to serve, the engine."""

from __future__ import annotations

from pathlib import Path

from studio.inference.engine import ChatEngine, EngineConfig
from studio.inference.model_files import default_model_path, ensure_default_model
from studio.settings import StudioSettings


class _State:
    settings: StudioSettings | None = None


state = _State()


def settings() -> StudioSettings:
    assert state.settings is not None
    return state.settings


def resolve_model_path(progress: bool = True) -> Path:
    """The model to serve: --model / config, else the embedded default (assembled once, with a bar)."""
    chosen = settings().model
    if chosen is not None:
        return chosen
    if default_model_path().exists():
        return ensure_default_model()
    if not progress:
        return ensure_default_model()
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        transient=True, console=_stderr_console(),
    ) as bar:
        task = bar.add_task("assembling the embedded model (once)", total=None)
        return ensure_default_model(lambda done, total: bar.update(task, completed=done, total=total))


def _stderr_console():  # noqa: ANN202
    from rich.console import Console

    return Console(stderr=True)


def open_engine() -> ChatEngine:
    s = settings()
    return ChatEngine(EngineConfig(model_path=resolve_model_path(), n_ctx=s.n_ctx, n_threads=s.threads,
                                   prompt_format=s.prompt_format))
