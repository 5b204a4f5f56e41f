"""The training methods by name: ``METHODS`` maps a name to the module that defines its ``METHOD``.

Adding a method = its module under ``trainers/methods/`` + one line here. Nothing is imported from this
module (``RunConfig`` checks ``--method`` against these names without torch or TRL).
"""

from __future__ import annotations

DEFAULT_METHOD = "dpo"

METHODS: dict[str, str] = {
    "dpo": "trainers.methods.dpo",  # TRL DPOTrainer + PEFT LoRA
}


def unknown_method_message(name: str) -> str | None:
    """Why ``name`` is not a method (naming the known ones), or None when it is one."""
    if name in METHODS:
        return None
    return f"unknown training method {name!r}; known methods: {', '.join(sorted(METHODS))}"
