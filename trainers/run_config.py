"""``RunConfig``: every choice a run makes, in TRL's config style (field help, checks in ``__post_init__``).

The same fields are the ``prefstudio train`` flags (kebab-case, generated from this dataclass by
``trainers.train_cli``), the TUI's train form and the JSON stored with each run, so a run can be
repeated or resumed from its row alone. Defaults suit the embedded Gemma 3 270M on a 2-core CPU.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from trainers.methods.registry import DEFAULT_METHOD, METHODS

# TRL 1.16's DPOConfig.loss_type values (trl/trainer/dpo_config.py).
LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "fp32", "bf16")
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
ROLLOUTS = ("auto", "llama", "transformers")  # what samples an RLOO run's replies (auto: llama for a .gguf)


class RunConfigError(ValueError):
    """A run configuration value is out of range or inconsistent; the message names the flag."""


def flag(name: str) -> str:
    """The command-line flag of a field: ``lora_r`` → ``--lora-r``."""
    return "--" + name.replace("_", "-")


@dataclass
class RunConfig:
    r"""Configuration of one LoRA run (DPO, SFT, KTO: ``method``).

    Every field is also a ``prefstudio train`` flag: ``learning_rate`` is ``--learning-rate``.
    """

    method: str = field(
        default=DEFAULT_METHOD,
        metadata={"help": "Training method, one module each under trainers/methods/: dpo (TRL DPOTrainer on "
                  "preference pairs), sft (TRL SFTTrainer on demonstrations, loss on the reply tokens only), kto "
                  "(TRL KTOTrainer on replies marked good or bad), reward (TRL RewardTrainer: a score head on the "
                  "model's own weights, on preference pairs), rloo (TRL RLOOTrainer: replies sampled for prompts and "
                  "scored by a reward run's model, --reward-run); all train LoRA."},
    )
    # Model
    train_model: str | None = field(
        default=None,
        metadata={"help": "Model to train: a .gguf file (converted once, cached) or a Hugging Face model "
                  "directory. Default: the model the studio serves."},
    )
    init_from: int | None = field(
        default=None,
        metadata={"help": "Start from an earlier run's adapter (its id): SFT then DPO, or a second round of DPO. "
                  "That run's adapter is merged into the base before this run trains (so DPO's and KTO's "
                  "reference is that tuned model), and this run's adapter is the whole chain's effect. The run "
                  "must be done, an sft, kto or dpo run, and trained on the same model."},
    )
    # Data
    session_id: int | None = field(
        default=None, metadata={"help": "Train only on this session's pairs (default: every session)."}
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "Train on a dataset instead of the store's judged pairs: the NAME of a dataset imported "
                  "with `prefstudio datasets import`, or a JSONL file of TRL preference rows (prompt, chosen, "
                  "rejected; an existing path is read as a file)."},
    )
    attributes: str | None = field(
        default=None,
        metadata={"help": "--method attributes / steerlm: the attributes to learn (to steer by), separated by "
                  "commas (default: every attribute the ratings carry); one named but rated nowhere is dropped with a note."},
    )
    data_size: int | None = field(
        default=None,
        metadata={"help": "Use at most this many pairs (a seeded sample; default: all). For a labelled-stance "
                  "dataset: the first this-many items, as the homework does."},
    )
    support_ratio: float | None = field(
        default=None,
        metadata={"help": "Labelled-stance datasets only, and required there: share (0-1) of the --data-size "
                  "training items that prefer the support answer; the first round(data_size x ratio) items "
                  "(halves up) prefer support, the rest oppose."},
    )
    shuffle_seed: int | None = field(
        default=None,
        metadata={"help": "Labelled-stance datasets only: shuffle the items with this seed before taking the "
                  "first --data-size (default: file order, as the homework)."},
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "Labelled-stance datasets only: the system prompt the items are rendered with "
                  "(default: the exercise's own, which keeps replies under 20 words)."},
    )
    heldout_fraction: float = field(
        default=0.1,
        metadata={"help": "Fraction of pairs held out of training and evaluated at the end (seeded split; "
                  "0 keeps all for training). A labelled-stance dataset holds out the items after --data-size "
                  "instead (at most 100); 0 holds none out there too."},
    )
    drop_flagged: bool = field(
        default=False,
        metadata={"help": "Drop pairs whose chosen reply a safety checker flagged: the studio checks the chosen "
                  "replies with its configured checkers (--safety, the config's `safety`) before the run is "
                  "prepared, and the count dropped is shown with the selection."},
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Maximum tokens of prompt + reply; longer replies are cut at the end, and pairs whose "
                  "prompt alone reaches it are dropped (counted per split before the run starts). Default: auto, "
                  "the longest selected pair rounded up to 64, at most 1024 (a chat's prompt grows with every "
                  "turn, so a fixed short length would drop most of a long session)."},
    )
    # DPO
    loss_type: str = field(
        default="sigmoid",
        metadata={"help": f"DPO only: TRL's DPO loss: {', '.join(LOSS_TYPES)}."},
    )
    beta: float = field(
        default=0.1,
        metadata={"help": "DPO, KTO and RLOO (its KL penalty): how far the model may move from the reference "
                  "(higher: less). For ipo, the τ regulariser."},
    )
    # SFT
    sft_include_chosen: bool = field(
        default=False,
        metadata={"help": "SFT only: also learn the chosen reply of each preference pair (your A/B picks, edits, "
                  "rankings' better replies, or a preference dataset's chosen), besides the demonstrations."},
    )
    # KTO
    kto_from_pairs: bool = field(
        default=False,
        metadata={"help": "KTO only: also use the labels comparisons imply (a pair's chosen reply good, its "
                  "rejected one bad; both-bad and all-bad rounds bad; a preference dataset's pairs unpaired). Off "
                  "by default: a reply that lost a comparison is not necessarily a bad reply."},
    )
    desirable_weight: float | None = field(
        default=None,
        metadata={"help": "KTO only: weight of the good replies' loss. Default: set from the data's balance as the "
                  "KTO paper recommends (desirable weight x good / (undesirable weight x bad) between 1 and 4/3)."},
    )
    undesirable_weight: float | None = field(
        default=None,
        metadata={"help": "KTO only: weight of the bad replies' loss. Default: set from the data's balance (see "
                  "--desirable-weight)."},
    )
    # RLOO (online RL against a reward run; trainers/methods/rloo.py)
    reward_run: int | None = field(
        default=None,
        metadata={"help": "RLOO only, and required there: the reward run (its id) whose reward model scores the "
                  "replies; it must be done and trained on the same model as this run."},
    )
    rl_prompts: str | None = field(
        default=None,
        metadata={"help": "RLOO only: where the prompts come from: store (default: the store's prompts, or one "
                  "session's with --session-id), dataset (the prompts of --dataset), bank:NAME|PATH (a prompt bank: "
                  "assets/prompts/NAME.txt or a bank file), or a FILE (one prompt per line, or JSONL with `prompt`)."},
    )
    num_generations: int = field(
        default=4, metadata={"help": "RLOO only: replies sampled per prompt each step (the group; 2 or more)."}
    )
    max_completion_length: int = field(
        default=48, metadata={"help": "RLOO only: most tokens of each sampled reply."}
    )
    temperature: float = field(default=1.0, metadata={"help": "RLOO only: sampling temperature of the replies."})
    length_penalty: float = field(
        default=0.0,
        metadata={"help": "RLOO only: reward taken off per reply token over --length-target (0: off)."},
    )
    length_target: int = field(
        default=32, metadata={"help": "RLOO only: reply length (tokens) the length penalty starts after."}
    )
    safety_penalty: float = field(
        default=0.0,
        metadata={"help": "RLOO only: reward taken off a reply the safety checker flags (0: off)."},
    )
    safety_checker: str = field(
        default="profanity",
        metadata={"help": "RLOO only: the checker of --safety-penalty: profanity (the bundled classifier) or "
                  "wordlist:PATH (a blocklist file)."},
    )
    rollouts: str = field(
        default="auto",
        metadata={"help": f"RLOO only: what samples the replies: {', '.join(ROLLOUTS)}. llama: the quantised "
                  "engine with the current adapter (a .gguf train model only); transformers: TRL's own generate; "
                  "auto: llama for a .gguf train model, else transformers."},
    )
    importance_cap: float | None = field(
        default=None,
        metadata={"help": "RLOO only, llama rollouts: weight each reply's advantage by min(exp(Σ log π_torch − "
                  "log π_llama.cpp), CAP) (truncated importance sampling: the replies were sampled by the "
                  "quantised engine, not by the policy being trained). Off by default: see the README's measure."},
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "AdamW learning rate of the LoRA weights."})
    epochs: int = field(default=2, metadata={"help": "Passes over the training pairs."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Stop after this many optimizer steps (overrides --epochs)."}
    )
    batch_size: int = field(default=2, metadata={"help": "Pairs per forward pass."})
    grad_accum: int = field(default=1, metadata={"help": "Forward passes per optimizer step."})
    seed: int = field(default=42, metadata={"help": "Seed of the LoRA init, data order and held-out split."})
    # LoRA
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        metadata={"help": "Modules that get LoRA, comma-separated (or all-linear)."},
    )
    # Hardware
    device: str = field(default="auto", metadata={"help": f"Where to train: {', '.join(DEVICES)}."})
    dtype: str = field(
        default="auto",
        metadata={"help": "Compute dtype: auto (CUDA: bf16; CPU: bf16 autocast where the CPU has native bf16 "
                  "(AVX512-BF16/AMX), ~1.6x faster per step there, else fp32), fp32 or bf16."},
    )
    threads: int | None = field(
        default=None, metadata={"help": "CPU threads for training (default: all cores)."}
    )
    num_processes: int = field(
        default=1,
        metadata={"help": "Train in this many processes with `accelerate launch` (DDP: one per GPU; on a CPU the "
                  "cores are shared out). --batch-size is per process, so each step takes batch-size x this "
                  "many pairs."},
    )
    four_bit: bool = field(
        default=False, metadata={"help": "QLoRA: load the base model in 4-bit NF4 (CUDA + bitsandbytes only)."}
    )
    paged_adamw_8bit: bool = field(
        default=False, metadata={"help": "Use bitsandbytes' paged 8-bit AdamW (CUDA only)."}
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Recompute activations to save memory (default: on with CUDA, off on CPU, where "
                  "memory is not the limit and it costs ~30 % speed)."},
    )
    save_steps: int = field(
        default=10, metadata={"help": "Write a resumable checkpoint every this many steps."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]
        else:
            self.target_modules = [str(m).strip() for m in self.target_modules if str(m).strip()]
        self.method = str(self.method).strip().lower()
        self.loss_type = str(self.loss_type).strip().lower()
        self.device = str(self.device).strip().lower()
        self.dtype = {"float32": "fp32", "bfloat16": "bf16"}.get(str(self.dtype).strip().lower(),
                                                                 str(self.dtype).strip().lower())
        checks: list[tuple[bool, str, str]] = [
            (self.method in METHODS, "method", f"must be one of the training methods: {', '.join(sorted(METHODS))}"),
            (self.loss_type in LOSS_TYPES, "loss_type", f"must be one of {', '.join(LOSS_TYPES)}"),
            (self.beta > 0 or (self.method == "rloo" and self.beta == 0), "beta",
             "must be greater than 0 (0, no KL penalty, only with --method rloo)"),
            (0 < self.learning_rate < 1, "learning_rate", "must be between 0 and 1 (e.g. 5e-5)"),
            (self.epochs >= 1, "epochs", "must be 1 or more"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps", "must be 1 or more"),
            (self.batch_size >= 1, "batch_size", "must be 1 or more"),
            (self.grad_accum >= 1, "grad_accum", "must be 1 or more"),
            (self.max_length is None or self.max_length >= 16, "max_length", "must be at least 16 tokens"),
            (self.lora_r >= 1, "lora_r", "must be 1 or more"),
            (self.lora_alpha > 0, "lora_alpha", "must be greater than 0"),
            (0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)"),
            (bool(self.target_modules), "target_modules", "must name at least one module"),
            (self.threads is None or self.threads >= 1, "threads", "must be 1 or more"),
            (self.num_processes >= 1, "num_processes", "must be 1 or more"),
            (self.init_from is None or self.init_from >= 1, "init_from", "must be a run id (1 or more)"),
            (self.data_size is None or self.data_size >= 1, "data_size", "must be 1 or more"),
            (0 <= self.heldout_fraction < 0.5, "heldout_fraction", "must be in [0, 0.5)"),
            (self.support_ratio is None or 0 <= self.support_ratio <= 1, "support_ratio",
             "must be between 0 and 1 (e.g. 0.1: the first 10 % of the items prefer support)"),
            (self.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}"),
            (self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}"),
            (self.save_steps >= 1, "save_steps", "must be 1 or more"),
            (self.session_id is None or self.dataset is None, "dataset",
             "cannot be combined with --session-id (a dataset file is not a store session)"),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise RunConfigError(f"{flag(name)} {problem} (got {getattr(self, name)!r})")
        self._check_method_fields()
        if self.four_bit and self.device == "cpu":
            raise RunConfigError(
                "--four-bit needs a CUDA GPU (4-bit QLoRA on CPU ran ~10x slower than fp32); drop --four-bit "
                "or use --device cuda"
            )
        if self.paged_adamw_8bit and self.device == "cpu":
            raise RunConfigError("--paged-adamw-8bit needs a CUDA GPU; drop it or use --device cuda")
        if self.four_bit and self.init_from is not None:
            raise RunConfigError(
                "--init-from cannot be combined with --four-bit: the earlier adapter is merged into the base "
                "weights, and merged into 4-bit weights it would be rounded away; drop --four-bit"
            )
        if self.target_modules != ["all-linear"] and "lm_head" in self.target_modules:
            raise RunConfigError("--target-modules cannot include lm_head (TRL scores with it directly)")

    def _check_method_fields(self) -> None:
        """Refuse a setting the chosen method would silently ignore (a user who set it expects it to matter)."""
        for name in ("desirable_weight", "undesirable_weight"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise RunConfigError(f"{flag(name)} must be greater than 0 (got {value!r})")
        used_by = {"sft_include_chosen": "sft", "kto_from_pairs": "kto", "desirable_weight": "kto",
                   "undesirable_weight": "kto", "attributes": "attributes"}
        for name, method in used_by.items():
            if name == "attributes" and self.method == "steerlm":  # SteerLM conditions on the same attributes
                continue
            if getattr(self, name) not in (None, False) and self.method != method:
                raise RunConfigError(f"{flag(name)} applies to --method {method} only (this run's method is "
                                     f"{self.method})")
        self._check_rloo_fields()
        if self.method in ("sft", "kto") and self.loss_type != "sigmoid":
            raise RunConfigError(f"--loss-type is a DPO setting; --method {self.method} has its own loss (drop "
                                 f"--loss-type {self.loss_type})")
        if self.method == "kto" and self.batch_size < 2:
            raise RunConfigError("--batch-size must be 2 or more with --method kto: KTO estimates its KL term from "
                                 f"the other replies of each batch (got {self.batch_size})")

    def _check_rloo_fields(self) -> None:
        """RLOO's own settings: in range, and only on an RLOO run (elsewhere they would be silently ignored)."""
        self.rollouts = str(self.rollouts).strip().lower()
        checks: list[tuple[bool, str, str]] = [
            (self.reward_run is None or self.reward_run >= 1, "reward_run", "must be a run id (1 or more)"),
            (self.num_generations >= 2, "num_generations",
             "must be 2 or more (RLOO's baseline for a reply is the mean reward of the others for its prompt)"),
            (self.max_completion_length >= 1, "max_completion_length", "must be 1 or more"),
            (self.temperature > 0, "temperature", "must be greater than 0"),
            (self.length_penalty >= 0, "length_penalty", "must be 0 or more"),
            (self.length_target >= 0, "length_target", "must be 0 or more"),
            (self.safety_penalty >= 0, "safety_penalty", "must be 0 or more"),
            (self.rollouts in ROLLOUTS, "rollouts", f"must be one of {', '.join(ROLLOUTS)}"),
            (self.importance_cap is None or self.importance_cap > 0, "importance_cap", "must be greater than 0"),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise RunConfigError(f"{flag(name)} {problem} (got {getattr(self, name)!r})")
        if self.rollouts == "llama" and self.init_from is not None:
            raise RunConfigError(f"--rollouts llama cannot start from --init-from {self.init_from}: that run's "
                                 "adapter is merged into the trained weights but not into the GGUF llama.cpp samples "
                                 "from, so the replies would come from another policy; use --rollouts transformers")
        if self.method == "rloo":
            return
        defaults = field_defaults()
        for name in ("reward_run", "rl_prompts", "num_generations", "max_completion_length", "temperature",
                     "length_penalty", "length_target", "safety_penalty", "safety_checker", "rollouts",
                     "importance_cap"):
            if getattr(self, name) != defaults[name]:
                raise RunConfigError(f"{flag(name)} applies to --method rloo only (this run's method is "
                                     f"{self.method})")

    def rollouts_for(self, model: str | Path | None) -> str:
        """What samples an RLOO run's replies on ``model``: ``rollouts``, with ``auto`` llama.cpp for a .gguf
        model (the engine loads that file) and transformers for a model directory or a run that starts from an
        earlier one (``init_from``: llama.cpp would sample from the GGUF without the earlier adapter)."""
        if self.rollouts != "auto":
            return self.rollouts
        if self.init_from is not None:  # the earlier adapter is merged into the torch weights, not into the GGUF
            return "transformers"
        return "llama" if str(model or "").lower().endswith(".gguf") else "transformers"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a dict such as ``to_dict`` wrote; unknown keys raise, missing ones take the default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RunConfigError(f"unknown run setting(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: object) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        return RunConfig.from_dict({**self.to_dict(), **changes})


def field_defaults() -> dict[str, Any]:
    """Each field's default value (factories called), for forms and help text."""
    out: dict[str, Any] = {}
    for f in fields(RunConfig):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out
