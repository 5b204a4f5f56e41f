"""``prefstudio models``: the bundled models, what they are and what this machine holds for them.

Nothing is loaded, assembled or hashed to list them: the header is read from the file in place (for Gemma
before its first use, from the first chunk of its package, which holds the whole header), and the cache is
looked up by each model's published sha256, the key its converted training weights are stored under.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer

from studio.cli.context import settings
from studio.cli.errors import user_errors
from studio.cli.terminal_text import json_visible, visible
from studio.inference.gguf_header import GGUFFormatError, read_gguf_header
from studio.inference.model_files import (
    BUNDLED_MODELS,
    DEFAULT_MODEL_NAME,
    BundledFiles,
    BundledModel,
    ModelFileError,
    inspect_gguf,
)


@dataclass(frozen=True)
class ModelHeader:
    """What a bundled model's GGUF header says about it."""

    architecture: str
    n_layers: int | None
    context_length: int | None
    prompt_format: str  # "chat template (ChatML)", "chat template", or "transcript (no chat template)"


@dataclass(frozen=True)
class CachedFiles:
    """What the model cache holds for one model, by its sha256 (built by the first training run)."""

    converted_weights: str | None  # the dequantised HF folder training loads
    converted_bytes: int
    tokenizer: str | None  # the tokenizer alone, read from the GGUF once for counting tokens


@dataclass(frozen=True)
class ModelListing:
    """One line-group of ``prefstudio models`` (and one object of its ``--json``)."""

    name: str
    title: str
    default: bool
    in_use: bool  # the model these settings (--model / config) serve
    installed: bool
    package: str
    install_hint: str
    package_bytes: int
    file: str | None  # the GGUF llama.cpp loads; None: not installed, or (Gemma) not assembled yet
    file_bytes: int | None
    header: ModelHeader | None
    header_problem: str | None
    sha256: str
    cache: CachedFiles


def _prompt_format(template: object) -> str:
    if not template:
        return "transcript (no chat template)"
    return "chat template (ChatML)" if "<|im_start|>" in str(template) else "chat template"


def _header(files: BundledFiles) -> ModelHeader:
    """From the whole file when it is in place (checked like every model), else from the package's first chunk."""
    if files.model_file is not None:
        info = inspect_gguf(files.model_file)
        return ModelHeader(info.architecture, info.n_layers, info.context_length, _prompt_format(info.chat_template))
    try:
        meta = read_gguf_header(files.package_files[0]).metadata
    except (GGUFFormatError, OSError) as exc:
        raise ModelFileError(f"{files.package_files[0]}: {exc}") from exc
    arch = str(meta.get("general.architecture", "?"))

    def whole(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    return ModelHeader(arch, whole("block_count"), whole("context_length"),
                       _prompt_format(meta.get("tokenizer.chat_template")))


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _cached(sha256: str) -> CachedFiles:
    from trainers.model_source import converted_dir, tokenizer_cache_dir

    if not sha256:
        return CachedFiles(None, 0, None)
    converted, tokenizer = converted_dir(sha256), tokenizer_cache_dir(sha256)
    return CachedFiles(str(converted) if converted.is_dir() else None,
                       _folder_bytes(converted) if converted.is_dir() else 0,
                       str(tokenizer) if tokenizer.is_dir() else None)


def model_listing(model: BundledModel, in_use: str | None) -> ModelListing:
    """One bundled model as this machine has it; a damaged file is reported in the listing, not raised."""
    files = model.files()
    header, problem = None, None
    if files.installed:
        try:
            header = _header(files)
        except ModelFileError as exc:
            problem = str(exc)
    return ModelListing(
        name=model.name, title=model.title, default=model.name == DEFAULT_MODEL_NAME, in_use=model.name == in_use,
        installed=files.installed, package=model.package, install_hint=model.install_hint,
        package_bytes=sum(f.stat().st_size for f in files.package_files),
        file=str(files.model_file) if files.model_file else None,
        file_bytes=files.model_file.stat().st_size if files.model_file else None,
        header=header, header_problem=problem, sha256=files.sha256, cache=_cached(files.sha256),
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def listing_lines(item: ModelListing) -> list[str]:
    marks = [m for m, on in (("default", item.default), ("in use", item.in_use)) if on]
    marked = f" ({', '.join(marks)})" if marks else ""
    lines = [f"{item.name}{marked}: {item.title}"]
    if not item.installed:
        lines.append(f"  not installed: {item.install_hint}")
        return lines
    lines.append(f"  package: {item.package}, {_mb(item.package_bytes)}")
    if item.file is None:
        lines.append("  file: not assembled yet (assembled into the model cache on first use)")
    else:
        lines.append(f"  file: {item.file} ({_mb(item.file_bytes or 0)})")
    if item.header is not None:
        h = item.header
        shape = ", ".join(p for p in (f"{h.n_layers} layers" if h.n_layers else "",
                                      f"context {h.context_length:,}" if h.context_length else "") if p)
        lines.append(f"  architecture: {h.architecture}{f' ({shape})' if shape else ''}")
        lines.append(f"  prompt format: {h.prompt_format}")
    else:
        lines.append(f"  header unreadable: {item.header_problem}")
    cache = item.cache
    if cache.converted_weights:
        lines.append(f"  converted weights: {cache.converted_weights} ({_mb(cache.converted_bytes)})")
    else:
        lines.append("  converted weights: none yet (the first training run converts them)")
    if cache.tokenizer:
        lines.append(f"  tokenizer cache: {cache.tokenizer}")
    return lines


def _in_use() -> str | None:
    """The bundled model these settings serve: by name, or by a --model path that is its file."""
    chosen = settings()
    if chosen.model is None:
        return chosen.model_name or DEFAULT_MODEL_NAME
    served = chosen.model.resolve()
    return next((m.name for m in BUNDLED_MODELS.values()
                 if (found := m.files().model_file) is not None and found.resolve() == served), None)


def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """List the bundled models: size, architecture, prompt format, installed or not, what is cached."""
    with user_errors():
        listings = [model_listing(m, _in_use()) for m in BUNDLED_MODELS.values()]
    if as_json:
        typer.echo(json_visible(json.dumps([asdict(item) for item in listings], ensure_ascii=False, indent=2)))
        return
    for i, item in enumerate(listings):
        if i:
            typer.echo("")
        for line in listing_lines(item):
            typer.echo(visible(line, keep=""))  # paths are user text
    typer.echo("")
    typer.echo("Choose one with --model NAME (or model = \"NAME\" in the config file); any GGUF path works too.")
