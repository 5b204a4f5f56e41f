"""Plain TRL DPO (``DPOTrainer`` + LoRA) on prompt/chosen/rejected rows: the baseline of ``train_speed.py --method dpo``."""

from plain_trl_common import LORA, common_args, load, options, rows, train_and_report


def main() -> None:
    opts = options()
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    tokenizer, model, load_s = load(opts)
    train_and_report(lambda: DPOTrainer(
        model=model, args=DPOConfig(**common_args(opts), max_length=opts.max_length),
        train_dataset=Dataset.from_list(rows(opts)), processing_class=tokenizer,
        peft_config=LoraConfig(**LORA, task_type="CAUSAL_LM")), load_s)


if __name__ == "__main__":
    main()
