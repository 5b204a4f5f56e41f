"""A run that builds on a run, in weights: the earlier adapter merged into the base before training, and the
two adapters summed into one afterwards.

LoRA deltas add. A run trained on ``W + ΔW₁`` (the earlier adapter merged) learns ``ΔW₂ = s₂·B₂A₂`` on top,
so the model it ends with is ``W + s₁·B₁A₁ + s₂·B₂A₂``, and a sum of low-rank products is itself one LoRA of
rank ``r₁ + r₂``: ``A = [A₁; A₂]``, ``B = [s₁·B₁, s₂·B₂]`` with scale 1 (``lora_alpha = r``). So the run's
published adapter, applied to the *base*, is the whole chain's effect, and llama.cpp (one adapter per base)
serves it exactly. A module only one of the two adapts gets zero rows from the other, which keeps one rank for
the whole file (no ``rank_pattern``: every reader, PEFT, the GGUF exporter and llama.cpp, handles it as is).

The sum is written with numpy and safetensors (no torch, no pickle); the merge uses PEFT on the loaded model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trainers.gguf_adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PEFT_PREFIX,
    LoraModule,
    read_adapter_config,
    read_lora_modules,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Config keys of the summed adapter that no longer describe it (its scale is folded into lora_B).
_RESET_KEYS = {"rank_pattern": {}, "alpha_pattern": {}, "use_rslora": False, "layers_to_transform": None,
               "layers_pattern": None}


def merge_adapter(model: PreTrainedModel, adapter_dir: Path) -> PreTrainedModel:
    """``model`` with the PEFT LoRA adapter in ``adapter_dir`` merged into its weights (``W + s·B·A``), as a
    plain model again: a new LoRA trained on it starts from the adapted model, and a method's reference
    (DPO's and KTO's adapter-disabled policy) is the adapted model too."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    return peft_model.merge_and_unload()


def sum_adapters(earlier_dir: Path, later_dir: Path, out_dir: Path) -> Path:
    """Write into ``out_dir`` the one LoRA adapter equal to ``earlier_dir``'s delta plus ``later_dir``'s (the
    later one trained on the base with the earlier one merged); return ``out_dir``.

    ``adapter_config.json`` is the later adapter's, with ``r`` the summed rank, ``lora_alpha = r`` (scale 1),
    every adapted module named in ``target_modules``, and the per-module patterns dropped (folded into B).
    """
    earlier_dir, later_dir, out_dir = Path(earlier_dir), Path(later_dir), Path(out_dir)
    earlier = {m.module: m for m in read_lora_modules(earlier_dir)}
    later = {m.module: m for m in read_lora_modules(later_dir)}
    config = read_adapter_config(later_dir)
    rank_earlier = _one_rank(earlier_dir, earlier.values())
    rank_later = _one_rank(later_dir, later.values())
    rank = rank_earlier + rank_later
    tensors: dict[str, np.ndarray] = {}
    for name in sorted(set(earlier) | set(later)):
        first, second = earlier.get(name), later.get(name)
        shape_of = first or second
        assert shape_of is not None
        n_in, n_out = shape_of.lora_a.shape[1], shape_of.lora_b.shape[0]
        parts_a, parts_b = [], []
        for part, part_rank, where in ((first, rank_earlier, earlier_dir), (second, rank_later, later_dir)):
            if part is None:  # this adapter leaves the module alone: zero rows contribute nothing
                parts_a.append(np.zeros((part_rank, n_in), np.float32))
                parts_b.append(np.zeros((n_out, part_rank), np.float32))
                continue
            if part.lora_a.shape[1] != n_in or part.lora_b.shape[0] != n_out:
                raise ValueError(f"{where}: {name} is {part.lora_b.shape[0]}×{part.lora_a.shape[1]}, but the other "
                                 f"adapter's is {n_out}×{n_in}: the two adapters are for different models")
            parts_a.append(part.lora_a.astype(np.float32))
            parts_b.append((part.lora_b * np.float32(part.scale)).astype(np.float32))
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(np.concatenate(parts_a, axis=0))
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(np.concatenate(parts_b, axis=1))
    summed = {**config, **_RESET_KEYS, "r": rank, "lora_alpha": float(rank),
              "target_modules": sorted(set(earlier) | set(later))}
    _write_adapter(out_dir, summed, tensors)
    return out_dir


def _one_rank(adapter_dir: Path, modules: Iterable[LoraModule]) -> int:
    ranks = {m.lora_a.shape[0] for m in modules}
    if len(ranks) != 1:
        # Padding every module to the largest rank would keep the sum exact too; no adapter here has this yet.
        raise ValueError(f"{adapter_dir}: its modules have ranks {sorted(ranks)}; only an adapter of one rank "
                         "can be summed")
    return ranks.pop()


def _write_adapter(out_dir: Path, config: dict, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / ADAPTER_WEIGHTS
    tmp = weights.with_name(f".{weights.name}.partial")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, weights)
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
