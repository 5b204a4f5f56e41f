"""Export a PEFT LoRA adapter as a GGUF LoRA adapter that llama.cpp loads on top of the quantised base.

The layout is the one llama.cpp's own ``convert_lora_to_gguf.py`` writes (a writer built this way matched it
byte for byte): metadata ``general.architecture`` (the base's), ``general.type = "adapter"``,
``adapter.type = "lora"``, ``adapter.lora.alpha``; for each adapted base tensor ``X``, ``X.lora_a`` = PEFT
``lora_A.weight`` (r × in) and ``X.lora_b`` = PEFT ``lora_B.weight`` (out × r), stored as they are. GGUF
reverses numpy's dimension order, so these arrive in llama.cpp as the (in, r) and (r, out) it expects.

llama.cpp applies ``scale × alpha / r`` with one alpha for the whole file. PEFT scales each module by
``alpha / r`` too, unless the config says otherwise (``use_rslora``: ``alpha / sqrt(r)``; ``alpha_pattern``:
per-module alphas); then the difference is folded into that module's ``lora_b`` so the file stays exact.

A ``llama`` GGUF's q and k projections are stored with their rows permuted: llama.cpp's converter reorders
each head's rows for its rotary embedding (which rotates neighbouring pairs; transformers rotates the two
halves), and transformers undoes that when it reads a llama GGUF (its ``LlamaTensorProcessor``). So an adapter
trained on those weights has its q/k ``lora_b`` rows (the output dimension) permuted the same way here, which
needs the base's attention head counts (``AttentionHeads``). ``lora_a`` (the input side) is untouched.

The adapter is read with a small safetensors parser (never ``torch.load``: no pickle, no torch import) that
also understands bf16. This module is headless: it never imports ``studio``.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}
_MAX_HEADER = 100 << 20


# Architectures whose GGUF q/k rows llama.cpp's converter permutes and transformers un-permutes on reading
# (transformers' TENSOR_PROCESSORS: "llama", which Mistral-family GGUFs use too).
ROPE_PERMUTED_ARCHITECTURES = frozenset({"llama"})
_PERMUTED_TENSORS = {"attn_q": "n_head", "attn_k": "n_head_kv"}


class AdapterExportError(ValueError):
    """The adapter cannot be exported. The message names the file and what is wrong."""


@dataclass(frozen=True)
class AttentionHeads:
    """The base GGUF's attention head counts (``<arch>.attention.head_count`` / ``head_count_kv``)."""

    n_head: int
    n_head_kv: int

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object], architecture: str) -> AttentionHeads | None:
        """Read them from a GGUF's metadata; None when the file does not say (or says it per layer)."""
        n_head = metadata.get(f"{architecture}.attention.head_count")
        n_head_kv = metadata.get(f"{architecture}.attention.head_count_kv", n_head)
        counts = [n for n in (n_head, n_head_kv) if isinstance(n, int) and not isinstance(n, bool) and n > 0]
        return cls(*counts) if len(counts) == 2 else None


def permute_for_rope(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` on the first (output) axis: in each of ``n_head`` heads, the rows of
    the first half and of the second half are interleaved (0, h, 1, h+1, … for a head of 2h rows)."""
    if rows.shape[0] % (2 * n_head):
        raise AdapterExportError(f"{rows.shape[0]} rows do not split into {n_head} heads of an even size")
    return (rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


@dataclass(frozen=True)
class _LoraPair:
    module: str  # PEFT module name, prefix stripped: model.layers.0.self_attn.q_proj
    lora_a: np.ndarray  # r × in
    lora_b: np.ndarray  # out × r


@dataclass(frozen=True)
class LoraModule:
    """One adapted module of a PEFT LoRA adapter: its delta is ``scale × lora_b @ lora_a``."""

    module: str  # PEFT module name, prefix stripped: model.layers.0.self_attn.q_proj
    lora_a: np.ndarray  # r × in
    lora_b: np.ndarray  # out × r
    scale: float  # PEFT's scale of this module: alpha / r, or alpha / sqrt(r) (rslora), per-module patterns applied


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read every tensor of a safetensors file as a float32 numpy array (bf16 widened exactly)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AdapterExportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(raw) < 8:
        raise AdapterExportError(f"{path} is not a safetensors file (only {len(raw)} bytes)")
    (header_len,) = struct.unpack("<Q", raw[:8])
    if header_len > min(_MAX_HEADER, len(raw) - 8):
        raise AdapterExportError(f"{path} is not a safetensors file or is truncated (header of {header_len:,} bytes)")
    try:
        header = json.loads(raw[8 : 8 + header_len])
    except ValueError as exc:
        raise AdapterExportError(f"{path} has a damaged safetensors header: {exc}") from exc
    data = memoryview(raw)[8 + header_len :]
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise AdapterExportError(f"{path}: tensor {name} has dtype {entry.get('dtype')}, expected F32, F16 or BF16")
        start, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if not 0 <= start <= end <= len(data) or end - start != math.prod(shape) * np.dtype(dtype).itemsize:
            raise AdapterExportError(f"{path} is truncated or damaged: tensor {name} lies outside the file")
        array = np.frombuffer(data[start:end], dtype=dtype).reshape(shape)
        if entry["dtype"] == "BF16":
            # bf16 is the top half of a float32: widening by a 16-bit shift is exact.
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = array.astype(np.float32)
    return tensors


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """PEFT's rule for ``rank_pattern``/``alpha_pattern``: the first key matching the module's name tail."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return float(value)
    return default


def _read_config(adapter_dir: Path) -> dict:
    path = adapter_dir / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise AdapterExportError(f"{path} is missing: {adapter_dir} is not a PEFT adapter directory") from exc
    except (OSError, ValueError) as exc:
        raise AdapterExportError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise AdapterExportError(f"{path} does not hold a JSON object")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterExportError(f"{path}: peft_type is {config.get('peft_type')!r}; only LoRA adapters export")
    for key, why in (
        ("use_dora", "DoRA adapters have a magnitude vector llama.cpp does not apply"),
        ("lora_bias", "LoRA biases have no place in a GGUF LoRA adapter"),
        ("layer_replication", "layer replication changes the base model's layers"),
    ):
        if config.get(key):
            raise AdapterExportError(f"{path}: {key} is set; {why}")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise AdapterExportError(f"{path}: r is {r!r}, not a positive whole number")
    # llama.cpp reads alpha = 0 as "no alpha" and would apply the adapter at full strength.
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
        raise AdapterExportError(f"{path}: lora_alpha is {alpha!r}, not a positive number")
    return config


def _collect_pairs(weights_path: Path, tensors: dict[str, np.ndarray]) -> list[_LoraPair]:
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, array in tensors.items():
        name = key.removeprefix(PEFT_PREFIX)
        if ".lora_embedding_A" in name or ".lora_embedding_B" in name:
            raise AdapterExportError(
                f"{weights_path}: {key} is a LoRA on the token embeddings, which this exporter refuses: llama.cpp "
                "needs it transposed and, where the output head is tied to the embeddings (Gemma), it would not "
                "reproduce what PEFT computes. Train without embed_tokens in target_modules"
            )
        match = re.fullmatch(r"(.+)\.lora_([AB])\.weight", name)
        if not match:
            raise AdapterExportError(
                f"{weights_path}: {key} is not a LoRA A/B weight (full weights from modules_to_save, biases or "
                "DoRA vectors cannot go into a GGUF LoRA adapter)"
            )
        if array.ndim != 2:
            raise AdapterExportError(f"{weights_path}: {key} has shape {array.shape}; LoRA weights are matrices")
        halves.setdefault(match.group(1), {})[match.group(2)] = array
    pairs = []
    for module, half in sorted(halves.items()):
        if set(half) != {"A", "B"}:
            missing = "lora_B" if "A" in half else "lora_A"
            raise AdapterExportError(f"{weights_path}: {module} has no {missing}.weight")
        a, b = half["A"], half["B"]
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise AdapterExportError(f"{weights_path}: {module} holds NaN or infinite values (the training diverged)")
        if a.shape[0] != b.shape[1]:
            raise AdapterExportError(
                f"{weights_path}: rank mismatch in {module}: lora_A is {a.shape[0]}×{a.shape[1]} but lora_B is "
                f"{b.shape[0]}×{b.shape[1]}"
            )
        pairs.append(_LoraPair(module, a, b))
    if not pairs:
        raise AdapterExportError(f"{weights_path} holds no LoRA weights")
    return pairs


def read_lora_modules(adapter_dir: Path, config: dict | None = None) -> list[LoraModule]:
    """Every adapted module of the PEFT LoRA adapter in ``adapter_dir`` with PEFT's own scale for it, checked
    (ranks as the config says, finite values). ``config`` is its ``adapter_config.json`` when already read."""
    adapter_dir = Path(adapter_dir)
    config = config if config is not None else _read_config(adapter_dir)
    weights_path = adapter_dir / ADAPTER_WEIGHTS
    if not weights_path.exists():
        raise AdapterExportError(f"{weights_path} is missing: the run saved no adapter weights")
    alpha = float(config["lora_alpha"])
    modules = []
    for pair in _collect_pairs(weights_path, read_safetensors(weights_path)):
        rank = pair.lora_a.shape[0]
        expected = int(_pattern_value(config.get("rank_pattern") or {}, pair.module, int(config["r"])))
        if rank != expected:
            raise AdapterExportError(
                f"{weights_path}: rank mismatch in {pair.module}: its weights have rank {rank}, the config "
                f"says r = {expected}"
            )
        module_alpha = _pattern_value(config.get("alpha_pattern") or {}, pair.module, alpha)
        scale = module_alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        modules.append(LoraModule(pair.module, pair.lora_a, pair.lora_b, scale))
    return modules


def read_adapter_config(adapter_dir: Path) -> dict:
    """The checked ``adapter_config.json`` of a PEFT LoRA adapter directory (AdapterExportError naming the file)."""
    return _read_config(Path(adapter_dir))


def _arch_enum(base_architecture: str):  # noqa: ANN202 - gguf.MODEL_ARCH
    import gguf

    for arch, name in gguf.MODEL_ARCH_NAMES.items():
        if name == base_architecture:
            return arch
    raise AdapterExportError(f"unknown base architecture {base_architecture!r}: the gguf package does not know it")


def export_gguf_adapter(
    adapter_dir: Path,
    out_path: Path,
    base_architecture: str,
    n_layers: int,
    dtype: str = "f32",
    *,
    heads: AttentionHeads | None = None,
) -> Path:
    """Write the PEFT adapter in ``adapter_dir`` as a GGUF LoRA adapter at ``out_path``; return ``out_path``.

    ``base_architecture`` and ``n_layers`` are the base GGUF's ``general.architecture`` and block count;
    ``heads`` its attention head counts, needed when the base is a ``llama`` GGUF and q or k is adapted
    (``AttentionHeads.from_metadata`` reads them).
    ``dtype`` is "f32" or "f16" (llama.cpp rejects quantised lora_b at small ranks). The file is written to a
    temporary name beside ``out_path`` and renamed, so a failure never leaves a half file.
    Raises AdapterExportError naming the file and the problem.
    """
    import gguf

    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    if dtype not in ("f32", "f16"):
        raise AdapterExportError(f"dtype must be 'f32' or 'f16', not {dtype!r}")
    if not adapter_dir.is_dir():
        raise AdapterExportError(f"adapter directory not found: {adapter_dir}")
    config = _read_config(adapter_dir)
    weights_path = adapter_dir / ADAPTER_WEIGHTS
    if not weights_path.exists():
        raise AdapterExportError(f"{weights_path} is missing: the run saved no adapter weights")
    arch = _arch_enum(base_architecture)
    alpha = float(config["lora_alpha"])
    name_map = gguf.get_tensor_name_map(arch, n_layers)
    np_dtype = np.float16 if dtype == "f16" else np.float32
    named: list[tuple[str, np.ndarray, np.ndarray]] = []
    for pair in read_lora_modules(adapter_dir, config):
        gguf_name = name_map.get_name(pair.module + ".weight", try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise AdapterExportError(
                f"{weights_path}: {pair.module} has no tensor name in a {base_architecture} GGUF with {n_layers} "
                "layers (another architecture's adapter, or a module llama.cpp does not adapt)"
            )
        rank = pair.lora_a.shape[0]
        fold = pair.scale / (alpha / rank)
        lora_b = pair.lora_b if fold == 1.0 else pair.lora_b * np.float32(fold)
        tensor_kind = gguf_name.removesuffix(".weight").rsplit(".", 1)[-1]
        if base_architecture in ROPE_PERMUTED_ARCHITECTURES and tensor_kind in _PERMUTED_TENSORS:
            if heads is None:
                raise AdapterExportError(
                    f"{weights_path}: {pair.module} adapts a {base_architecture} {tensor_kind} tensor, whose rows "
                    "the GGUF stores permuted; the base's attention head counts are needed to export it"
                )
            n_head = getattr(heads, _PERMUTED_TENSORS[tensor_kind])
            if lora_b.shape[0] % (2 * n_head):
                raise AdapterExportError(
                    f"{weights_path}: {pair.module} has {lora_b.shape[0]} output rows, which do not split into "
                    f"{n_head} heads (another model's adapter?)"
                )
            lora_b = permute_for_rope(lora_b, n_head)
        if dtype == "f16" and max(np.abs(pair.lora_a).max(), np.abs(lora_b).max()) > np.finfo(np.float16).max:
            raise AdapterExportError(f"{weights_path}: {pair.module} has values beyond float16's range; export as f32")
        named.append((gguf_name, pair.lora_a, lora_b))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}-", suffix=".partial", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, base_architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for gguf_name, lora_a, lora_b in named:
            writer.add_tensor(f"{gguf_name}.lora_a", np.ascontiguousarray(lora_a, dtype=np_dtype))
            writer.add_tensor(f"{gguf_name}.lora_b", np.ascontiguousarray(lora_b, dtype=np_dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AdapterExportError(f"cannot write {out_path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path
