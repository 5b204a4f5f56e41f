"""Native-library settings for a training process, applied before torch loads; values the user set win.

oneDNN (torch's CPU kernels) keeps a compiled kernel for every matrix shape it meets, and every DPO batch has a
new length. Uncapped (its default holds 1,024 kernels), that cache grew a run's memory by about 45 MB a step on the
default model. The cap must still hold one step's own shapes: a step meets a few dozen (each projection's forward
and backward, the LoRA products, the LM head's tiles) and reuses each in all 18 layers, so with a cap of 16 they
evicted each other and every layer compiled its kernels again. Measured with bench/train_speed.py (default model,
50 pairs, batch 2, idle): cap 16 1.039 s per example, step median 1.97 s; cap 32 0.794 s, 1.50 s; cap 64 0.776 s,
1.47 s; cap 128 0.791 s; uncapped 0.787 s. Peak RSS 2,164–2,318 MB for caps 32–128, 2,527 MB uncapped.
"""

from __future__ import annotations

import os

NATIVE_ENV = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}


def apply_native_env() -> None:
    for key, value in NATIVE_ENV.items():
        os.environ.setdefault(key, value)


apply_native_env()
