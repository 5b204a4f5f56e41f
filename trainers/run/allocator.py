"""Keep freed memory in the training process instead of handing it back to the OS after every step.

A training step allocates and frees the same large buffers each time (activations, bf16 copies of the
weights under autocast, LM-head chunks). By default glibc returns big freed blocks to the OS (``munmap``
above ``M_MMAP_THRESHOLD``, heap trimming above ``M_TRIM_THRESHOLD``), so the next step page-faults all
of it in again. Measured on a 2-core VM (Gemma 3 270M, batch 2): bf16 steps of ~2 s had stalls of
20-30 s and fp32 steps stalls of 10-20 s, with 10x the system time; with freed memory kept, bf16 ran
1.8-2.5 s and fp32 3.1-3.9 s per step, no stalls. The process's peak memory is what it was; only the
return of memory between steps is skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit; larger values are refused


def keep_freed_memory() -> bool:
    """Tune glibc malloc for a long-running training loop; return whether it applied (glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl): nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    ok &= mallopt(M_TOP_PAD, 512 << 20)
    ok &= mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    return bool(ok)
