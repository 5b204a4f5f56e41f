"""The frozen weights of a CPU bf16-autocast run stored as autocast uses them, and their fp32 pages let go.

A LoRA run on CPU loads the model in fp32 (a memory map of the converted safetensors) and trains under bf16
autocast. Autocast casts every frozen linear weight to bf16 at every forward (the cast is cached only for weights
that require grad), and the backward keeps those copies; the fused LM head (``trainers.cpu_logprob_head``) casts
the tied 262k-row embedding to bf16 tile by tile in every pass (policy, reference, the backward's recompute). The
values it computes with are the bf16 roundings of the fp32 weights, every time. So, once the LoRA is attached
(before, PEFT would give the adapter the base layer's dtype and round its initial values):

- each frozen ``nn.Linear`` (the LoRA layers' base layers and the rest) holds its weight in bf16: what autocast
  would have cast it to, so the forward and the gradients are the same to the bit; the LoRA weights stay fp32;
- the output head gets its own bf16 copy of the (tied) embedding, which is what the LM head computed with;
- the input embedding stays the fp32 memory map, so its lookup is unchanged and only the rows of tokens the run
  sees are ever read from it;
- the fp32 pages already read (the layers, the embedding while it was copied) are handed back to the kernel
  (``MADV_PAGEOUT``: clean file pages are dropped and read again from the file if ever touched).

Outside autocast (a held-out pass run on the bare model) a bf16 layer casts its input to bf16 and its output back,
so such a pass still runs. fp32 runs and CUDA runs (already bf16 at load, or 4-bit) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages (clean file pages are dropped, nothing is lost)
COPY_ROWS = 8192  # rows of the embedding copied at a time: a bounded fp32 window, whatever the vocabulary


@dataclass(frozen=True)
class FrozenWeightsReport:
    """What was converted: linear layers and the output head now in bf16, and the MB that holds."""

    linear_layers: int
    head_rows: int  # 0: the head was left as it was (no output embedding, or not the embedding's shape)
    bf16_mb: float
    released_mb: float

    def describe(self) -> str:
        head = f", the LM head ({self.head_rows:,} rows)" if self.head_rows else ""
        return (f"frozen weights in bf16: {self.linear_layers} linear layers{head}, {self.bf16_mb:.0f} MB; "
                f"{self.released_mb:.0f} MB of fp32 pages released")


def store_frozen_weights_for_autocast(model: nn.Module, device: str, dtype: str) -> FrozenWeightsReport | None:
    """Convert ``model``'s frozen weights as above for a CPU bf16 run (call it after the LoRA is attached);
    None when the run is not one (another device or dtype: nothing changes)."""
    import torch

    if device != "cpu" or dtype != "bf16":
        return None
    from trainers.model_source import base_model_of

    base = base_model_of(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    # Each fp32 tensor's pages are released as soon as it is copied, so they never add up to the whole file.
    linear_layers, bf16_bytes, released_bytes = 0, 0, 0
    for module in _frozen_linears(base, exclude=head):
        old = module.weight.detach()
        module.weight = _parameter(old.to(torch.bfloat16))
        module.register_forward_pre_hook(_cast_input_outside_autocast)
        module.register_forward_hook(_cast_output_outside_autocast)
        released_bytes += release_file_pages(old)
        linear_layers += 1
        bf16_bytes += module.weight.numel() * 2
    head_rows = 0
    if isinstance(head, torch.nn.Linear) and head.bias is None and not head.weight.requires_grad:
        old = head.weight.detach()
        copy = torch.empty(old.shape, dtype=torch.bfloat16)
        for start in range(0, old.shape[0], COPY_ROWS):  # no fp32 temporary of the whole head
            copy[start:start + COPY_ROWS] = old[start:start + COPY_ROWS]
            released_bytes += release_file_pages(old[start:start + COPY_ROWS])
        new_head = torch.nn.Linear(old.shape[1], old.shape[0], bias=False, device="meta")
        new_head.weight = _parameter(copy)
        new_head.register_forward_pre_hook(_cast_input_outside_autocast)
        new_head.register_forward_hook(_cast_output_outside_autocast)
        base.set_output_embeddings(new_head)  # unties it: the input embedding keeps the fp32 map
        head_rows = old.shape[0]
        bf16_bytes += copy.numel() * 2
    return FrozenWeightsReport(linear_layers, head_rows, bf16_bytes / 2**20, released_bytes / 2**20)


def _frozen_linears(model: nn.Module, exclude: nn.Module | None) -> list[nn.Linear]:
    """Every ``nn.Linear`` whose weight is frozen fp32, outside PEFT's trainable copies (``modules_to_save``,
    e.g. a reward model's score head, whose original is used with the adapter off) and not the output head."""
    import torch

    skipped: set[int] = set()
    for module in model.modules():
        if type(module).__name__ == "ModulesToSaveWrapper" or module is exclude:
            skipped.update(id(m) for m in module.modules())
    return [m for m in model.modules()
            if isinstance(m, torch.nn.Linear) and id(m) not in skipped
            and not m.weight.requires_grad and m.weight.dtype == torch.float32]


def _parameter(data: torch.Tensor) -> torch.nn.Parameter:
    import torch

    return torch.nn.Parameter(data, requires_grad=False)


def _cast_input_outside_autocast(module: nn.Linear, args: tuple) -> tuple | None:
    import torch

    if torch.is_autocast_enabled("cpu") or not args or args[0].dtype == module.weight.dtype:
        return None
    return (args[0].to(module.weight.dtype), *args[1:])


def _cast_output_outside_autocast(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    import torch

    if torch.is_autocast_enabled("cpu") or output.dtype != module.weight.dtype:
        return None
    return output.float()


def release_file_pages(tensor: torch.Tensor) -> int:
    """Ask the kernel to reclaim the pages wholly inside ``tensor`` when they belong to a memory-mapped file;
    return the bytes asked for. A file page is read again from the file if touched later, so this is safe for a
    tensor still in use; anonymous memory is never asked for (without swap it could not go anywhere)."""
    start, length = tensor.data_ptr(), tensor.numel() * tensor.element_size()
    page = os.sysconf("SC_PAGE_SIZE")
    first, last = -(-start // page) * page, (start + length) // page * page
    if last <= first or not _in_file_mapping(first, last):
        return 0
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return last - first if libc.madvise(first, last - first, MADV_PAGEOUT) == 0 else 0


def _in_file_mapping(first: int, last: int) -> bool:
    """Whether [first, last) lies inside one mapping of a regular file (``/proc/self/maps``, Linux only)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if low <= first and last <= high:
                    return len(fields) == 6 and fields[5].startswith("/") and fields[4] != "0"
    except OSError:
        return False
    return False
