"""Plain TRL KTO (``KTOTrainer`` + LoRA) on prompt/completion/label rows: the baseline of ``train_speed.py --method kto``."""

from plain_trl_common import LORA, common_args, load, options, rows, train_and_report


def main() -> None:
    opts = options()
    from datasets import Dataset
    from peft import LoraConfig
    from trl import KTOConfig, KTOTrainer

    tokenizer, model, load_s = load(opts)
    train_and_report(lambda: KTOTrainer(
        model=model, args=KTOConfig(**common_args(opts), max_length=opts.max_length),
        train_dataset=Dataset.from_list(rows(opts)), processing_class=tokenizer,
        peft_config=LoraConfig(**LORA, task_type="CAUSAL_LM")), load_s)


if __name__ == "__main__":
    main()
