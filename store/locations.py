"""Where the studio keeps its files: the platform's user directories, or one folder for tests and demos.

Setting `PREFSTUDIO_HOME` moves everything (data, cache, config) under that folder, so a test or a demo
never touches the user's real studio.
"""

import os
from pathlib import Path

import platformdirs

APP_NAME = "prefstudio"
HOME_ENV = "PREFSTUDIO_HOME"


def home_override() -> Path | None:
    """Return the folder named by `PREFSTUDIO_HOME`, or None when it is unset or empty."""
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """The folder for the database and run outputs (created if missing)."""
    home = home_override()
    return _ensure(home / "data" if home else platformdirs.user_data_path(APP_NAME, appauthor=False))


def cache_dir() -> Path:
    """The folder for re-creatable files such as assembled models (created if missing)."""
    home = home_override()
    return _ensure(home / "cache" if home else platformdirs.user_cache_path(APP_NAME, appauthor=False))


def config_dir() -> Path:
    """The folder for the user's settings (created if missing)."""
    home = home_override()
    return _ensure(home / "config" if home else platformdirs.user_config_path(APP_NAME, appauthor=False))


def default_db_path() -> Path:
    """The studio database used when no `--db` is given."""
    return data_dir() / "studio.db"


def runs_dir() -> Path:
    """The folder under which each training run gets its own output directory (created if missing)."""
    return _ensure(data_dir() / "runs")


def models_cache_dir() -> Path:
    """The folder for model files the studio assembles or converts (created if missing)."""
    return _ensure(cache_dir() / "models")
