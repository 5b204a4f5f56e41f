"""Which process of a multi-process run this is, and the one agreement the ranks need: when to stop.

Under ``accelerate launch`` (DDP/FSDP over NCCL, or gloo on CPUs) every process trains the same prepared run.
The rules every method gets from the shared run code, never from its own module:

- rank 0 alone records: the store is read-only elsewhere (``trainers.run.process``), the metrics recorder
  logs on the world's process zero (``trainers.run.callbacks.MetricsRecorder``), and only rank 0 writes
  the run's output folder (``trainers.run.outputs.publish_output``);
- a cancel reaches rank 0 alone (its pid is the run's pid in the store), and every step boundary
  ``any_rank_asks`` whether some rank was asked to stop, so all ranks stop after the same step
  (``trainers.run.callbacks.CancelAtStepBoundary``); one rank stopping alone would leave the others waiting
  in their next gradient all-reduce for ever.

The environment variables are torchrun's (``accelerate launch`` sets them), read without importing torch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


def process_rank() -> int:
    """This process's global rank (0 outside a launcher)."""
    return _env_int("RANK", 0)


def world_size() -> int:
    """How many processes train the run together (1 outside a launcher)."""
    return _env_int("WORLD_SIZE", 1)


def local_world_size() -> int:
    """How many of them share this machine (they share its CPU cores)."""
    return _env_int("LOCAL_WORLD_SIZE", world_size())


def is_worker_process() -> bool:
    """True in every process of a multi-process run but rank 0: it trains and records nothing."""
    return process_rank() != 0


def under_launcher() -> bool:
    """True inside a process started by ``accelerate launch``/torchrun (its ranks are already set up)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def any_rank_asks(asked: bool, device: torch.device | str | None = None) -> bool:
    """Whether this or any other rank ``asked`` (a max all-reduce of one flag; just ``asked`` in one process).

    Every rank must call it at the same point (a collective): the Trainer's step end is one. ``device`` is
    where the backend reduces (a CUDA device for NCCL; gloo reduces on the CPU).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return asked
    import torch

    if device is None or dist.get_backend() == "gloo":
        device = "cpu"
    flag = torch.tensor([1 if asked else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
