"""Plain TRL reward model (``RewardTrainer``, a one-score classification head + LoRA) on prompt/chosen/rejected
rows: the baseline of ``train_speed.py --method reward``."""

from plain_trl_common import LORA, common_args, load, options, rows, train_and_report


def main() -> None:
    opts = options()
    from datasets import Dataset
    from peft import LoraConfig
    from trl import RewardConfig, RewardTrainer

    tokenizer, model, load_s = load(opts, "AutoModelForSequenceClassification", num_labels=1)
    if model.config.pad_token_id is None:  # the score is read at the last non-pad token
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_and_report(lambda: RewardTrainer(
        model=model, args=RewardConfig(**common_args(opts), max_length=opts.max_length),
        train_dataset=Dataset.from_list(rows(opts)), processing_class=tokenizer,
        peft_config=LoraConfig(**LORA, task_type="SEQ_CLS")), load_s)


if __name__ == "__main__":
    main()
