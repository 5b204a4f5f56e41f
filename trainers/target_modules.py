"""Check ``--target-modules`` against the model's own module names before a run starts, without loading it.

PEFT raises only once the model is loaded (tens of seconds in), deep inside the trainer process. The names
are on disk already: a Hugging Face directory's safetensors headers (or its ``*.index.json``) list every
weight, and a GGUF's tensor table lists its tensors, which ``gguf``'s name map turns back into the
transformers module names the converted model will have. A model whose names cannot be read (a
``pytorch_model.bin``) is not checked here; PEFT still checks it at load.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from trainers.run_config import RunConfigError

_MAX_HEADER = 100 << 20
# GGUF value types (ggml's gguf.h): fixed sizes by type id; 8 is a string, 9 an array.
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _safetensors_names(path: Path) -> set[str]:
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return set()
        (size,) = struct.unpack("<Q", head)
        if size > _MAX_HEADER:
            return set()
        header = json.loads(handle.read(size))
    return {name for name in header if name != "__metadata__"}


def _hf_weight_names(folder: Path) -> set[str]:
    names: set[str] = set()
    for index in folder.glob("*.safetensors.index.json"):
        names |= set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}))
    if not names:
        for shard in folder.glob("*.safetensors"):
            names |= _safetensors_names(shard)
    return names


class _GGUFCursor:
    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        data = self.handle.read(size)
        if len(data) != size:
            raise ValueError("the GGUF file ends early")
        return struct.unpack(fmt, data)

    def string(self) -> str:
        (length,) = self.unpack("<Q")
        return self.handle.read(length).decode("utf-8", errors="replace")

    def skip_value(self, vtype: int) -> None:
        if vtype == 8:
            (length,) = self.unpack("<Q")
            self.handle.seek(length, 1)
        elif vtype == 9:
            item_type, count = self.unpack("<IQ")
            if item_type in _GGUF_SIZES:
                self.handle.seek(_GGUF_SIZES[item_type] * count, 1)
            else:
                for _ in range(count):
                    self.skip_value(item_type)
        elif vtype in _GGUF_SIZES:
            self.handle.seek(_GGUF_SIZES[vtype], 1)
        else:
            raise ValueError(f"unknown GGUF value type {vtype}")


def _gguf_tensors(path: Path) -> tuple[str, int, set[str]]:
    """The architecture, block count and tensor names of a GGUF (header only, no tensor data)."""
    with path.open("rb") as handle:
        cur = _GGUFCursor(handle)
        magic, _version, n_tensors, n_kv = cur.unpack("<4sIQQ")
        if magic != b"GGUF":
            raise ValueError("not a GGUF file")
        arch, blocks, wanted = "", 0, {}
        for _ in range(n_kv):
            key = cur.string()
            (vtype,) = cur.unpack("<I")
            if key == "general.architecture" and vtype == 8:
                arch = cur.string()
            elif key.endswith(".block_count") and vtype in (4, 5, 10, 11):
                wanted[key] = cur.unpack({4: "<I", 5: "<i", 10: "<Q", 11: "<q"}[vtype])[0]
            else:
                cur.skip_value(vtype)
        blocks = int(wanted.get(f"{arch}.block_count", 0))
        names = set()
        for _ in range(n_tensors):
            names.add(cur.string())
            (n_dims,) = cur.unpack("<I")
            handle.seek(8 * n_dims + 4 + 8, 1)
    return arch, blocks, names


def _gguf_module_names(path: Path) -> set[str]:
    import gguf

    arch_name, blocks, tensors = _gguf_tensors(path)
    arch = next((a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch_name), None)
    if arch is None or not blocks:
        return set()
    mapping = gguf.get_tensor_name_map(arch, blocks).mapping
    # Every transformers name the converter maps onto a tensor this file has (aliases of other model
    # families included: a superset, which is enough to catch a misspelt or foreign module name).
    return {hf for hf, (_kind, gguf_name) in mapping.items() if f"{gguf_name}.weight" in tensors}


def model_module_names(model: Path) -> set[str]:
    """Module names of ``model`` (an HF directory or a .gguf), empty when they cannot be read cheaply."""
    model = Path(model)
    try:
        if model.is_dir():
            weights = _hf_weight_names(model)
            return {name.rsplit(".", 1)[0] for name in weights if name.endswith((".weight", ".bias"))}
        if model.suffix.lower() == ".gguf":
            return _gguf_module_names(model)
    except (OSError, ValueError, UnicodeDecodeError, struct.error):
        return set()  # an unreadable model is reported by the model checks with a better message
    return set()


def _matches(target: str, names: Iterable[str]) -> bool:
    # PEFT's rule for a plain string: the module's full name equals it or ends with "." + it.
    return any(name == target or name.endswith("." + target) for name in names)


def check_target_modules(model: Path, targets: list[str]) -> None:
    """Raise RunConfigError naming each ``--target-modules`` entry that matches no module of ``model``."""
    if targets == ["all-linear"]:
        return
    names = model_module_names(model)
    if not names:
        return
    unknown = [t for t in targets if not _matches(t, names)]
    if unknown:
        leaves = sorted({name.rsplit(".", 1)[-1] for name in names if "proj" in name.rsplit(".", 1)[-1]})
        hint = f"; its projection modules include {', '.join(leaves[:12])}" if leaves else ""
        raise RunConfigError(
            f"--target-modules {', '.join(unknown)} matches no module of {model.name}{hint} "
            "(or use all-linear)"
        )
