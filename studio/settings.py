"""Studio settings: defaults, overridden by the config file, overridden by CLI flags.

The config file is ``config.toml`` in the user config dir (``prefstudio doctor`` prints where), e.g.::

    model = "~/models/qwen2.5-1.5b-instruct-q4_k_m.gguf"   # or a bundled model by name: "smollm2"
    n_ctx = 4096
    threads = 2
    system_prompt = "You are a concise, friendly assistant."
    candidates = 3            # per prompt in the studio: 1 thumbs, 2 pick the better, 3–4 rank
    attributes = "quality,helpfulness,humor"   # what `a` rates (0–4); or a preset: "steerlm", "helpsteer", "oasst"
    safety = ["profanity", "wordlist:~/blocklist.txt"]  # checkers on every reply (studio/safety/specs.py)
    safety_auto_reject = true # a flagged candidate suggested as rejected in the chat (one key records it)
    reward_run = 7            # a finished reward run scores each candidate; its pick is marked suggested
    reward_scorer = "torch"   # where it scores: torch (as the run trained), torch-fp32 (exact), torch-bf16, llama
    best_first = true         # best-of-N: the candidates shown in the reward model's order, best as A

    [sampling]
    temperature = 0.7
    max_tokens = 128
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from store.locations import config_dir, default_db_path
from studio.attributes import DEFAULT_ATTRIBUTES, AttributeSetError, attribute_set
from studio.inference.engine import SamplingSettings
from studio.inference.model_files import BUNDLED_MODELS, unknown_model_message
from studio.reward.scorer import BACKENDS, DEFAULT_BACKEND, ScorerBackend
from studio.safety.specs import DEFAULT_SAFETY, CheckerSpec, parse_checker_specs
from trainers.prompt_format import PROMPT_FORMAT_NAMES, PromptFormatName

DEFAULT_SYSTEM_PROMPT = (
    "The following is a conversation between a curious user and a helpful, honest assistant. "
    "The assistant answers briefly and clearly."
)


MIN_N_CTX = 64  # below this not even a short prompt and reply fit; 0 or less makes llama.cpp fail obscurely


class SettingsError(Exception):
    """The config file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class StudioSettings:
    model: Path | None = None  # a GGUF file; None: the bundled model named below
    model_name: str | None = None  # a bundled model by name (``--model smollm2``); None with no model: the default
    train_model: Path | None = None  # None: train on the served GGUF itself (an HF model dir also works)
    db: Path = field(default_factory=default_db_path)
    n_ctx: int = 2048
    threads: int | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    candidates: int = 2  # per prompt in the studio, 1–4: thumbs on one, a preference of two, a ranking of more
    # what `a` rates a reply on (0–4 each): a preset name or names in the config (``attributes = "oasst"``)
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES
    seed: int | None = None  # None: a fresh random seed per candidate; else seed, seed+1, … (demos, tests)
    # "auto": the model's own chat template if it has one; "transcript": the plain transcript even then (the way
    # past a model whose template cannot render: never chosen for the user, who must ask for it).
    prompt_format: PromptFormatName = "auto"
    # The safety checkers run on replies (``safety = [...]``, ``--safety``): the bundled classifier unless changed.
    safety: tuple[CheckerSpec, ...] = field(default_factory=lambda: parse_checker_specs(DEFAULT_SAFETY, "default"))
    # Flagged candidates suggested as rejected in the chat (studio/safety/candidate_checks.py): when exactly one of
    # two is flagged, one key records the other over it. Off: the badges only. The palette toggles it.
    safety_auto_reject: bool = False
    # A finished reward run that scores each candidate in the chat (``reward_run``, ``--reward-run``); None: none.
    reward_run: int | None = None
    # Where a reward model scores (``reward_scorer``): torch (a worker process computing as the run trained: bf16
    # matmuls for a bf16 run on a CPU with native bf16, else float32), torch-fp32 (always float32, exactly the
    # float32 model), torch-bf16 (always bf16 matmuls) or llama (the served GGUF, approximate). See
    # studio/reward/scorer.py.
    reward_scorer: ScorerBackend = DEFAULT_BACKEND
    # Best-of-N (``best_first``, ``--best-of N``): with a reward model, the candidates in its order, best as A.
    best_first: bool = False
    # The config file these settings were read from (None: none was), so `doctor` names the one in use.
    config_file: Path | None = None


def config_path() -> Path:
    return config_dir() / "config.toml"


_PATH_KEYS = ("db", "train_model")
_NOT_CONFIG_KEYS = {"config_file", "model_name"}  # model_name comes from the ``model`` key
_COUNT_MINIMUMS = {"n_ctx": MIN_N_CTX, "threads": 1, "candidates": 1}
_SAMPLING_FIELDS = {f.name: f.type for f in fields(SamplingSettings)}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # TOML `true` is a bool, not 1


def check_count(name: str, value: object, minimum: int, where: str) -> int:
    """``value`` as a whole number of at least ``minimum``, else SettingsError naming ``where`` (a flag or key)."""
    if not _is_int(value) or value < minimum:  # type: ignore[operator]
        raise SettingsError(f"{where} must be a whole number of at least {minimum}, got {value!r}")
    return value  # type: ignore[return-value]


MAX_CANDIDATES = 4  # the chat screen lays out at most four candidates side by side


def check_candidates(value: object, where: str) -> int:
    """The studio's candidates per prompt, 1–4, else SettingsError naming ``where`` (a flag or key)."""
    if not _is_int(value) or not 1 <= value <= MAX_CANDIDATES:  # type: ignore[operator]
        raise SettingsError(f"{where} must be a whole number from 1 to {MAX_CANDIDATES} (1: thumbs on one reply, "
                            f"2: pick the better, 3–4: rank them), got {value!r}")
    return value  # type: ignore[return-value]


def check_attributes(value: object, where: str) -> tuple[str, ...]:
    """An attribute set (a preset name, comma-separated names, or a list), else SettingsError naming ``where``."""
    try:
        return attribute_set(value, where)  # type: ignore[arg-type]
    except AttributeSetError as exc:
        raise SettingsError(str(exc)) from exc


def check_safety(value: object, where: str) -> tuple[CheckerSpec, ...]:
    """Safety checker entries (a list, or one text), else SettingsError naming ``where`` and the forms taken."""
    if not isinstance(value, str | list | tuple):
        raise SettingsError(f"{where} must be a list of checkers in quotes, got {value!r}")
    try:
        return parse_checker_specs(value, where)  # type: ignore[arg-type]
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc


def model_choice(text: str, where: str) -> dict[str, Path | str | None]:
    """``--model`` or the config's ``model``: a bundled model's name, else a GGUF path, as the two settings.

    A bundled name wins over a file of the same name in the working folder (``./smollm2`` names the file).
    A bare word that is neither a bundled name nor an existing file is refused here, listing the bundled
    names, instead of failing later as a missing file."""
    text = text.strip()
    if not text:
        raise SettingsError(f"{where}: empty; give a bundled model name ({', '.join(BUNDLED_MODELS)}) or a "
                            "GGUF file path")
    if text in BUNDLED_MODELS:
        return {"model": None, "model_name": text}
    path = Path(text).expanduser()
    looks_like_a_name = not path.suffix and "/" not in text and "\\" not in text and not text.startswith(("~", "."))
    if looks_like_a_name and not path.exists():
        raise SettingsError(f"{where}: {unknown_model_message(text)}")
    return {"model": path, "model_name": None}


def check_prompt_format(value: object, where: str) -> PromptFormatName:
    """``value`` as a prompt format name, else SettingsError naming ``where`` (a flag or key) and the choices."""
    for name in PROMPT_FORMAT_NAMES:
        if value == name:
            return name
    raise SettingsError(f"{where} must be one of {', '.join(PROMPT_FORMAT_NAMES)}, got {value!r}")


def _sampling(path: Path, value: object) -> SamplingSettings:
    """The ``[sampling]`` table: every key known, every value a number, each problem naming its field."""
    if not isinstance(value, dict):
        raise SettingsError(f"{path}: [sampling] must be a table of settings, got {value!r}")
    unknown = sorted(set(value) - set(_SAMPLING_FIELDS))
    if unknown:
        raise SettingsError(f"{path}: [sampling]: unknown setting(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(_SAMPLING_FIELDS))}")
    for key, item in value.items():
        whole = _SAMPLING_FIELDS[key] in (int, "int")
        ok = _is_int(item) if whole else (_is_int(item) or isinstance(item, float))
        if not ok:
            kind = "a whole number" if whole else "a number"
            raise SettingsError(f"{path}: [sampling] {key} must be {kind}, got {item!r}")
    try:
        return check_sampling(SamplingSettings(**value))
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{path}: [sampling] {exc}") from exc


def check_sampling(sampling: SamplingSettings) -> SamplingSettings:
    """Ranges llama.cpp would otherwise take silently (a negative top_k, a min_p above 1)."""
    problems = [
        (sampling.top_k >= 0, "top_k", "must be 0 (no limit) or more"),
        (0 <= sampling.min_p <= 1, "min_p", "must be between 0 and 1"),
        (sampling.repeat_penalty > 0, "repeat_penalty", "must be greater than 0"),
    ]
    for ok, name, problem in problems:
        if not ok:
            raise ValueError(f"{name} {problem}, got {getattr(sampling, name)!r}")
    return sampling


def _from_toml(path: Path) -> dict:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise SettingsError(f"cannot read the config file {path}: {exc.strerror or exc}") from exc
    known = {f.name for f in fields(StudioSettings)} - _NOT_CONFIG_KEYS
    unknown = sorted(set(data) - known)
    if unknown:
        raise SettingsError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    out: dict = {}
    for key, value in data.items():
        if key == "model":
            if not isinstance(value, str) or not value.strip():
                raise SettingsError(f"{path}: model must be a file path in quotes or a bundled model name "
                                    f"({', '.join(BUNDLED_MODELS)}), got {value!r}")
            out.update(model_choice(value, f"{path}: model"))
        elif key in _PATH_KEYS:
            if not isinstance(value, str) or not value.strip():
                raise SettingsError(f"{path}: {key} must be a file path in quotes, got {value!r}")
            out[key] = Path(value).expanduser()
        elif key == "sampling":
            out[key] = _sampling(path, value)
        elif key == "seed":
            out[key] = check_count(key, value, 0, f"{path}: seed")
        elif key == "candidates":
            out[key] = check_candidates(value, f"{path}: candidates")
        elif key == "attributes":
            out[key] = check_attributes(value, f"{path}: attributes")
        elif key in _COUNT_MINIMUMS:
            out[key] = check_count(key, value, _COUNT_MINIMUMS[key], f"{path}: {key}")
        elif key == "prompt_format":
            out[key] = check_prompt_format(value, f"{path}: prompt_format")
        elif key == "reward_run":
            out[key] = check_count(key, value, 1, f"{path}: reward_run")
        elif key == "reward_scorer":
            if value not in BACKENDS:
                raise SettingsError(f"{path}: reward_scorer must be one of {', '.join(BACKENDS)}, got {value!r}")
            out[key] = value
        elif key == "best_first":
            if not isinstance(value, bool):
                raise SettingsError(f"{path}: best_first must be true or false, got {value!r}")
            out[key] = value
        elif key == "safety_auto_reject":
            if not isinstance(value, bool):
                raise SettingsError(f"{path}: safety_auto_reject must be true or false, got {value!r}")
            out[key] = value
        elif key == "safety":
            out[key] = check_safety(value, f"{path}: safety")
        elif key == "system_prompt":
            if not isinstance(value, str):
                raise SettingsError(f"{path}: system_prompt must be text in quotes, got {value!r}")
            out[key] = value
        else:  # pragma: no cover - every known key is handled above
            raise SettingsError(f"{path}: {key} cannot be set in the config file")
    return out


# Flags checked like their config keys, so `--threads -3` is named instead of reaching llama.cpp.
_FLAG_MINIMUMS = {"n_ctx": ("--n-ctx", MIN_N_CTX), "threads": ("--threads", 1), "seed": ("--seed", 0),
                  "reward_run": ("--reward-run", 1)}


def load_settings(path: Path | None = None, **overrides) -> StudioSettings:
    """Defaults < config file < the overrides given (``None`` values are ignored).

    A ``model`` override given as text is what ``--model`` says: a bundled name or a path (``model_choice``);
    either way it replaces the config file's model.

    A ``path`` given explicitly (``--config``) must be a readable file; without one, a missing default
    config file means the defaults.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.exists():
            raise SettingsError(f"config file not found: {path} (given with --config)")
        if not path.is_file():
            raise SettingsError(f"{path} is not a file; --config takes a TOML file")
    else:
        path = config_path()
    settings = StudioSettings()
    if path.is_file():
        settings = replace(settings, **_from_toml(path), config_file=path)
    elif path.exists():
        raise SettingsError(f"{path} is not a file; the config must be a TOML file")
    chosen = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(chosen.get("model"), str):
        chosen.update(model_choice(chosen["model"], "--model"))
    elif "model" in chosen:
        chosen["model_name"] = None
    if "prompt_format" in chosen:
        chosen["prompt_format"] = check_prompt_format(chosen["prompt_format"], "--prompt-format")
    if "candidates" in chosen:
        chosen["candidates"] = check_candidates(chosen["candidates"], "--candidates")
    if "attributes" in chosen:
        chosen["attributes"] = check_attributes(chosen["attributes"], "--attributes")
    if "safety" in chosen:
        chosen["safety"] = check_safety(chosen["safety"], "--safety")
    for key, (flag_name, minimum) in _FLAG_MINIMUMS.items():
        if key in chosen:
            check_count(key, chosen[key], minimum, flag_name)
    return replace(settings, **chosen)
