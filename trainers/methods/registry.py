"""The training methods by name: ``METHODS`` maps a name to the module that defines its ``METHOD``.

Adding a method = its module under ``trainers/methods/`` + one line here. Nothing is imported from this
module (``RunConfig`` checks ``--method`` against these names without torch or TRL).
"""

from __future__ import annotations

DEFAULT_METHOD = "dpo"

METHODS: dict[str, str] = {
    "dpo": "trainers.methods.dpo",  # TRL DPOTrainer + PEFT LoRA
    "sft": "trainers.methods.sft",  # TRL SFTTrainer (loss on the reply tokens) + PEFT LoRA, on demonstrations
    "kto": "trainers.methods.kto",  # TRL KTOTrainer + PEFT LoRA, on good/bad labels
    "reward": "trainers.methods.reward",  # TRL RewardTrainer: a score head + PEFT LoRA, on pairs
    "attributes": "trainers.methods.attributes",  # one regression output per attribute + PEFT LoRA, on ratings
    "steerlm": "trainers.methods.steerlm",  # SFT on rated replies, the prompt carrying their values (SteerLM)
    "rloo": "trainers.methods.rloo",  # TRL RLOOTrainer + PEFT LoRA: online RL against a reward run's model
}

# The feedback each method trains on (trainers/feedback_selection.py selects it; store/feedback_yield.py reads
# it): "pairs" (chosen over rejected), "demonstrations" (a prompt and the reply to learn), "labels" (a reply
# marked good or bad). A method not listed here trains on pairs.
METHOD_FEEDBACK: dict[str, str] = {
    "dpo": "pairs",
    "sft": "demonstrations",
    "kto": "labels",
    "attributes": "ratings",  # rated replies, 0–4 per attribute (trainers/rating_selection.py)
    "steerlm": "ratings",  # the same rated replies, learnt as attribute-conditioned demonstrations
    "rloo": "prompts",  # prompts alone: the replies are sampled while training and scored by a reward model
}


def feedback_of(method: str) -> str:
    """The kind of feedback ``method`` trains on (pairs when the method does not say)."""
    return METHOD_FEEDBACK.get(method, "pairs")


def unknown_method_message(name: str) -> str | None:
    """Why ``name`` is not a method (naming the known ones), or None when it is one."""
    if name in METHODS:
        return None
    return f"unknown training method {name!r}; known methods: {', '.join(sorted(METHODS))}"
