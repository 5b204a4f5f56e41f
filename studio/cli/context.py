"""What every command shares: the settings the main callback loaded, the model to serve, the engine."""

from __future__ import annotations

from pathlib import Path

from studio.inference.engine import ChatEngine, EngineConfig
from studio.inference.model_files import BUNDLED_MODELS, DEFAULT_MODEL_NAME, bundled_model_path
from studio.settings import StudioSettings


class _State:
    settings: StudioSettings | None = None


state = _State()


def settings() -> StudioSettings:
    assert state.settings is not None
    return state.settings


def resolve_model_path(progress: bool = True) -> Path:
    """The model to serve: a --model / config path, else the bundled model it names (the default: Gemma),
    assembled into the cache the first time with a progress bar on stderr."""
    chosen = settings()
    if chosen.model is not None:
        return chosen.model
    name = chosen.model_name or DEFAULT_MODEL_NAME
    if not progress or BUNDLED_MODELS[name].files().model_file is not None:
        return bundled_model_path(name)
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
        transient=True, console=_stderr_console(),
    ) as bar:
        task = bar.add_task(f"assembling the bundled model {name} (once)", total=None)
        return bundled_model_path(name, lambda done, total: bar.update(task, completed=done, total=total))


def _stderr_console():  # noqa: ANN202
    from rich.console import Console

    return Console(stderr=True)


def open_engine() -> ChatEngine:
    s = settings()
    return ChatEngine(EngineConfig(model_path=resolve_model_path(), n_ctx=s.n_ctx, n_threads=s.threads,
                                   prompt_format=s.prompt_format))
