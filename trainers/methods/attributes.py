"""The ``attributes`` method: an attribute model (SteerLM's step 1) on the served model's own weights.

``AutoModelForSequenceClassification`` with one regression output per attribute (``load_reward_model`` with
``num_labels``), LoRA via PEFT on the run's target modules and the head trained whole (``reward_lora_config``),
on the run's rated replies (``trainers.rating_selection``: the user's ratings, or an imported ratings dataset).
A reply is read exactly as a reward model reads it (``reward_input_ids``: prompt + reply, BOS, EOS; the last
token's hidden state). Each output predicts ``(value - 2) / 2`` (values 0–4 centred, so the new zero head
predicts the scale's middle); the loss is the mean squared error over the attributes each reply *was* rated
on, the others masked out.

The summary holds, per attribute, the held-out mean absolute error and Spearman rank correlation before and
after training (``heldout``); every step's loss and batch MAE are live metrics. The published folder holds the
plain LoRA (``adapter_model.safetensors``), the head (``attribute_head.safetensors``: ``score.weight``,
attributes × hidden) and ``attribute_model.json`` (the attributes in output order, the value scale, how a reply
is tokenised, the base model). No pickle.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trainers  # noqa: F401  (HF offline env before transformers/TRL)
from trainers.methods.reward import (
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    HEAD_KEY,
    PEFT_PREFIX,
    appends_eos,
    load_reward_model,
    load_trained_reward_model,
    reward_input_ids,
    reward_lora_config,
)
from trainers.model_source import load_tokenizer, resolve_model_source
from trainers.pair_selection import at_token_boundary
from trainers.rating_selection import (
    RATING_RANGE,
    RatedExample,
    planned_attributes,
    planned_rating_report,
    run_ratings,
)
from trainers.run.allocator import keep_freed_memory
from trainers.run.callbacks import CancelAtStepBoundary, DropPickledArgs, MetricsRecorder
from trainers.run.checkpoints import checkpoint_step, last_complete_checkpoint, truncate_metrics
from trainers.run.errors import RunError, RunOutcome
from trainers.run.libraries import library_versions, quiet_progress_bars
from trainers.run.outputs import RunPaths, checked_run_paths, publish_output, runs_roots
from trainers.run_config import RunConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments
    from transformers.modeling_outputs import SequenceClassifierOutput

    from store.records import RunRecord
    from store.studio_store import Store
    from trainers.methods import CancelSignal

HEAD_FILE = "attribute_head.safetensors"
SPEC_FILE = "attribute_model.json"
# Outputs predict (value - CENTRE) / HALF_RANGE: a zero head predicts 2 for every attribute, and targets are
# of order 1, as the LoRA and the head are initialised for.
CENTRE = (RATING_RANGE[0] + RATING_RANGE[1]) / 2
HALF_RANGE = (RATING_RANGE[1] - RATING_RANGE[0]) / 2
PREDICT_BATCH = 8


def encoded_examples(examples: Sequence[RatedExample], attributes: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                     max_length: int | None) -> list[dict[str, list[int] | list[float]]]:
    """Rows for the trainer: the reply's tokens, the normalised target per attribute (0 where not rated) and the
    mask saying which attributes were rated."""
    rows: list[dict[str, list[int] | list[float]]] = []
    for e in examples:
        rows.append({
            "input_ids": reward_input_ids(tokenizer, e.prompt, e.completion, max_length),
            "labels": [(e.ratings[a] - CENTRE) / HALF_RANGE if a in e.ratings else 0.0 for a in attributes],
            "label_mask": [1.0 if a in e.ratings else 0.0 for a in attributes],
        })
    return rows


def padded_batch(rows: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids and attention mask (the classification model reads the last non-pad token), plus
    the labels and mask when the rows carry them."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"], dtype=torch.long)
        attention[i, :len(r["input_ids"])] = 1
    batch = {"input_ids": ids, "attention_mask": attention}
    if "labels" in rows[0]:
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.float32)
        batch["label_mask"] = torch.tensor([r["label_mask"] for r in rows], dtype=torch.float32)
    return batch


def masked_squared_error(predicted: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the (reply, attribute) cells that were rated; unrated cells add nothing."""
    return (((predicted - labels) ** 2) * mask).sum() / mask.sum().clamp(min=1.0)


def predicted_values(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                     replies: Sequence[str], max_length: int | None = None) -> list[list[float]]:
    """Each reply's predicted value per output, on the 0–4 scale (clipped), in the order given."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[list[float]] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(replies), PREDICT_BATCH):
            rows = []
            for prompt, reply in zip(prompts[start:start + PREDICT_BATCH], replies[start:start + PREDICT_BATCH],
                                     strict=True):
                kept, moved, _ = at_token_boundary(prompt, reply, reply)
                rows.append({"input_ids": reward_input_ids(tokenizer, kept, moved, max_length)})
            batch = {k: v.to(device) for k, v in padded_batch(rows, pad_id).items()}
            values = model(**batch).logits.float() * HALF_RANGE + CENTRE
            out += values.clamp(*RATING_RANGE).tolist()
    return out


def heldout_metrics(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[RatedExample],
                    attributes: Sequence[str], max_length: int | None) -> dict[str, dict[str, float | int | None]]:
    """Per attribute over the held-out replies rated on it: ``mae`` (mean absolute error, 0–4 scale),
    ``spearman`` (rank correlation of predicted with rated; None when either side is constant or fewer than
    two replies are rated) and ``n``."""
    from scipy.stats import spearmanr

    was_training = model.training
    model.eval()
    values = predicted_values(model, tokenizer, [e.prompt for e in examples], [e.completion for e in examples],
                              max_length)
    model.train(was_training)
    metrics: dict[str, dict[str, float | int | None]] = {}
    for j, name in enumerate(attributes):
        pairs = [(row[j], e.ratings[name]) for row, e in zip(values, examples, strict=True) if name in e.ratings]
        if not pairs:
            continue
        predicted, rated = [p for p, _ in pairs], [r for _, r in pairs]
        rho: float | None = None
        if len(pairs) >= 2 and len(set(rated)) > 1 and max(predicted) - min(predicted) > 1e-6:
            rho = float(spearmanr(predicted, rated).statistic)
        metrics[name] = {"mae": round(sum(abs(p - r) for p, r in pairs) / len(pairs), 4),
                         "spearman": None if rho is None else round(rho, 4), "n": len(pairs)}
    return metrics


def _trainer_class() -> type[Trainer]:
    """transformers' ``Trainer`` with the masked regression loss and the batch MAE logged beside the loss."""
    import torch
    from transformers import Trainer

    class MaskedRegressionTrainer(Trainer):
        _mae_sum = 0.0
        _mae_count = 0
        _tokens_seen = 0  # as TRL's trainers log ``num_tokens``, so the recorder's tokens/s reads it

        def compute_loss(self, model: PreTrainedModel, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                         num_items_in_batch: torch.Tensor | int | None = None,
                         ) -> torch.Tensor | tuple[torch.Tensor, SequenceClassifierOutput]:
            labels, mask = inputs.pop("labels"), inputs.pop("label_mask")
            if model.training:
                self._tokens_seen += int(inputs["attention_mask"].sum())
            outputs = model(**inputs)
            predicted = outputs.logits.float()
            loss = masked_squared_error(predicted, labels, mask)
            with torch.no_grad():
                error = ((predicted - labels).abs() * mask).sum() * HALF_RANGE
                self._mae_sum += float(error)
                self._mae_count += int(mask.sum())
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if "loss" in logs and self._mae_count:  # the rated cells' MAE since the last log, 0–4 scale
                logs["mae"] = round(self._mae_sum / self._mae_count, 4)
                self._mae_sum, self._mae_count = 0.0, 0
                logs["num_tokens"] = float(self._tokens_seen)
            super().log(logs, *args, **kwargs)

    return MaskedRegressionTrainer


def training_arguments(config: RunConfig, work_dir: Path, device: str, dtype: str) -> TrainingArguments:
    """``TrainingArguments`` for this run; every default a CPU run cannot use is set explicitly."""
    from transformers import TrainingArguments

    gradient_checkpointing = (
        config.gradient_checkpointing if config.gradient_checkpointing is not None else device == "cuda"
    )
    return TrainingArguments(
        output_dir=str(work_dir), per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.learning_rate,
        num_train_epochs=config.epochs, max_steps=config.max_steps or -1, use_cpu=device == "cpu",
        bf16=dtype == "bf16", fp16=False, activation_checkpointing=gradient_checkpointing,
        optim="paged_adamw_8bit" if config.paged_adamw_8bit else "adamw_torch", logging_steps=1,
        report_to="none", save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        eval_strategy="no", seed=config.seed, data_seed=config.seed, disable_tqdm=True, dataloader_num_workers=0,
        log_level="warning", remove_unused_columns=False, label_names=["labels", "label_mask"],
    )


def split_attribute_head(staging: Path, tokenizer: PreTrainedTokenizerBase, attributes: Sequence[str],
                         model: dict[str, Any]) -> None:
    """Move the head out of PEFT's adapter file into ``attribute_head.safetensors`` and describe the model.

    What stays is a plain LoRA, as for a reward model (``trainers.methods.reward.split_head``)."""
    from safetensors.numpy import load_file, save_file

    adapter = load_file(str(staging / ADAPTER_FILE))
    head_keys = [k for k in adapter if k.removeprefix(PEFT_PREFIX).split(".")[0] == "score"]
    if len(head_keys) != 1:
        raise RunError(f"the trained adapter holds {len(head_keys)} score weights ({head_keys}); expected one")
    head = adapter.pop(head_keys[0])
    if head.shape[0] != len(attributes):
        raise RunError(f"the trained head has {head.shape[0]} outputs for {len(attributes)} attributes")
    save_file({HEAD_KEY: head}, str(staging / HEAD_FILE))
    save_file(adapter, str(staging / ADAPTER_FILE), metadata={"format": "pt"})
    config_path = staging / ADAPTER_CONFIG
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    adapter_config["modules_to_save"] = None
    config_path.write_text(json.dumps(adapter_config, indent=2), encoding="utf-8")
    spec = {
        "attributes": list(attributes),
        "value": {"centre": CENTRE, "half_range": HALF_RANGE, "range": list(RATING_RANGE)},
        "pooling": "last token",
        "append_eos": appends_eos(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "head": {"file": HEAD_FILE, "key": HEAD_KEY, "shape": list(head.shape)},
        "model": model,
    }
    (staging / SPEC_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")


def load_attribute_model(output_dir: Path, model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase,
                                                                       list[str]]:
    """A published attributes run as transformers + PEFT compute it, in eval mode, with its attributes in
    output order."""
    spec = json.loads((Path(output_dir) / SPEC_FILE).read_text(encoding="utf-8"))
    attributes = [str(a) for a in spec["attributes"]]
    model, tokenizer = load_trained_reward_model(output_dir, model_dir, num_labels=len(attributes),
                                                 head_file=HEAD_FILE)
    return model, tokenizer, attributes


class AttributesMethod:
    """A LoRA attribute model (the ``TrainingMethod`` registered as ``attributes``)."""

    def train_and_publish(self, store: Store, run: RunRecord, config: RunConfig, paths: RunPaths, *, resume: bool,
                          cancel: CancelSignal, log: Callable[[str], None], facts: dict[str, Any]) -> RunOutcome:
        return _train_and_publish(store, run, config, paths, resume=resume, cancel=cancel, log=log, facts=facts)


METHOD = AttributesMethod()


def _train_and_publish(store: Store, run: RunRecord, config: RunConfig, paths: RunPaths, *, resume: bool,
                       cancel: CancelSignal, log: Callable[[str], None], facts: dict[str, Any]) -> RunOutcome:
    paths = checked_run_paths(paths.output_dir, runs_roots(getattr(store, "path", None)))
    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from trainers.run.device import peak_rss_mb, resolve_device, resolve_dtype, training_threads

    started = time.monotonic()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    quiet_progress_bars()
    keep_freed_memory()
    device = facts["device"] = resolve_device(config)
    dtype = resolve_dtype(config, device)
    threads = training_threads(config)
    torch.set_num_threads(threads)
    if not config.train_model:
        raise RunError("the run names no model to train; pass --train-model PATH")
    if config.init_from:
        raise RunError("an attribute model starts from the served model's own weights; --init-from is for sft, "
                       "kto and dpo runs")
    attributes = planned_attributes(run)
    if not attributes:
        raise RunError(f"run {run.id} records no attributes to learn; prepare a new run")
    plan = planned_rating_report(run)
    train, heldout = run_ratings(store, run, config)

    def converting(message: str) -> None:
        store.set_run_status(run.id, "loading", message)
        log(message)

    source = resolve_model_source(config.train_model, log=converting)
    load_started = time.monotonic()
    tokenizer = load_tokenizer(source.model_dir)
    model = load_reward_model(source.model_dir, device=device, tokenizer=tokenizer, num_labels=len(attributes))
    load_seconds = time.monotonic() - load_started
    if plan.dropped_attributes:
        log(f"note: {', '.join(plan.dropped_attributes)} dropped: no reply is rated on it")
    log(f"ratings: {plan.describe()}")

    paths.work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = last_complete_checkpoint(paths.work_dir, log) if resume and paths.work_dir.is_dir() else None
    if resume and checkpoint is None:
        log("no checkpoint to resume from; training from the start")
    if not resume or checkpoint is None:
        paths.live_metrics.unlink(missing_ok=True)
        store.delete_run_metrics(run.id)
    else:
        truncate_metrics(paths.live_metrics, checkpoint_step(checkpoint))
        store.delete_run_metrics(run.id, after_step=checkpoint_step(checkpoint))

    from peft import get_peft_model

    model = get_peft_model(model, reward_lora_config(config))
    trainer: Any = None

    def add_metrics(step: int, epoch: float | None, metrics: dict[str, float]) -> int:
        total = int(trainer.state.max_steps) if trainer is not None and trainer.state.max_steps else plan.steps or 0
        return store.add_run_metrics(run.id, step, epoch, {**metrics, "total_steps": total})

    recorder = MetricsRecorder(add_metrics, paths.live_metrics, echo=log)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    trainer_started = time.monotonic()
    trainer = _trainer_class()(
        model=model,
        args=training_arguments(config, paths.work_dir, device, dtype),
        train_dataset=Dataset.from_list(encoded_examples(train, attributes, tokenizer, plan.max_length)),
        data_collator=lambda rows: padded_batch(rows, pad_id),
        callbacks=[recorder, CancelAtStepBoundary(cancel.event), DropPickledArgs()],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainable, total = model.get_nb_trainable_parameters()
    log(f"{len(train)} rated repl(ies) for training, {len(heldout)} held out, {plan.steps} step(s), attributes "
        f"{', '.join(attributes)}; head + LoRA {trainable:,} of {total:,} parameters; {device} {dtype}, "
        f"{threads} thread(s)")
    before = heldout_metrics(model, tokenizer, heldout, attributes, plan.max_length) \
        if heldout and checkpoint is None else {}
    store.set_run_status(run.id, "training", f"{len(train)} rated replies, {plan.steps} steps on {device} ({dtype})")
    cancel.phase = "training"
    train_started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.monotonic() - train_started
    cancelled = cancel.cancelled
    after = heldout_metrics(model, tokenizer, heldout, attributes, plan.max_length) if heldout else {}
    cancel.phase = "saving"

    steps = int(trainer.state.global_step)
    status = "cancelled" if cancelled else "done"
    summary = {
        "status": status,
        "method": "attributes",
        "attributes": list(attributes),
        "dropped_attributes": list(plan.dropped_attributes),
        "steps": steps,
        "max_steps": int(trainer.state.max_steps),
        "planned_steps": plan.steps,
        "epoch": float(trainer.state.epoch or 0.0),
        "train_examples": len(train),
        "heldout_examples": len(heldout),
        "first": recorder.first,
        "last": recorder.last,
        "heldout": {"before": before, "after": after, "examples": len(heldout)},
        "train_loss": float(result.training_loss) if result.training_loss is not None else None,
        "seconds": {"total": round(time.monotonic() - started, 2), "load": round(load_seconds, 2),
                    "train": round(train_seconds, 2),
                    "per_step": round(train_seconds / max(1, steps - checkpoint_step(checkpoint)), 3),
                    "step": recorder.step_time_stats()},
        "device": device,
        "dtype": dtype,
        "threads": threads,
        "model": source.to_dict(),
        "resumed_from": checkpoint,
        "selection": plan.to_dict(),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "versions": library_versions(),
    }
    trainer.accelerator.wait_for_everyone()
    if not trainer.accelerator.is_main_process:
        return RunOutcome(status, f"worker process of run {run.id} finished", None, None)

    def write_adapter(staging: Path) -> None:
        model.save_pretrained(str(staging), safe_serialization=True)
        split_attribute_head(staging, tokenizer, attributes, source.to_dict())

    output = publish_output(
        paths, write_adapter,
        {"run_config.json": {"config": config.to_dict(), "model": source.to_dict(), "run_id": run.id},
         "pairs.json": {"train": run.pair_ids, "heldout": run.heldout_ids, "dataset_hash": run.dataset_hash,
                        "selection": plan.to_dict()},
         "metrics.jsonl": paths.live_metrics, "summary.json": summary},
    )
    summary["output_dir"] = str(output)
    summary["seconds"]["total"] = round(time.monotonic() - started, 2)
    summary["seconds"]["trainer_to_saved"] = round(time.monotonic() - trainer_started, 2)
    store.set_run_summary(run.id, summary)
    if cancelled:
        message = f"cancelled at step {steps}; attribute model so far saved, resume to continue"
    else:
        maes = [m["mae"] for m in after.values() if m.get("mae") is not None]
        detail = f", held-out MAE {sum(maes) / len(maes):.2f} (mean over attributes)" if maes else ""
        message = f"done: {steps} steps, loss {recorder.last.get('loss', float('nan')):.4f}{detail}"
        shutil.rmtree(paths.work_dir, ignore_errors=True)
    store.set_run_status(run.id, status, message)
    log(message)
    return RunOutcome(status, message, output, summary)
