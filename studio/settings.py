"""Studio settings: defaults, overridden by the config file, overridden by CLI flags.

The config file is ``config.toml`` in the user config dir (``prefstudio doctor`` prints where), e.g.::

    model = "~/models/qwen2.5-1.5b-instruct-q4_k_m.gguf"
    n_ctx = 4096
    threads = 2
    system_prompt = "You are a concise, friendly assistant."

    [sampling]
    temperature = 0.7
    max_tokens = 128
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from store.locations import config_dir, default_db_path
from studio.engine import SamplingSettings

DEFAULT_SYSTEM_PROMPT = (
    "The following is a conversation between a curious user and a helpful, honest assistant. "
    "The assistant answers briefly and clearly."
)


class SettingsError(Exception):
    """The config file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class StudioSettings:
    model: Path | None = None  # None: the embedded default model
    train_model: Path | None = None  # None: train on the served GGUF itself (an HF model dir also works)
    db: Path = field(default_factory=default_db_path)
    n_ctx: int = 2048
    threads: int | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    candidates: int = 2
    seed: int | None = None  # None: a fresh random seed per candidate; else seed, seed+1, … (demos, tests)


def config_path() -> Path:
    return config_dir() / "config.toml"


def _from_toml(path: Path) -> dict:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    known = {f.name for f in fields(StudioSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SettingsError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    out: dict = {}
    for key, value in data.items():
        if key in ("model", "db", "train_model"):
            out[key] = Path(str(value)).expanduser()
        elif key == "sampling":
            try:
                out[key] = SamplingSettings(**value)
            except (TypeError, ValueError) as exc:
                raise SettingsError(f"{path}: [sampling]: {exc}") from exc
        elif key == "seed":
            if not isinstance(value, int) or value < 0:
                raise SettingsError(f"{path}: seed must be a non-negative integer, got {value!r}")
            out[key] = value
        elif key in ("n_ctx", "threads", "candidates"):
            if not isinstance(value, int) or value < 1:
                raise SettingsError(f"{path}: {key} must be a positive integer, got {value!r}")
            out[key] = value
        else:
            out[key] = str(value)
    return out


def load_settings(path: Path | None = None, **overrides) -> StudioSettings:
    """Defaults < config file < the overrides given (``None`` values are ignored)."""
    path = path or config_path()
    settings = StudioSettings()
    if path.exists():
        settings = replace(settings, **_from_toml(path))
    chosen = {k: v for k, v in overrides.items() if v is not None}
    return replace(settings, **chosen)
