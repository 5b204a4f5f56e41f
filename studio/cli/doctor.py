"""``prefstudio doctor``: everything a bug report needs, gathered without loading the model."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import typer

from studio.cli.context import resolve_model_path, settings
from studio.cli.errors import user_errors
from studio.cli.terminal_text import visible
from studio.inference.engine import default_threads
from studio.settings import StudioSettings, config_path

PACKAGES = (
    "preference-studio", "llama-cpp-python", "textual", "sqlite-utils", "gguf", "torch", "transformers",
    "trl", "peft", "datasets", "accelerate", "bitsandbytes",
)


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def engine_build() -> str:
    """Describe the llama.cpp build: which CPU kernels it carries, and whether AMX (which crashes
    Q4_K_M evaluation on these CPUs in native builds) is compiled in."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    features = [part.strip() for part in info.replace("\n", "|").split("|") if "= 1" in part]
    names = ", ".join(f.split("=")[0].strip() for f in features)
    amx = any("AMX" in f for f in features)
    kind = "native build with AMX kernels (may segfault on AMX CPUs)" if amx else "portable build (GGML_NATIVE=OFF)"
    return f"{kind}; CPU features: {names or 'none reported'}"


def collect_report(settings: StudioSettings, resolve_model: Callable[[], Path]) -> dict[str, str]:
    from store.studio_store import Store
    from studio.inference.model_files import file_sha256, inspect_gguf

    report: dict[str, str] = {}
    model_path = resolve_model()
    info = inspect_gguf(model_path)
    report["model"] = str(model_path)
    report["model sha256"] = file_sha256(model_path)
    report["model name / arch"] = f"{info.name} / {info.architecture}, {info.n_layers} layers, {info.size_bytes:,} bytes"
    report["prompt format"] = "GGUF chat template" if info.chat_template else "transcript (no chat template)"
    report["engine"] = engine_build()
    decode, batch = default_threads()
    report["threads"] = (
        f"decode {settings.threads or decode}, prompt {batch} (cpu_count {os.cpu_count()}); "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    report["context"] = f"n_ctx {settings.n_ctx}"
    with Store.open(settings.db) as store:
        report["database"] = str(store.path)
        report["schema version"] = str(store.schema_version)
        report["pairs"] = str(store.count_pairs())
    used = settings.config_file  # the file actually read (--config or the default one), not always the default
    report["config file"] = f"{used} (read)" if used else f"{config_path()} (absent: defaults)"
    report["offline"] = f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}"
    for name in PACKAGES:
        report[name] = _version(name)
    return report


def doctor() -> None:
    """Print what the studio would use: model, engine build, threads, database, versions."""
    with user_errors():
        report = collect_report(settings(), resolve_model_path)
    width = max(len(k) for k in report)
    for key, value in report.items():
        typer.echo(f"{key:<{width}}  {visible(value, keep='')}")  # paths and the system prompt are user text
