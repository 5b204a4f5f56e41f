"""Keep the Hugging Face stack offline. Imported by ``trainers/__init__`` so it runs before any
transformers/TRL/datasets import made through this package; values the user set win.

Without these, transformers and TRL try to reach a hub (telemetry at trainer start, registries) even
for a model loaded from a local directory. With them set: no connection attempts at all.
"""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


apply_offline_env()
