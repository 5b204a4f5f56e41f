"""Plain TRL RLOO (``RLOOTrainer``, transformers ``generate`` for the rollouts) against a studio reward run's model:
the baseline of ``bench/rlhf_speed.py``.

The policy is loaded from the GGUF as a plain script would (dequantised, LoRA r16 on q/k/v/o); the reward model is
the studio run's (its base under a one-score head, its LoRA: the reward run's own loader, as any script reusing
that model must) and is handed to TRL as a model, so TRL tokenises and scores prompt + completion itself. Rows are
``{"prompt": ...}``, the exact prompts the studio run trained on. Each step's generation / reward / update split is
measured by ``rloo_step_split.py`` and printed with the one JSON line of ``plain_trl_common``.
"""

import argparse
import json
from pathlib import Path

from plain_trl_common import LORA, common_args, load, options, rows
from rloo_step_split import StepSplit, instrument


def rloo_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reward-dir", required=True, help="a done reward run's published folder")
    parser.add_argument("--reward-base", required=True, help="the converted base the reward run trained on")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--group", type=int, default=4, help="replies per prompt (num_generations)")
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--completion-length", type=int, default=48)
    parser.add_argument("--beta", type=float, default=0.1)


def main() -> None:
    opts = options(rloo_options)
    from datasets import Dataset
    from peft import LoraConfig
    from trl import RLOOConfig, RLOOTrainer

    from trainers.methods.reward import load_trained_reward_model

    split = StepSplit()
    instrument(split)
    tokenizer, model, load_s = load(opts)
    reward_model, reward_tokenizer = load_trained_reward_model(Path(opts.reward_dir), Path(opts.reward_base))
    batch = opts.prompts_per_step * opts.group
    args = {**common_args(opts), "per_device_train_batch_size": batch, "max_steps": opts.steps}
    trainer = RLOOTrainer(
        model=model, reward_funcs=reward_model, reward_processing_classes=reward_tokenizer,
        args=RLOOConfig(**args, num_generations=opts.group, max_completion_length=opts.completion_length,
                        beta=opts.beta),
        train_dataset=Dataset.from_list(rows(opts)), processing_class=tokenizer,
        peft_config=LoraConfig(**LORA, task_type="CAUSAL_LM"))
    trainer.train()
    print(json.dumps({"load_s": load_s, "steps": trainer.state.global_step, "bf16": trainer.args.bf16,
                      "split": split.summary()}), flush=True)


if __name__ == "__main__":
    main()
