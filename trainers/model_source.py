"""Where the weights a run trains come from: a GGUF (converted once) or a Hugging Face model directory.

Loading a GGUF with transformers parses its metadata twice (model and tokenizer) and takes ~25-55 s on
a small CPU. So a GGUF is converted once into a plain safetensors model + tokenizer directory in the
model cache, keyed by the GGUF's sha256 (``hf-<sha256[:16]>``), and every later run loads that (~1-3 s).
The conversion is written into a temporary directory and renamed into place when complete, so a
directory under the real name is always whole. The weights are the served GGUF's own, dequantized to
fp32 (``GgufConfig(dequantize=True)``; without it the Trainer refuses to train the model), which is
what makes an adapter trained on them exact for the model the chat engine serves.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trainers  # noqa: F401  (HF offline env before any transformers import)
from trainers.tokenizer_fingerprint import fingerprint_by_identity

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

GGUF_MAGIC = b"GGUF"
CONVERSION_MARKER = "prefstudio-conversion.json"
TOKENIZER_MARKER = "prefstudio-tokenizer.json"


class ModelSourceError(Exception):
    """A model to train is missing, unreadable or not usable. The message names the path and the fix."""


@dataclass(frozen=True)
class ModelSource:
    """A model ready to load for training: an HF directory, and what it was made from."""

    model_dir: Path
    model_id: str
    kind: str  # "gguf" (converted) or "hf_dir"
    origin: Path
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "model_id": self.model_id,
            "kind": self.kind,
            "origin": str(self.origin),
            "sha256": self.sha256,
        }


_SHA256_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """sha256 of a file, remembered in this process by (path, size, mtime): a 250 MB model is hashed once."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_MEMO:
        digest = hashlib.sha256()
        with path.open("rb") as src:
            while block := src.read(8 << 20):
                digest.update(block)
        _SHA256_MEMO[key] = digest.hexdigest()
    return _SHA256_MEMO[key]


def converted_dir(sha256: str, cache_root: Path | None = None) -> Path:
    """The directory a GGUF with this sha256 is (or will be) converted into."""
    if cache_root is None:
        from store.locations import models_cache_dir

        cache_root = models_cache_dir()
    return Path(cache_root) / f"hf-{sha256[:16]}"


def tokenizer_cache_dir(sha256: str, cache_root: Path | None = None) -> Path:
    """Where the tokenizer alone of a GGUF with this sha256 is kept (beside, not inside, the converted model)."""
    return converted_dir(sha256, cache_root).with_name(f"tok-{sha256[:16]}")


def _write_atomically(target: Path, fill: Callable[[Path], None]) -> None:
    """``fill`` a temporary directory beside ``target`` and rename it into place; a directory under the
    real name is always whole (if another process got there first, its copy is kept)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", suffix=".partial", dir=target.parent))
    try:
        fill(tmp)
        _fsync_dir_files(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary user folder
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _gguf_tokenizer(gguf_path: Path, sha256: str, cache_root: Path | None = None) -> PreTrainedTokenizerBase:
    """The GGUF's tokenizer, read from the GGUF once (13-19 s of metadata parsing) and then from its cache."""
    from transformers import AutoTokenizer

    cached = tokenizer_cache_dir(sha256, cache_root)
    if (cached / TOKENIZER_MARKER).exists():
        try:
            return AutoTokenizer.from_pretrained(str(cached))
        except (OSError, ValueError):
            shutil.rmtree(cached, ignore_errors=True)  # damaged by hand: read the GGUF again
    _check_gguf_file(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except (OSError, ValueError, KeyError, RuntimeError, IndexError) as exc:
        raise ModelSourceError(
            f"transformers cannot load the tokenizer of {gguf_path} ({type(exc).__name__}: {exc}); the file may be "
            "damaged, or its architecture unsupported — pass an HF model directory with --train-model"
        ) from exc

    def fill(tmp: Path) -> None:
        tokenizer.save_pretrained(tmp)
        (tmp / TOKENIZER_MARKER).write_text(json.dumps({"gguf": str(gguf_path), "sha256": sha256}, indent=2))

    try:
        _write_atomically(cached, fill)
    except OSError:
        pass  # a read-only or full cache only costs the next caller the same 13-19 s
    return tokenizer


_TOKENIZERS: dict[str, PreTrainedTokenizerBase] = {}
_TOKENIZERS_LOCK = threading.Lock()


def load_tokenizer_for(path: Path | str, sha256: str | None = None,
                       cache_root: Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer a run on ``path`` (a .gguf or an HF model directory) will train with, without the model.

    Enough to count a run's tokens before it starts. A GGUF's tokenizer comes from its converted model when
    there is one, else from its own tokenizer cache (keyed by sha256; built once); either way it is the
    tokenizer the trainer loads. Kept in memory for this process, so a form can ask again at no cost.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        _check_hf_dir(path)
        key = str(path.resolve())
    else:
        _check_gguf_file(path)
        sha256 = sha256 or sha256_of(path)
        key = f"gguf:{sha256}:{cache_root}"
    with _TOKENIZERS_LOCK:  # two workers asking at once parse the GGUF once
        if key not in _TOKENIZERS:
            if path.is_dir():
                _TOKENIZERS[key] = load_tokenizer(path)
            else:
                assert sha256 is not None
                converted = converted_dir(sha256, cache_root)
                if (converted / CONVERSION_MARKER).exists() and _conversion_complete(converted):
                    _TOKENIZERS[key] = load_tokenizer(converted)
                else:
                    _TOKENIZERS[key] = _with_pad(_gguf_tokenizer(path, sha256, cache_root))
        return _TOKENIZERS[key]


def gguf_file_problem(path: Path) -> str | None:
    """Why `path` cannot be a GGUF model file (missing, a folder, unreadable, wrong magic), or None.

    The chat engine (studio/inference/model_files.py) and the trainer check a model file the same way and say
    the same thing; each raises it as its own error.
    """
    if not path.exists():
        return f"model file not found: {path}"
    if path.is_dir():
        return f"{path} is a directory; pass the .gguf file inside it"
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        return f"cannot read model file {path}: {exc.strerror or exc}"
    if magic != GGUF_MAGIC:
        return (f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
                "convert it with llama.cpp's convert_hf_to_gguf.py or pick a .gguf file")
    return None


def _check_gguf_file(path: Path) -> None:
    problem = gguf_file_problem(path)
    if problem is not None:
        raise ModelSourceError(problem)


def _check_hf_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelSourceError(f"model directory not found: {path}")
    if not (path / "config.json").exists():
        raise ModelSourceError(
            f"{path} is not a Hugging Face model directory (no config.json); pass a directory written by "
            "save_pretrained, or a .gguf file"
        )
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    if not has_weights:
        raise ModelSourceError(f"{path} holds no model weights (*.safetensors); the directory is incomplete")
    has_tokenizer = (path / "tokenizer.json").exists() or (path / "tokenizer.model").exists()
    if not has_tokenizer:
        raise ModelSourceError(f"{path} holds no tokenizer (tokenizer.json); save the tokenizer beside the model")


def convert_gguf(
    gguf_path: Path,
    sha256: str,
    cache_root: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Convert a GGUF into a safetensors model + tokenizer directory, once; return the directory.

    Concurrent or interrupted conversions never leave a partial directory under the final name: each
    writes its own temporary directory and renames it; if another process won, its result is kept.
    """
    target = converted_dir(sha256, cache_root)
    if target.is_dir() and (target / CONVERSION_MARKER).exists():
        if _conversion_complete(target):
            return target
        shutil.rmtree(target, ignore_errors=True)  # files removed by hand: convert again
    _check_gguf_file(gguf_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", suffix=".partial", dir=target.parent))
    started = time.monotonic()
    say = log or (lambda _msg: None)
    try:
        from transformers import AutoModelForCausalLM, GgufConfig

        say(f"converting {gguf_path.name} for training (once; this takes about a minute)")
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = _gguf_tokenizer(gguf_path, sha256, cache_root)  # cached when a form counted tokens first
        try:
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                gguf_file=name,
                quantization_config=GgufConfig(dequantize=True),
                dtype="float32",
            )
        except (OSError, ValueError, KeyError, RuntimeError, IndexError) as exc:
            raise ModelSourceError(
                f"transformers cannot load {gguf_path} for training ({type(exc).__name__}: {exc}); the file may "
                "be damaged, or its architecture unsupported — pass an HF model directory with --train-model"
            ) from exc
        # The dequantized model still carries the GGUF quantization config; a plain dense checkpoint must not.
        for holder in (model, model.config):
            if hasattr(holder, "quantization_config"):
                try:
                    delattr(holder, "quantization_config")
                except AttributeError:
                    pass
        for attr in ("is_quantized", "hf_quantizer"):
            if getattr(model, attr, None):
                setattr(model, attr, None if attr == "hf_quantizer" else False)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERSION_MARKER).write_text(
            json.dumps(
                {"gguf": str(gguf_path), "sha256": sha256, "seconds": round(time.monotonic() - started, 1)},
                indent=2,
            )
        )
        _fsync_dir_files(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary user folder
        try:
            os.rename(tmp, target)
        except OSError:
            if target.is_dir() and (target / CONVERSION_MARKER).exists():
                shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
            else:
                raise
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelSourceError(
            f"cannot write the converted model to {target.parent}: {exc.strerror or exc} (it needs about "
            "4x the GGUF's size free)"
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"converted in {time.monotonic() - started:.0f} s into {target}")
    return target


def _conversion_complete(folder: Path) -> bool:
    has_weights = any(folder.glob("*.safetensors"))
    return has_weights and (folder / "config.json").exists() and (folder / "tokenizer.json").exists()


def _fsync_dir_files(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def resolve_model_source(
    path: Path | str,
    sha256: str | None = None,
    cache_root: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> ModelSource:
    """Turn what the user named (a .gguf file or an HF model directory) into a loadable model directory.

    ``sha256`` may be passed when the caller already knows the GGUF's hash (the studio remembers them).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        _check_hf_dir(path)
        return ModelSource(model_dir=path.resolve(), model_id=path.name, kind="hf_dir", origin=path.resolve())
    _check_gguf_file(path)
    digest = sha256 or sha256_of(path)
    model_dir = convert_gguf(path, digest, cache_root=cache_root, log=log)
    return ModelSource(model_dir=model_dir, model_id=path.name, kind="gguf", origin=path.resolve(), sha256=digest)


def load_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load the tokenizer in {model_dir}: {exc}") from exc
    return _with_pad(tokenizer)


def _with_pad(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Every tokenizer the trainers use comes through here: a pad token, and a cheap dataset fingerprint
    (trainers/tokenizer_fingerprint.py: TRL's dataset maps would otherwise hash the whole vocabulary)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    fingerprint_by_identity(tokenizer)
    return tokenizer


def load_model(model_dir: Path, *, device: str, four_bit: bool = False,
               bf16_weights: bool = False, merge_adapter: Path | None = None) -> PreTrainedModel:
    """Load the causal LM for LoRA training.

    CPU: fp32 weights (bf16 there is an autocast choice made by the trainer; once the LoRA is attached, a bf16
    run stores the frozen weights as autocast uses them: ``trainers.frozen_weights``).
    CUDA: bf16 weights, or 4-bit NF4 through bitsandbytes (QLoRA) when ``four_bit``.
    ``merge_adapter``: an earlier run's PEFT adapter folder, merged into the weights before the new LoRA is
    attached (a run started ``--init-from`` that run; ``trainers.chain``). Not with ``four_bit``: merged into
    4-bit weights the adapter would be rounded away (``RunConfig`` refuses the pair).
    """
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if bf16_weights else torch.float32}
    if four_bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["dtype"] = torch.bfloat16
        # One GPU per process (under `accelerate launch`, the process's own LOCAL_RANK).
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelSourceError(
            f"cannot load the model in {model_dir} ({type(exc).__name__}: {exc}); if it is a converted cache "
            "directory, delete it and it will be converted again"
        ) from exc
    if merge_adapter is not None:
        if four_bit:
            raise ModelSourceError("an earlier run's adapter cannot be merged into 4-bit weights; drop --four-bit")
        from trainers.adapter_sum import merge_adapter as merge_into

        model = merge_into(model, merge_adapter)
    if four_bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    elif device == "cuda":
        model = model.to("cuda")
    return model


def base_model_of(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (``get_base_model()``), or ``model`` itself when unwrapped."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model
