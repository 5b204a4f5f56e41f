"""Check a GGUF LoRA adapter against the base model *before* llama.cpp sees it.

llama.cpp segfaults at the first decode when handed an adapter for another architecture, and a failed load
only says so in its log. So every adapter is read here first, with the fast header reader: the metadata
llama.cpp relies on, and every ``X.lora_a``/``X.lora_b`` pair against the base tensor ``X`` (GGUF shapes are
innermost-first: a base weight is (in, out), ``lora_a`` (in, r), ``lora_b`` (r, out)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gguf.constants import GGMLQuantizationType

from studio.inference.gguf_header import GGUFFormatError, TensorEntry, read_gguf_header
from studio.inference.model_files import GGUFInfo

# Quantised LoRA tensors fail to load in llama.cpp at small ranks (Q8_0 lora_b with r < 32): keep to floats.
_FLOAT_TYPES = {GGMLQuantizationType.F32: "F32", GGMLQuantizationType.F16: "F16"}


class AdapterFileError(ValueError):
    """The adapter file is unusable with this base model. The message names the file and the problem."""


@dataclass(frozen=True)
class AdapterInfo:
    """A validated GGUF LoRA adapter."""

    path: Path
    size_bytes: int
    architecture: str
    alpha: float | None  # None: llama.cpp applies the user scale as is
    ranks: tuple[int, ...]  # distinct ranks, sorted (one for an adapter trained here)
    tensor_types: tuple[str, ...]  # "F32" / "F16"
    adapted: tuple[str, ...]  # base tensor names the adapter changes, sorted

    @property
    def rank(self) -> int:
        """The adapter's rank (the largest, should ranks differ between tensors)."""
        return max(self.ranks)


def _fail(path: Path, problem: str) -> AdapterFileError:
    return AdapterFileError(f"adapter {path.name} ({path}): {problem}")


def _check_pair(path: Path, base_name: str, a: TensorEntry, b: TensorEntry, base: TensorEntry) -> int:
    """Shapes of one pair against the base tensor; returns the rank."""
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise _fail(path, f"{base_name}.lora_a/.lora_b must be matrices, got {a.shape} and {b.shape}")
    if len(base.shape) != 2:
        raise _fail(path, f"base tensor {base_name} has shape {base.shape}; only matrices take a LoRA")
    (a_in, a_rank), (b_rank, b_out), (base_in, base_out) = a.shape, b.shape, base.shape
    if a_rank != b_rank:
        raise _fail(path, f"{base_name}: lora_a has rank {a_rank} but lora_b has rank {b_rank}")
    if a_in != base_in or b_out != base_out:
        raise _fail(
            path,
            f"{base_name} is {base_in} in × {base_out} out in the base model but the adapter's pair is "
            f"{a_in} in × {b_out} out — an adapter for another model size",
        )
    return a_rank


def validate_adapter(adapter_gguf: Path, base: GGUFInfo) -> AdapterInfo:
    """Check ``adapter_gguf`` is a GGUF LoRA adapter llama.cpp can apply to ``base``; return what it holds.

    Raises AdapterFileError (a ValueError) with the file name and what is wrong.
    """
    path = Path(adapter_gguf).expanduser()
    if not path.exists():
        raise _fail(path, "file not found")
    if path.is_dir():
        raise _fail(path, "is a directory; export the run's adapter to a .gguf file first")
    try:
        header = read_gguf_header(path)
    except GGUFFormatError as exc:
        raise _fail(path, f"not a readable GGUF ({exc})") from exc
    except OSError as exc:
        raise _fail(path, f"cannot read it ({exc.strerror or exc})") from exc
    meta = header.metadata
    if meta.get("general.type") != "adapter":
        raise _fail(path, f"general.type is {meta.get('general.type')!r}, not 'adapter': this is not an adapter")
    if meta.get("adapter.type") != "lora":
        raise _fail(path, f"adapter.type is {meta.get('adapter.type')!r}; only 'lora' adapters are supported")
    architecture = str(meta.get("general.architecture", ""))
    if architecture != base.architecture:
        raise _fail(
            path,
            f"made for architecture {architecture or '(none)'!r} but the base model {base.path.name} is "
            f"{base.architecture!r}",
        )
    alpha = meta.get("adapter.lora.alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha < 0):
        raise _fail(path, f"adapter.lora.alpha is {alpha!r}, not a non-negative number")

    size = path.stat().st_size
    halves: dict[str, dict[str, TensorEntry]] = {}
    types: set[str] = set()
    for tensor in header.tensors:
        if tensor.offset + tensor.n_bytes > size:
            raise _fail(path, f"truncated: tensor {tensor.name} ends at byte {tensor.offset + tensor.n_bytes:,} "
                              f"but the file has {size:,}")
        base_name, dot, half = tensor.name.rpartition(".")
        if not dot or half not in ("lora_a", "lora_b"):
            raise _fail(path, f"tensor {tensor.name} is not a .lora_a/.lora_b half")
        type_name = _FLOAT_TYPES.get(tensor.ggml_type)
        if type_name is None:
            raise _fail(path, f"tensor {tensor.name} has type {_type_name(tensor.ggml_type)}; LoRA tensors must be "
                              "F32 or F16")
        types.add(type_name)
        halves.setdefault(base_name, {})[half] = tensor
    if not halves:
        raise _fail(path, "holds no LoRA tensors")

    base_tensors = {t.name: t for t in base.tensors}
    ranks: set[int] = set()
    for base_name, pair in sorted(halves.items()):
        missing = {"lora_a", "lora_b"} - set(pair)
        if missing:
            raise _fail(path, f"{base_name} has no .{missing.pop()} tensor")
        if base_name not in base_tensors:
            if base_name == "output.weight" and "token_embd.weight" in base_tensors:
                raise _fail(path, f"adapts the output head, which {base.path.name} ties to its token embeddings; "
                                  "train without lm_head in the target modules")
            raise _fail(path, f"adapts {base_name}, which the base model {base.path.name} does not have "
                              "(an adapter for another model)")
        ranks.add(_check_pair(path, base_name, pair["lora_a"], pair["lora_b"], base_tensors[base_name]))
    return AdapterInfo(
        path=path,
        size_bytes=size,
        architecture=architecture,
        alpha=float(alpha) if alpha is not None else None,
        ranks=tuple(sorted(ranks)),
        tensor_types=tuple(sorted(types)),
        adapted=tuple(sorted(halves)),
    )


def _type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"#{ggml_type}"
