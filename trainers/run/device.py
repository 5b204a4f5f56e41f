"""The device and dtype a run trains on, checked against what this machine has; the process's peak memory."""

from __future__ import annotations

import resource

from trainers.run_config import RunConfig, RunConfigError


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def training_threads(config: RunConfig) -> int:
    """CPU threads for this process: ``--threads``, else the machine's cores shared out among the run's
    processes on this machine (two ranks each taking every core would fight over them)."""
    import os

    from trainers.run.ranks import local_world_size

    return config.threads or max(1, (os.cpu_count() or 1) // local_world_size())


def resolve_device(config: RunConfig) -> str:
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise RunConfigError("--device cuda was asked for, but no CUDA GPU is visible to PyTorch")
    device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if config.four_bit:
        if device != "cuda":
            raise RunConfigError("--four-bit needs a CUDA GPU; no GPU is in use (drop --four-bit)")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise RunConfigError(
                "--four-bit needs bitsandbytes, which is not installed: pip install 'preference-studio[cuda]'"
            ) from exc
    if config.paged_adamw_8bit and device != "cuda":
        raise RunConfigError("--paged-adamw-8bit needs a CUDA GPU")
    return device


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls in hardware (elsewhere bf16 is emulated and slower than fp32)."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_dtype(config: RunConfig, device: str) -> str:
    """fp32 or bf16. CUDA: bf16 when supported. CPU: bf16 autocast where the CPU has native bf16.

    Measured on a 2-core AVX512-BF16 VM (Gemma 3 270M, batch 2, length <= 256, freed memory kept, see
    ``trainers.run.allocator``): bf16 autocast 1.8-2.5 s per step, fp32 3.1-3.9 s.
    """
    import torch

    if config.dtype != "auto":
        if config.dtype == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
            raise RunConfigError("--dtype bf16: this GPU does not support bfloat16; use --dtype fp32")
        return config.dtype
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"
